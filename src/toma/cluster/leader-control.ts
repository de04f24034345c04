/**
 * The leader's mirror control in a TOMA cluster: while this TOMA leads (and applied an entry of
 * its own term), it runs the single TOMA's controllers (mirror-control.ts: client registrations
 * and switch rounds, fence tables, one topology step at a time, rebuilds, stale-lock recovery,
 * the release of retired extents) over the replicated state, and serves the client daemons (the
 * other TOMAs relay their calls here). One `ControlTerm` per term led: a new term starts from the
 * applied state, every registered client restored from it (docs/toma-cluster.md, "Clients in a
 * TOMA cluster").
 *
 * - Every command goes through the Raft log (the member's proposal path), computed from the
 *   applied state and refused by every TOMA alike when that state moved on (`computed_at`).
 * - Every request to a target carries `fenceVersion(term, generation)`: a target that has seen a
 *   later leader's version refuses it (STALE), so a deposed leader, paused or cut off, changes
 *   nothing on a drive a newer leader has touched; a STALE naming a later term stops this one.
 * - The leader reaches every server's target at the address its TOMA reports (drive-pool.ts),
 *   over sessions of its own (HELLO as role toma, name `<toma id>/leader`, so they never
 *   supersede the member's own sessions that write its hard state).
 * - A syncing leg's copy is handed to the TOMA serving its drive (rebuild-orders.ts), and taken
 *   back when that TOMA is silent; the leader still commits every step.
 * - A drive is declared unreachable only when two paths agree: the leader's own session does not
 *   serve it, and its server's report is stale or does not list it healthy.
 */
import type { Env, TimerHandle } from "../../engine/env.ts";
import { LISTEN_SLACK_MS, ListeningClock } from "../../engine/listening-clock.ts";
import { withSteadyClock } from "../../engine/steady-clock.ts";
import type { AttachInfo } from "../../engine/layout/types.ts";
import { Serial } from "../../engine/serial.ts";
import { BITMAP_REGION_BYTES } from "../../engine/drive/superblock.ts";
import type { DriveInfo } from "../../engine/wire/control.ts";
import { allocateLeg } from "../allocator.ts";
import type { LegView } from "../api-types.ts";
import type { ClientHost } from "../client-routes.ts";
import { apply, type ClusterState, type Command, encodeState, type VolumeRecord } from "../cluster-state.ts";
import { encodeProposal, fenceVersion, MAX_STATE_BYTES } from "../consensus/proposal.ts";
import { type MirrorTimings, MirrorControl } from "../mirror-control.ts";
import { type Connect, DEFAULT_LINK_TIMINGS, TargetLink } from "../target-link.ts";
import { type VolumeState, volumeStateOf } from "../toma.ts";
import { clientSecret } from "../api-auth.ts";
import { deleteVolume } from "../volume-delete.ts";
import { attachInfoOf, evictRefusal, legViewsOf } from "../volume-views.ts";
import { STATUS } from "../api.ts";
import { type DrivePool, REPORT_FRESH_MS } from "./drive-pool.ts";
import { FenceDuty } from "./fence-duty.ts";
import { LeaderOpError, leaderOnly, notLeader } from "./leader-gate.ts";
import { RebuildDelegation } from "./rebuild-orders.ts";
import { ProposalError, type TomaNode } from "./node.ts";
import { COMMAND_TIMEOUT_MS, type VolumeOps } from "./volume-ops.ts";

/** How often leadership is checked, and how often a pass of the mirror control runs at least. */
const CHECK_EVERY_MS = 200;
const PASS_EVERY_MS = 1000;
/** Longest a new term waits for its sessions to the targets before its first step (a connect's timeout). */
const LINK_GRACE_MS = DEFAULT_LINK_TIMINGS.request_timeout_ms;

export interface LeaderControlOptions {
  /** Opens the leader's own session to a target (HELLO as role toma under `<toma id>/leader`). */
  connect: Connect;
  /** The cluster's server key (null: --insecure): each client's secret derives from it and its id. */
  server_key: Uint8Array | null;
  mirror_timings?: Partial<MirrorTimings>;
  /** This TOMA's server name (as its drive reports say): rebuilds of its own drives' legs are copied here. */
  name: string;
}

export class LeaderControl {
  private current: ControlTerm | null = null;
  private timer: TimerHandle | null = null;
  /** The term whose control a target deposed: not started again in that term. */
  private deposed_term = -1;

  private readonly env: Env;
  private readonly listening: ListeningClock;

  constructor(
    env: Env,
    private readonly node: TomaNode,
    private readonly pool: DrivePool,
    private readonly volumes: VolumeOps,
    private readonly opts: LeaderControlOptions,
  ) {
    // Every local timeout of the control (client expiry, leg retry, target liveness) reads this
    // clock: a wall clock jumping back would keep a silent client alive for as long as it jumped,
    // and time this process did not run is no one's silence (listening-clock.ts).
    const steady = withSteadyClock(env);
    this.listening = new ListeningClock(steady.clock, CHECK_EVERY_MS, LISTEN_SLACK_MS);
    this.env = { ...steady, clock: this.listening };
  }

  start(): void {
    this.listening.tick();
    this.timer = this.env.timers.every(CHECK_EVERY_MS, () => {
      this.listening.tick();
      this.check();
    });
  }

  stop(): void {
    this.timer?.cancel();
    this.listening.stop();
    this.current?.stop();
    this.current = null;
  }

  /** The control of the term this TOMA leads now, or null (not leading, not ready, deposed). */
  active(): ControlTerm | null {
    this.check();
    return this.current;
  }

  /** The control, or the refusal a follower answers (421 naming the leader, or 503). */
  activeOrRefuse(): ControlTerm {
    const c = this.active();
    if (c) return c;
    leaderOnly(this.node);
    throw notLeader(this.node);
  }

  private check(): void {
    const v = this.node.view();
    const leading = v.phase === "running" && v.role === "leader" && v.leader_ready && v.term !== null && this.node.appliedState() !== null;
    if (this.current && (!leading || this.current.term !== v.term || this.current.deposed)) {
      if (this.current.deposed) this.deposed_term = this.current.term;
      this.env.log.info("leader control stops", { term: this.current.term, why: this.current.deposed ? "deposed at a target" : "no longer leading" });
      this.current.stop();
      this.current = null;
    }
    if (!this.current && leading && v.term !== this.deposed_term) {
      this.current = new ControlTerm(this.env, this.node, this.pool, this.volumes, v.term!, this.opts);
      this.env.log.info("leader control starts", { term: v.term });
      this.current.start();
    }
  }
}

/** The leader's duties for one term. */
export class ControlTerm implements ClientHost {
  readonly mirror: MirrorControl;
  /** The copies handed to the TOMAs serving the rebuilding legs' drives (rebuild-orders.ts). */
  readonly delegation: RebuildDelegation;
  /** A target named a version of a later term: this term acts no more. */
  deposed = false;
  private readonly links = new Map<string, TargetLink>();
  private timer: TimerHandle | null = null;
  /** Passes and mutations, one at a time. */
  private readonly steps = new Serial();
  private readonly pass = this.steps.coalesced(
    async () => {
      if (this.stopped) return;
      this.refreshLinks();
      if (this.state() && this.linksSettled()) await this.mirror.tick((d) => this.reachable(d));
    },
    (e) => this.env.log.error("leader control pass failed", { error: (e as Error).message }),
  );
  private stopped = false;
  private readonly started_ms: number;
  readonly fenceDuty: FenceDuty;

  constructor(
    private readonly env: Env,
    private readonly node: TomaNode,
    private readonly pool: DrivePool,
    private readonly volumes: VolumeOps,
    readonly term: number,
    private readonly opts: LeaderControlOptions,
  ) {
    this.started_ms = env.clock.now_ms();
    this.fenceDuty = new FenceDuty(env, pool);
    this.delegation = new RebuildDelegation(env, opts.name, pool, term, () => this.version());
    this.mirror = new MirrorControl(
      {
        env,
        state: () => this.state(),
        propose: (cmd, computed_at) => this.propose(cmd, computed_at),
        sessionOf: (d) => this.locate(d)?.link.session ?? null,
        version: () => this.version(),
        deposed: (newest) => this.deposedBy(newest),
        regionBytes: () => BITMAP_REGION_BYTES,
        cacheEpochOf: (d) => this.locate(d)?.info.cache_epoch,
        replacement: (vol, column) => {
          const st = this.state();
          return st ? allocateLeg(st, vol, column, this.pool.topology(st), new Set()) : null;
        },
        replicated_clients: { secretOf: opts.server_key ? (id) => clientSecret(opts.server_key!, id) : null },
        // Each drive's own TOMA keeps its table; this control only for a silent one (fence-duty.ts).
        fenceKeeper: (d, key) => this.fenceDuty.keeper(d, key),
        delegate: this.delegation,
      },
      opts.mirror_timings,
    );
  }

  start(): void {
    // Before any client daemon is served: every registered client keeps its id under this term.
    this.mirror.restoreClients();
    this.refreshLinks();
    this.timer = this.env.timers.every(PASS_EVERY_MS, () => this.kick());
    this.kick();
  }

  stop(): void {
    this.stopped = true;
    this.timer?.cancel();
    this.delegation.stop();
    for (const l of this.links.values()) l.stop();
    // Held watches answer now: their daemons find the next leader.
    this.mirror.clients.notify();
  }

  // ---- ClientHost ------------------------------------------------------------------------------

  /** The applied state while this term's control may act on it; null otherwise. */
  state(): ClusterState | null {
    if (this.stopped || this.deposed) return null;
    const v = this.node.view();
    if (v.role !== "leader" || v.term !== this.term) return null;
    return this.node.appliedState();
  }

  notReady(): string {
    if (this.deposed) return `this TOMA's leadership of term ${this.term} was deposed by a newer leader at a target`;
    return `this TOMA no longer leads term ${this.term}`;
  }

  kick(): void {
    if (!this.stopped) this.pass();
  }

  attachInfo(given: VolumeRecord): AttachInfo {
    const where = (d: string) => this.locate(d)?.link.address ?? this.pool.locate(d)?.drive.target ?? null;
    return attachInfoOf(given, this.state(), where, this.mirror.stable());
  }

  // ---- views and commands of the management API -------------------------------------------------

  volumeState(vol: VolumeRecord): VolumeState {
    return volumeStateOf(vol, (d) => this.reachable(d));
  }

  legViews(vol: VolumeRecord): LegView[] {
    return legViewsOf(vol, (d) => this.reachable(d), (c) => this.mirror.progress(vol, c));
  }

  /**
   * Deletes a volume as the single TOMA does (volume-delete.ts), its command proposed through the
   * Raft log; a refusal becomes the management API's answer.
   */
  deleteVolume(name: string, force: boolean): Promise<void> {
    return this.steps.run(async () => {
      const out = await deleteVolume(
        {
          env: this.env,
          mirror: this.mirror,
          state: () => {
            const st = this.state();
            return st ? { ok: true, value: st } : { ok: false, code: "unavailable", error: this.notReady() };
          },
          commit: async (vol, cmd) => {
            await this.volumes.command(`delete volume '${name}'`, (now) => {
              if (!now.volumes.some((x) => x.uuid === vol.uuid)) throw new LeaderOpError(404, `volume '${name}' was deleted meanwhile`);
              return cmd;
            });
            return { ok: true, value: null };
          },
        },
        name,
        force,
      );
      if (!out.ok) throw new LeaderOpError(STATUS[out.code], out.error);
    });
  }

  /** Takes a drive out: its mirror legs go dead and are replaced by blank ones elsewhere. */
  evictDrive(uuid: string): void {
    const st = this.state();
    if (!st) throw new LeaderOpError(503, this.notReady());
    const no = evictRefusal(st, uuid);
    if (no) throw new LeaderOpError(STATUS[no.code], no.error);
    this.mirror.evict(uuid);
    this.kick();
  }

  /** The control-plane version stamped on every request of this control. */
  version(): number {
    const st = this.state();
    return st ? fenceVersion(this.term, st.generation) : 0;
  }

  // ---- internals -------------------------------------------------------------------------------

  private async propose(cmd: Command, computed_at: number): Promise<{ ok: boolean; error?: string; stale?: boolean }> {
    const st = this.state();
    if (!st) return { ok: false, error: this.notReady() };
    if (cmd.kind === "register_client" || cmd.kind === "attach_client") {
      // Like a volume's command (volume-ops.ts): never a state beyond what a TOMA cluster holds.
      const after = apply(st, cmd);
      const bytes = after.ok ? encodeState(after.state).length : 0;
      if (bytes > MAX_STATE_BYTES) return { ok: false, error: `the cluster state would take ${bytes} bytes with this client, above the ${MAX_STATE_BYTES} a TOMA cluster's state may take` };
    }
    try {
      // Every command carries this term's stable generation: what the next leader may assume every
      // client acknowledged (mirror-control.ts restoreClients).
      const stable = Math.min(this.mirror.stable(), computed_at);
      const done = await this.node.propose({ kind: "normal", data: encodeProposal({ computed_at, cmd, stable }) }, COMMAND_TIMEOUT_MS);
      if (done.applied?.kind === "applied") return { ok: true };
      const why = done.applied?.kind === "refused" ? done.applied.error : `applied as ${done.applied?.kind ?? "nothing"}`;
      return { ok: false, error: why, stale: done.applied?.kind === "refused" && done.applied.code === "stale" };
    } catch (e) {
      if (e instanceof ProposalError) return { ok: false, error: e.message };
      throw e;
    }
  }

  /** A target refused a request as older than `newest`: a later term's leader acts there. */
  private deposedBy(newest: number): void {
    const term = Math.floor(newest / 2 ** 32);
    // A version of this very term is one of our own requests that overtook another: no news.
    if (term <= this.term || this.deposed) return;
    this.deposed = true;
    this.env.log.error("deposed: a leader of a later term acts on this cluster's drives; this TOMA's leader control stops", { term: this.term, newest_term: term });
    this.mirror.clients.notify();
  }

  /**
   * Whether every target some server reports has been tried once by this term's own sessions
   * (connected, or failed), or LINK_GRACE_MS passed. Until then the control takes no step: a
   * drive it has not reached yet is neither judged unreachable on the pool's word alone nor
   * counted as a survivor whose cache epoch and write-intent bits it could not check (simulator
   * seed 539 with --toma-cluster: a new leader, 100 ms into its term, declared a healthy leg dead
   * and kept the one whose drive had just lost its cache).
   */
  private linksSettled(): boolean {
    const age = this.env.clock.now_ms() - this.started_ms;
    // A leg's drive that neither a report nor an own session has named yet, this term younger
    // than a report's freshness: nothing has been heard of it, so no step (a cluster just founded,
    // e.g. on a taken-over single-TOMA state, has no report at all; a step now would judge its
    // legs dead on silence alone).
    if (age < REPORT_FRESH_MS && this.unheardLegDrive() !== null) return false;
    if (age >= LINK_GRACE_MS) return true;
    return [...this.links.values()].every((l) => l.ever_up || l.last_error !== null);
  }

  /** A drive holding a leg that no report and no own session has named yet; null if none. */
  private unheardLegDrive(): string | null {
    const st = this.node.appliedState();
    for (const v of st?.volumes ?? []) for (const c of v.columns) if (!this.locate(c.drive_uuid) && this.pool.locate(c.drive_uuid) === null) return c.drive_uuid;
    return null;
  }

  /** A session to every target some server reports (new addresses only; links are kept). */
  private refreshLinks(): void {
    if (this.stopped) return;
    for (const s of this.pool.view().servers) {
      for (const d of s.drives) {
        if (this.links.has(d.target)) continue;
        const l = new TargetLink(this.env, d.target, this.opts.connect, DEFAULT_LINK_TIMINGS);
        l.onChange = () => this.kick();
        this.links.set(d.target, l);
        l.start();
      }
    }
  }

  /** Where the leader's own sessions reach a drive now (the last up link listing it). */
  private locate(drive_uuid: string): { link: TargetLink; info: DriveInfo } | null {
    let found: { link: TargetLink; info: DriveInfo } | null = null;
    for (const link of this.links.values()) {
      if (!link.up) continue;
      const info = link.drives.find((d) => d.drive_uuid === drive_uuid);
      if (info) found = { link, info };
    }
    return found;
  }

  /**
   * Whether a drive counts as reachable for the topology. Served by the leader's own session: as
   * that session lists it. Otherwise a live leg on it is declared unreachable only when a second
   * path agrees (its server's report is stale or does not list it healthy): a leader cut off from
   * one target alone does not take from the clients a leg they still reach (they report it if they
   * do not). A dead leg comes back only through the leader's own session, which its rebuild needs,
   * and so does a drive whose cache epoch changed.
   */
  private reachable(drive_uuid: string): boolean {
    const st = this.node.appliedState();
    if (!st) return false;
    const at = this.locate(drive_uuid);
    if (at) return at.info.state === "ok" && at.info.cluster_uuid === st.cluster_uuid;
    if (deadLegDrives(st).has(drive_uuid) || !this.pool.usable(drive_uuid, st.cluster_uuid)) return false;
    // A drive whose cache epoch moved may have lost acknowledged writes: only the leader's own
    // session can read its write-intent bits (checkCacheEpochs), so the report alone is not enough.
    const recorded = st.drives.find((d) => d.drive_uuid === drive_uuid)?.cache_epoch;
    return this.pool.locate(drive_uuid)!.drive.cache_epoch === recorded;
  }
}

/**
 * The drives holding a dead leg of some volume in `st`. Asked for every drive on every pass and
 * every view, so computed once per applied state: a state is never changed in place (apply()
 * answers a new one), so its identity stands for its contents.
 */
const dead_leg_drives = new WeakMap<ClusterState, ReadonlySet<string>>();
function deadLegDrives(st: ClusterState): ReadonlySet<string> {
  let set = dead_leg_drives.get(st);
  if (!set) {
    set = new Set(st.volumes.flatMap((v) => v.columns.filter((_, i) => v.legs[i] === "dead").map((c) => c.drive_uuid)));
    dead_leg_drives.set(st, set);
  }
  return set;
}
