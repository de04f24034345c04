/**
 * The debug-format volumes' layouts for `forensics scan`, read (read-only) from the cluster state
 * the TOMA persists in the metadata slots of the scanned drives themselves: the newest valid state
 * among them, whether the single TOMA's state or a TOMA cluster member's hard-state record (the
 * state at its commit; src/toma/slot-contents.ts). Generations compare across both: a TOMA
 * cluster's generations are its log indexes, above the single TOMA's it took over. With them the scan knows exactly which block belongs at each place of a drive.
 * Without (raw files, a drive outside any cluster, an unreadable state) it judges places from the
 * neighbours, and says why.
 */
import type { LocatedArea } from "../debugfmt/drive-area.ts";
import { layoutPeerPosition, layoutPlacement } from "../debugfmt/placement.ts";
import type { ScanOptions } from "../debugfmt/scan.ts";
import type { DriveStore } from "../engine/drive/store.ts";
import { openDrive } from "../engine/drive/formatted-drive.ts";
import type { ClusterState } from "../toma/cluster-state.ts";
import { type SlotContents, slotContents, stateOf } from "../toma/slot-contents.ts";
import { layoutOf } from "../toma/volume-layout.ts";

export interface ScannedDrive {
  name: string;
  store: DriveStore;
  located: LocatedArea;
}

export interface Layouts {
  placement: ScanOptions["placement"];
  /** With two files: where the second holds the other leg of each block of the first. */
  peer_position: ScanOptions["peer_position"];
  known_volumes: Set<string>;
  /** Where the layouts came from, for people. */
  source: string;
  /** Which slot kind held that state: the single TOMA's state, or a TOMA's hard-state record. */
  found: { kind: "single_toma"; generation: number } | { kind: "hard_state"; toma_id: string; incarnation: string; seq: number; term: number; commit: number; generation: number };
  volumes: { name: string; volume_uuid: string; raid_level: string }[];
}

/** The placement from the newest cluster state on these drives, or why there is none. */
export async function layoutsFromDrives(drives: ScannedDrive[]): Promise<Layouts | { why: string }> {
  let best: { state: ClusterState; from: string; contents: SlotContents } | null = null;
  const problems: string[] = [];
  for (const d of drives) {
    if (d.located.drive_uuid === null) continue;
    try {
      // openDrive and metaRead only read: the superblock, the bitmap and the two metadata slots.
      const slot = await (await openDrive(d.store, d.name)).metaRead();
      const contents = slotContents({ drive_uuid: d.located.drive_uuid, ...slot });
      if (contents.kind === "unknown") problems.push(`${d.name}: ${contents.error}`);
      const state = stateOf(contents);
      if (state !== null && (best === null || state.generation > best.state.generation)) best = { state, from: d.name, contents };
    } catch (e) {
      problems.push(`${d.name}: ${(e as Error).message}`);
    }
  }
  if (best === null) {
    return { why: problems.length > 0 ? `no readable cluster state (${problems.join("; ")})` : "no cluster state on these drives (raw files, or never part of a cluster)" };
  }
  const debug = best.state.volumes.filter((v) => v.debug_format);
  if (debug.length === 0) return { why: `the cluster state (generation ${best.state.generation}) has no debug-format volume` };
  const files = drives.flatMap((d) => (d.located.drive_uuid === null ? [] : [{ name: d.name, drive_uuid: d.located.drive_uuid, extent_bytes: d.located.area.extent_bytes }]));
  const layouts = debug.map(layoutOf);
  return {
    placement: layoutPlacement(files, layouts),
    peer_position: files.length === 2 ? layoutPeerPosition(files[0]!, files[1]!, layouts) : undefined,
    known_volumes: new Set(debug.map((v) => v.uuid)),
    source: `cluster state generation ${best.state.generation} from ${best.from}${sourceOf(best.contents)}`,
    found: foundOf(best.contents, best.state.generation),
    volumes: debug.map((v) => ({ name: v.name, volume_uuid: v.uuid, raid_level: v.raid_level })),
  };
}

/** Which kind of slot the state came from, for the source line. */
function sourceOf(c: SlotContents): string {
  if (c.kind !== "hard_state") return " (the single-TOMA cluster state)";
  const r = c.record;
  return ` (the hard-state record of TOMA ${r.toma_id}, incarnation ${r.incarnation}, seq ${r.seq}, term ${r.term}, commit ${r.commit})`;
}

function foundOf(c: SlotContents, generation: number): Layouts["found"] {
  if (c.kind !== "hard_state") return { kind: "single_toma", generation };
  const r = c.record;
  return { kind: "hard_state", toma_id: r.toma_id, incarnation: r.incarnation, seq: r.seq, term: r.term, commit: r.commit, generation };
}
