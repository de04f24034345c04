/**
 * What a volume looks like to clients and operators, computed the same way by whoever runs the
 * mirror control (the single TOMA, toma.ts; a TOMA cluster's leader, cluster/leader-control.ts):
 * the attach information, the legs' views, and the refusal of evict (a delete's: volume-delete.ts).
 */
import type { AttachInfo, DriveLocation, VolumeLayout } from "../engine/layout/types.ts";
import type { LegView } from "./api-types.ts";
import type { ClusterState, RefusalCode, VolumeRecord } from "./cluster-state.ts";
import type { RebuildProgress } from "./rebuild.ts";
import { isMirrored, setTopologies } from "./topology.ts";
import { layoutOf } from "./volume-layout.ts";

/**
 * What a client needs to do I/O on the volume, all of it as of `state`: the topology and the
 * generation it carries must be of one state, or a client would acknowledge a generation it does
 * not run. The record given may be older (read before an await): the state's own record of the
 * volume is used where there is one.
 */
export function attachInfoOf(given: VolumeRecord, state: ClusterState | null, targetOf: (drive_uuid: string) => string | null, stable: number): AttachInfo {
  const own = state?.volumes.find((x) => x.uuid === given.uuid);
  const vol = own ?? given;
  const drives: DriveLocation[] = vol.columns.map((c) => ({ drive_uuid: c.drive_uuid, target: targetOf(c.drive_uuid) }));
  return {
    layout: own ? layoutIn(state!, own) : layoutOf(vol),
    drives,
    generation: state?.generation ?? vol.created_seq,
    topology_generation: vol.topology_seq,
    stable_generation: stable,
    topology: setTopologies(vol),
  };
}

/**
 * The layouts of an applied state's volumes, each worked out once: layoutOf walks every extent of
 * every column to make runs (655360 a leg for 10 TiB at 16 MiB extents), and every attach and
 * every watch answer of every client asks for it, the same answer for all of them until the state
 * changes. A state is never changed in place (apply() answers a new one), so its identity stands
 * for its contents: a new state is a new key and can never be served an older state's layout.
 * Frozen, since every answer shares it: a reader that changed it would change it for all.
 */
const layouts = new WeakMap<ClusterState, Map<VolumeRecord, VolumeLayout>>();
function layoutIn(state: ClusterState, vol: VolumeRecord): VolumeLayout {
  let of = layouts.get(state);
  if (!of) layouts.set(state, (of = new Map()));
  let layout = of.get(vol);
  if (!layout) {
    layout = frozen(layoutOf(vol));
    of.set(vol, layout);
  }
  return layout;
}

function frozen(l: VolumeLayout): VolumeLayout {
  for (const c of l.columns) Object.freeze(Object.freeze(c).runs);
  Object.freeze(l.columns);
  return Object.freeze(l);
}

export function legViewsOf(vol: VolumeRecord, reachable: (drive_uuid: string) => boolean, progress: (column: number) => RebuildProgress | null): LegView[] {
  return vol.columns.map((c, i) => ({
    column: i,
    set: Math.floor(i / vol.mirrors),
    drive_uuid: c.drive_uuid,
    state: vol.legs[i]!,
    reachable: reachable(c.drive_uuid),
    rebuild: vol.legs[i] === "syncing" ? progress(i) : null,
  }));
}

/** Why a drive may not be evicted (null: it may). */
export function evictRefusal(state: ClusterState | null, uuid: string): { code: RefusalCode; error: string } | null {
  if (!state?.drives.some((d) => d.drive_uuid === uuid)) return { code: "not_found", error: `no drive ${uuid} in the cluster` };
  const single = state.volumes.filter((v) => !isMirrored(v) && v.columns.some((c) => c.drive_uuid === uuid));
  if (single.length > 0) return { code: "invalid", error: `drive holds unmirrored volume(s) ${single.map((v) => v.name).join(", ")}: delete them first` };
  return null;
}
