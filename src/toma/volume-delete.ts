/**
 * Deleting a volume, one flow for whoever runs the mirror control (the single TOMA, toma.ts; a
 * TOMA cluster's leader, cluster/leader-control.ts): refused while a live client has it attached
 * unless `force`; its clients fenced out of it first (MirrorControl.fenceOut); then one
 * `delete_volume` command naming the drives that confirmed a table without it, whose extents are
 * free at once; its extents on the other drives are retired, released later by the mirror
 * control's pass once zeroed under a confirmed table (docs/toma.md, "Deleting a volume").
 *
 * The two differ only in where the state comes from and how a command is committed (written to
 * the drives' quorum, or proposed through the Raft log), which is the seam below.
 */
import type { Env } from "../engine/env.ts";
import type { ClientRecord } from "./clients.ts";
import type { ClusterState, Command, VolumeRecord } from "./cluster-state.ts";
import type { MirrorControl } from "./mirror-control.ts";
import type { Outcome } from "./toma.ts";

export type DeleteVolumeCommand = Extract<Command, { kind: "delete_volume" }>;

export interface VolumeDeleteHost {
  readonly env: Env;
  readonly mirror: MirrorControl;
  /** The state a delete is computed from now, or why there is none. */
  state(): Outcome<ClusterState>;
  /**
   * Commits `cmd`, computed from the state as it is once the volume is fenced out: whatever
   * changed meanwhile, a drive in `released` confirmed a table without the volume (its extents
   * of it there were zeroed and unlocked), and apply() retires its extents on every other drive.
   * May throw (the host's own refusals); the fencing is undone either way.
   */
  commit(vol: VolumeRecord, cmd: DeleteVolumeCommand): Promise<Outcome<unknown>>;
}

/** Deletes the volume named `name`; to be run one at a time with the host's other mutations. */
export async function deleteVolume(host: VolumeDeleteHost, name: string, force: boolean): Promise<Outcome<null>> {
  const st = host.state();
  if (!st.ok) return st;
  const vol = st.value.volumes.find((x) => x.name === name);
  if (!vol) return { ok: false, code: "not_found", error: `no volume named '${name}' ('nvmesh volume show' lists them)` };
  const users = host.mirror.attachedBy(vol.uuid);
  if (users.length > 0 && !force) return { ok: false, code: "in_use", error: inUseError(name, users) };
  const { released, done } = await host.mirror.fenceOut(vol, force);
  try {
    const r = await host.commit(vol, { kind: "delete_volume", uuid: vol.uuid, released });
    if (!r.ok) return r;
    host.mirror.forgetVolume(name);
    const retired = vol.columns.length - released.length;
    host.env.log.info("volume deleted", { volume: name, uuid: vol.uuid, forced: force, drives_released: released.length, drives_retired: retired });
    return { ok: true, value: null };
  } finally {
    done();
  }
}

/** Why a volume its live clients hold attached is not deleted without --force. */
export function inUseError(name: string, users: readonly ClientRecord[]): string {
  const who = users.map((c) => `${c.name} (client ${c.id})`).join(", ");
  return `volume '${name}' is attached by ${who}: detach it there first, or delete with --force (which fences those clients out of it and removes their exports)`;
}
