/**
 * The leader's cluster-state commands for the pool and the volumes: adding the drives the TOMAs
 * report (drive-pool.ts), creating a volume (the allocator of the single TOMA, with the server of
 * a drive being the TOMA that reports it), deleting one. Each is computed from the leader's
 * applied state, proposed through the member's proposal path and awaited until applied here
 * before the next is computed: one at a time on this TOMA, so a command never races another of
 * its own, and one computed from a view another changed is refused by every TOMA alike (stale
 * `computed_at`) and computed again.
 *
 * Size bounds: the state after a command (its extents as runs) must stay within MAX_STATE_BYTES,
 * and a command within MAX_COMMAND_BYTES, so that the state and the log tail kept before
 * compaction (64 entries) fit the hard-state record of a 1 MiB metadata slot; a new or lagging
 * member gets the state in chunks, so no message bounds it. A command beyond either is refused
 * before it is proposed (507), saying why.
 *
 * Deleting a volume, and everything that touches its extents or clients, is the leader's mirror
 * control's (leader-control.ts), which computes its commands through `command` here.
 */
import type { Env } from "../../engine/env.ts";
import { randomUuid } from "../../engine/env.ts";
import { Serial } from "../../engine/serial.ts";
import { uuidToString } from "../../engine/uuid.ts";
import { allocate, createVolumeCommand, type VolumeRequest } from "../allocator.ts";
import { STATUS } from "../api.ts";
import { apply, type ClusterState, type Command, encodeState, type VolumeRecord } from "../cluster-state.ts";
import { encodeProposal, MAX_STATE_BYTES } from "../consensus/proposal.ts";
import { toRuns } from "../extent-runs.ts";
import type { DrivePool } from "./drive-pool.ts";
import { LeaderOpError, leaderOnly, proposalFailure } from "./leader-gate.ts";
import type { TomaNode } from "./node.ts";

/** How often a command refused as computed from a stale view is computed again. */
const STALE_RETRIES = 3;
/** How long one command may take to commit and apply. */
export const COMMAND_TIMEOUT_MS = 10_000;
/**
 * One encoded proposal: 65 of them and the state (MAX_STATE_BYTES) stay well under the 1 MiB
 * metadata slot. Columns travel as runs, so a leg of any size takes a few bytes unless its
 * extents are scattered (about 5 bytes per run).
 */
export const MAX_COMMAND_BYTES = 4 * 1024;

export class VolumeOps {
  /** Volume operations, one at a time. */
  private readonly steps = new Serial();
  private adding = false;

  constructor(
    private readonly env: Env,
    private readonly node: TomaNode,
    private readonly pool: DrivePool,
  ) {}

  /** Creates a volume; answers its record as applied. */
  create(req: VolumeRequest): Promise<VolumeRecord> {
    return this.steps.run(async () => {
      const uuid = uuidToString(randomUuid(this.env));
      const st = await this.command(`create volume '${req.name}'`, (state) => {
        const alloc = allocate(state, req, this.pool.topology(state));
        if (!alloc.ok) throw new LeaderOpError(STATUS[alloc.code], alloc.error);
        return createVolumeCommand(uuid, req, alloc.alloc);
      });
      const vol = st.volumes.find((x) => x.uuid === uuid)!;
      this.env.log.info("volume created", { volume: vol.name, uuid, drives: vol.columns.map((c) => c.drive_uuid).join(",") });
      return vol;
    });
  }

  /**
   * Adds every reported drive the state lacks, one command each. Runs after each report; a second
   * call while one runs does nothing (the next report brings it back).
   */
  addReported(): void {
    if (this.adding) return;
    this.adding = true;
    void this.steps.run(async () => {
      for (;;) {
        const state = this.node.appliedState();
        if (state === null || !this.node.leaderReady()) return;
        const next = this.pool.toAdd(state)[0];
        if (!next) return;
        await this.command(`add drive ${next.drive_uuid}`, (s) => {
          if (s.drives.some((d) => d.drive_uuid === next.drive_uuid)) throw new LeaderOpError(409, "already added");
          return { kind: "add_drive", drive: next };
        });
        this.env.log.info("drive added to the cluster", { drive: next.drive_uuid, server: this.pool.locate(next.drive_uuid)?.server ?? "?" });
      }
    })
      .catch((e) => this.env.log.warn("adding reported drives failed", { error: (e as Error).message }))
      .finally(() => (this.adding = false));
  }

  /**
   * Computes a command from the applied state, proposes it and waits until it is applied here;
   * answers the state after it. A refusal by the state machine becomes the API's answer; a stale
   * view is computed again (a few times).
   */
  async command(what: string, compute: (state: ClusterState) => Command): Promise<ClusterState> {
    for (let attempt = 0; ; attempt++) {
      leaderOnly(this.node);
      const state = this.node.appliedState();
      if (state === null) throw new LeaderOpError(503, "this TOMA has no cluster state applied yet; retry in a moment");
      const cmd = compute(state);
      const data = encodeProposal({ computed_at: state.generation, cmd });
      tooLarge(what, state, cmd, data);
      let done;
      try {
        done = await this.node.propose({ kind: "normal", data }, COMMAND_TIMEOUT_MS);
      } catch (e) {
        throw proposalFailure(this.node, what, e);
      }
      const a = done.applied;
      if (a?.kind === "applied") return a.state;
      if (a?.kind === "refused" && a.code === "stale" && attempt < STALE_RETRIES) continue;
      if (a?.kind === "refused") {
        const status = a.code === "stale" ? 503 : a.code === "undecodable" ? 500 : STATUS[a.code];
        throw new LeaderOpError(status, `${what}: ${a.error}`);
      }
      throw new LeaderOpError(500, `${what}: entry ${done.index} applied as ${a?.kind ?? "nothing"}`);
    }
  }
}

/** Extent runs the command's columns take (what makes a command large). */
function runsOf(cmd: Command): number {
  const cols = cmd.kind === "create_volume" ? cmd.columns : cmd.kind === "replace_leg" ? [cmd.with] : [];
  return cols.reduce((n, c) => n + toRuns(c.extents).length / 2, 0);
}

/** Throws (507) when the command or the state after it would exceed what this mode can carry. */
export function tooLarge(what: string, state: ClusterState, cmd: Command, data: Uint8Array): void {
  if (data.length > MAX_COMMAND_BYTES) {
    throw new LeaderOpError(
      507,
      `${what}: its command would take ${data.length} bytes (its legs' extents are scattered over ${runsOf(cmd)} runs), above the ${MAX_COMMAND_BYTES} a TOMA cluster's log entry may hold; ` +
        "create a volume with fewer columns or a smaller one, or free contiguous space by deleting volumes",
    );
  }
  const after = apply(state, cmd);
  if (!after.ok) return; // the state machine refuses it the same way when applied, saying why
  const bytes = encodeState(after.state).length;
  if (bytes > MAX_STATE_BYTES) {
    throw new LeaderOpError(
      507,
      `${what}: the cluster state would take ${bytes} bytes, above the ${MAX_STATE_BYTES} a TOMA cluster's state may take (it must fit, with the log tail, each TOMA's 1 MiB metadata slot); ` +
        "delete volumes, or create fewer, larger ones",
    );
  }
}
