/**
 * One TOMA managing several targets (first slice: no peers, no election). Sans-I/O: the world is
 * reached only through Env and the TargetSessions it opens.
 *
 * The cluster state lives only in the data drives' metadata slots. Recovery and commit rules, and
 * why they never lose a committed change, are in docs/toma.md ("Safety argument"). In short:
 * - start: read every reachable drive's slot; adopt the highest-generation valid state of our
 *   cluster once a majority of the drives *that state lists* has answered (any committed state was
 *   written to a majority, so one of them shows it);
 * - commit: write the next state to every reachable drive; success only when a majority of both
 *   the old and the new drive lists acknowledged; otherwise the change is refused (503), the
 *   in-memory state is kept and re-written under a higher generation to retract the partial write.
 *   The commit decides as soon as the answers so far decide it (awaitQuorum); the writes still
 *   unanswered then (a paused target's) finish behind it.
 * Every mutation and every maintenance step runs one at a time (`steps`); only those
 * straggling metadata writes outlive the step that sent them (why that is safe: `commit`).
 */
import type { ClusterKey } from "../engine/wire/cluster-key.ts";
import { ExtentSet } from "./extent-set.ts";
import { type Env, randomUuid, type TimerHandle } from "../engine/env.ts";
import type { AttachInfo } from "../engine/layout/types.ts";
import { NIL_UUID, uuidFromString, uuidToString } from "../engine/uuid.ts";
import type { DriveInfo } from "../engine/wire/control.ts";
import { Status } from "../engine/wire/header.ts";
import { openSession } from "../engine/wire/session.ts";
import { TargetError } from "../engine/wire/session-api.ts";
import { assert } from "../engine/assert.ts";
import { allocate, allocateLeg, createVolumeCommand, type Topology, type VolumeRequest } from "./allocator.ts";
import {
  type ClusterState,
  type Command,
  decodeState,
  emptyState,
  encodeState,
  majority,
  type RefusalCode,
  retiredCounts,
  usedExtents,
  type VolumeRecord,
} from "./cluster-state.ts";
import type { LegView } from "./api-types.ts";
import { type DriveSeen, heard, knownGeneration } from "./drive-slots.ts";
import { BITMAP_REGION_BYTES } from "../engine/drive/superblock.ts";
import { type MirrorTimings, MirrorControl } from "./mirror-control.ts";
import { isMirrored, mirrorState, setColumns } from "./topology.ts";
import { attachInfoOf, evictRefusal, legViewsOf } from "./volume-views.ts";
import { deleteVolume } from "./volume-delete.ts";
import { type Connect, DEFAULT_LINK_TIMINGS, type LinkTimings, TargetLink, TimeoutError, withTimeout } from "./target-link.ts";
import { withSteadyClock } from "../engine/steady-clock.ts";
import { Serial } from "../engine/serial.ts";
import { awaitQuorum } from "./consensus/quorum.ts";
import { applyProposal, encodeProposal, fenceVersion } from "./consensus/proposal.ts";
import { decodeRecord } from "./consensus/hard-state-record.ts";

export interface TomaTimings extends LinkTimings {
  /** How often the TOMA re-checks drives: write-back, claims, retries of a retraction. */
  sync_ms: number;
}

export const DEFAULT_TOMA_TIMINGS: TomaTimings = { ...DEFAULT_LINK_TIMINGS, sync_ms: 1000 };

export interface TomaOptions {
  /** This TOMA's name, sent in HELLO. */
  name: string;
  /** Target addresses ("host:port") to manage. */
  targets: string[];
  /**
   * The cluster to manage. When absent: the one found on the drives; a new one is created only
   * when every configured target answered and no drive belongs to any cluster.
   */
  cluster_uuid?: string;
  /** Opens a session to a target; defaults to the real wire session. */
  connect?: Connect;
  /**
   * The cluster's server key, proved to every target by the default `connect` (a TOMA needs the
   * server key: metadata, FENCE, lock recovery). None: keyless (--insecure) targets only.
   */
  cluster_key?: Uint8Array | null;
  timings?: Partial<TomaTimings>;
  mirror_timings?: Partial<MirrorTimings>;
}

export type Refusal = { ok: false; code: RefusalCode | "unavailable"; error: string };
export type Outcome<T> = { ok: true; value: T } | Refusal;

export type VolumeState = "online" | "degraded" | "rebuilding" | "offline";
export type DriveState = "ok" | "missing" | "foreign" | "error";

export interface DriveView {
  uuid: string;
  /** A TOMA cluster: the server (TOMA name) whose target serves it, as last reported. */
  server?: string | null;
  target: string | null;
  path: string | null;
  size_bytes: number | null;
  /** Member of our cluster's state (false: unclaimed or not yet added, or foreign). */
  member: boolean;
  cluster_uuid: string | null;
  extent_size_bytes: number | null;
  extents_total: number;
  /** In use by a volume, or retired (given up by a volume, not yet free: docs/toma.md). */
  extents_used: number;
  /** Of extents_used, those retired. */
  extents_retired: number;
  extents_free: number;
  metadata_generation: number | null;
  state: DriveState;
  error: string | null;
}

/** A volume's state from its leg states and which of its drives are reachable now (`up`). */
export function volumeStateOf(vol: VolumeRecord, up: (drive_uuid: string) => boolean): VolumeState {
  const at = (c: number) => up(vol.columns[c]!.drive_uuid);
  // Concatenated and RAID0 hold one copy: any unreachable column makes data unreachable.
  if (!isMirrored(vol)) return vol.columns.every((_, c) => at(c)) ? "online" : "offline";
  for (let set = 0; set < vol.stripe_width; set++) {
    if (!setColumns(vol, set).some((c) => vol.legs[c] === "ok" && at(c))) return "offline";
  }
  const m = mirrorState(vol);
  if (m === "degraded" || vol.columns.some((_, c) => !at(c))) return "degraded";
  return m === "normal" ? "online" : "rebuilding";
}

/** A target as the API shows it; `now` is this TOMA's local clock reading. */
export function targetView(l: TargetLink, now: number): TargetView {
  return {
    address: l.address,
    state: l.up ? "up" : "down",
    target_name: l.target_name,
    version: l.version,
    drives: l.drives.length,
    io: [...new Set(l.drives.flatMap((d) => (d.io_path === undefined ? [] : [d.io_path])))].join("; ") || null,
    for_ms: Math.max(0, Math.round(now - l.since_ms)),
    last_error: l.last_error,
    transport: l.session?.transport.why ?? null,
    rdma: l.session?.info.rdma ? `rdma://${l.session.info.rdma.host ?? "*"}:${l.session.info.rdma.port}` : null,
  };
}

export interface TargetView {
  address: string;
  state: "up" | "down";
  target_name: string | null;
  version: string | null;
  drives: number;
  /** How the target's I/O reaches its drives (each distinct DriveInfo.io_path), null if unknown. */
  io: string | null;
  /** Local milliseconds since the last up/down transition (never a wall-clock time). */
  for_ms: number;
  last_error: string | null;
  /**
   * How this TOMA's session to the target carries its frames, and why: "tcp: no RDMA device on
   * this host", "rdma: the target listens on rdma://…" (null while down).
   */
  transport: string | null;
  /** The target's RDMA port when it listens on RDMA ("rdma://HOST:PORT"; HOST * for any address). */
  rdma: string | null;
}

const unavailable = (error: string): Refusal => ({ ok: false, code: "unavailable", error });

export class Toma {
  readonly links: TargetLink[];
  readonly mirror: MirrorControl;
  cluster_uuid: string | null = null;
  state: ClusterState | null = null;
  /**
   * True once the state was recovered from a majority (or bootstrapped) and this process took its
   * term (takeTerm): mutations allowed, requests to targets carry the version.
   */
  ready = false;
  /** The state was recovered or bootstrapped, the term not taken yet. */
  private adopted = false;
  /**
   * The newer control-plane version a target named when it refused ours: another TOMA took a
   * newer term on this cluster's drives, and this process stands down for good (restarting it
   * takes a newer term again). Null while nobody has.
   */
  deposed: number | null = null;
  /** A maintenance pass has completed since start: claimed drives are members. */
  private settled = false;

  private readonly seen = new Map<string, DriveSeen>();
  /**
   * Per drive, the highest generation of a metadata write sent and not answered yet (a commit's
   * straggler, or a write-back): the write-back does not send the same state again meanwhile.
   */
  private readonly writing = new Map<string, number>();
  /** Every metadata write not answered yet, for stop(). */
  private readonly writes = new Set<Promise<boolean>>();
  private readonly timings: TomaTimings;
  /** The next write must use at least this generation (some drive may hold anything below). */
  private floor_generation = 1;
  /** A write reached some drives but not a quorum: re-write the current state to retract it. */
  private retract_needed = false;
  /** Mutations and maintenance passes, one at a time. */
  private readonly steps = new Serial();
  /** A maintenance pass, coalesced: asked for by every change of a link and every sync tick. */
  private readonly maintenance = this.steps.coalesced(
    async () => {
      if (!this.stopped) await this.reconcile();
    },
    (e) => this.env.log.error("maintenance failed", { error: (e as Error).message }),
  );
  private sync: TimerHandle | null = null;
  private stopped = false;
  private warned_clusters = "";

  private readonly env: Env;

  constructor(
    env: Env,
    private readonly opts: TomaOptions,
  ) {
    // Every local timeout of the TOMA (target liveness, client expiry, leg retry) reads this clock.
    this.env = env = withSteadyClock(env);
    this.timings = { ...DEFAULT_TOMA_TIMINGS, ...opts.timings };
    const hello = { version: 1 as const, role: "toma" as const, name: opts.name };
    const serverKey: ClusterKey | null = opts.cluster_key ? { kind: "server", key: opts.cluster_key } : null;
    const connect = opts.connect ?? ((address: string) => openSession(env, address, hello, { cluster_key: serverKey }));
    this.links = opts.targets.map((a) => new TargetLink(env, a, connect, this.timings));
    if (opts.cluster_uuid) this.cluster_uuid = opts.cluster_uuid.toLowerCase();
    this.mirror = new MirrorControl(
      {
        env,
        state: () => (this.ready ? this.state : null),
        propose: (cmd, computed_at) => this.propose(cmd, computed_at),
        sessionOf: (d) => this.locate().get(d)?.link.session ?? null,
        version: () => this.version(),
        deposed: (newest) => this.deposedBy(newest),
        regionBytes: () => BITMAP_REGION_BYTES,
        cacheEpochOf: (d) => this.locate().get(d)?.info.cache_epoch,
        replacement: (vol, column) => allocateLeg(this.state!, vol, column, this.topology(), new Set()),
      },
      opts.mirror_timings,
    );
  }

  start(): void {
    for (const l of this.links) {
      l.onChange = () => this.kick();
      l.start();
    }
    this.sync = this.env.timers.every(this.timings.sync_ms, () => this.kick());
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.sync?.cancel();
    for (const l of this.links) l.stop();
    await this.steps.idle();
    // Stragglers: their sessions are closed now, which fails them at once.
    await Promise.allSettled([...this.writes]);
  }

  /** Resolves once mutations are allowed, or rejects after timeout_ms. For tests and startup. */
  async whenReady(timeout_ms: number): Promise<void> {
    const deadline = this.env.clock.now_ms() + timeout_ms;
    // Ready and one full maintenance pass done: the drives found at start are in the state.
    while (!this.ready || !this.settled) {
      if (this.env.clock.now_ms() > deadline) throw new Error(`TOMA not ready after ${timeout_ms} ms: ${this.readiness()}`);
      await new Promise<void>((r) => this.env.timers.after(20, r));
    }
  }

  /** Runs a maintenance pass now (coalesced). */
  kick(): void {
    if (!this.stopped) this.maintenance();
  }

  // ---- mutations -------------------------------------------------------------------------------

  createVolume(req: VolumeRequest): Promise<Outcome<VolumeRecord>> {
    return this.steps.run(async () => {
      const state = this.readyState();
      if (!state.ok) return state;
      const alloc = allocate(state.value, req, this.topology());
      if (!alloc.ok) return alloc;
      const cmd = createVolumeCommand(uuidToString(randomUuid(this.env)), req, alloc.alloc);
      const r = await this.propose(cmd, state.value.generation);
      if (!r.ok) return r;
      return { ok: true, value: r.value.volumes.find((x) => x.uuid === cmd.uuid)! };
    });
  }

  /**
   * Deletes a volume. Refused while a live client has it attached, unless `force`: its clients
   * are then fenced out of it first (their daemons see it gone and tear its exports down). Its
   * extents are free at once on every drive that confirmed a fence table without it, and retired
   * on the others until they do (docs/toma.md, "Deleting a volume"). The flow is volume-delete.ts;
   * its command is written to the drives' quorum.
   */
  deleteVolume(name: string, force = false): Promise<Outcome<null>> {
    return this.steps.run(() =>
      deleteVolume(
        {
          env: this.env,
          mirror: this.mirror,
          state: () => this.readyState(),
          commit: (_vol, cmd) => {
            const now = this.readyState();
            return now.ok ? this.propose(cmd, now.value.generation) : Promise.resolve(now);
          },
        },
        name,
        force,
      ),
    );
  }

  /**
   * The control-plane version of the state this TOMA acts on: `term × 2^32 + generation`, the
   * version a single Raft voter would use (docs/toma.md, "Fenced at the drives"). 0 until the
   * TOMA has taken its term: a target that has seen any version refuses what it would send.
   */
  version(): number {
    if (!this.ready || !this.state || this.deposed !== null) return 0;
    return fenceVersion(this.state.term, this.state.generation);
  }

  // ---- views (synchronous snapshots) -----------------------------------------------------------

  /** Why mutations are not allowed yet, for error messages. */
  readiness(): string {
    if (this.deposed !== null) {
      return `deposed: another TOMA acts on this cluster's drives with control-plane version ${this.deposed}; this one stopped acting (restart it to take over again)`;
    }
    if (this.ready) return "ready";
    if (this.adopted) return "state recovered; writing this TOMA's term to the drives";
    if (!this.cluster_uuid) return "no cluster found yet on the reachable drives";
    if (!this.candidate()) return "no drive with a valid cluster state answered yet";
    const c = this.candidate()!.state;
    const n = c.drives.filter((d) => this.isHeard(d.drive_uuid)).length;
    return `heard from ${n} of the cluster's ${c.drives.length} drives, need ${majority(c.drives.length)}`;
  }

  targetViews(): TargetView[] {
    const now = this.env.clock.now_ms();
    return this.links.map((l) => targetView(l, now));
  }

  driveViews(): DriveView[] {
    const loc = this.locate();
    // In use: by a volume or retired (usedExtents counts both).
    const used = this.state ? usedExtents(this.state) : new Map<string, ExtentSet>();
    const retired = this.state ? retiredCounts(this.state) : new Map<string, number>();
    const members = new Map((this.state?.drives ?? []).map((d) => [d.drive_uuid, d]));
    const uuids = new Set([...members.keys(), ...loc.keys(), ...this.seen.keys()]);
    const out: DriveView[] = [];
    for (const uuid of [...uuids].sort()) {
      const rec = members.get(uuid);
      const at = loc.get(uuid);
      const seen = this.seen.get(uuid);
      const info = at?.info ?? seen?.info ?? null;
      const total = rec?.extent_count ?? info?.extent_count ?? 0;
      const r = retired.get(uuid) ?? 0;
      const u = used.get(uuid)?.size ?? 0;
      let state: DriveState = "ok";
      let error: string | null = null;
      const cluster = info?.cluster_uuid ?? null;
      if (!at) state = "missing";
      else if (info!.state === "error") [state, error] = ["error", info!.error ?? "drive reports an error"];
      else if (this.cluster_uuid && cluster !== NIL_UUID && cluster !== this.cluster_uuid) {
        [state, error] = ["foreign", `claimed by cluster ${cluster}`];
      } else if (seen?.slot.kind === "corrupt") [state, error] = ["error", `metadata slot: ${seen.slot.error}`];
      if (!error && seen?.error) error = seen.error;
      out.push({
        uuid,
        target: at?.address ?? null,
        path: info?.path ?? null,
        size_bytes: info?.size_bytes ?? null,
        member: rec !== undefined,
        cluster_uuid: cluster,
        extent_size_bytes: rec?.extent_size_bytes ?? info?.extent_size_bytes ?? null,
        extents_total: total,
        extents_used: u,
        extents_retired: r,
        extents_free: rec ? total - u : 0,
        metadata_generation: seen ? knownGeneration(seen.slot) ?? (seen.slot.kind === "corrupt" ? seen.slot.generation : null) : null,
        state,
        error,
      });
    }
    return out;
  }

  volumeState(vol: VolumeRecord): VolumeState {
    const loc = this.locate();
    return volumeStateOf(vol, (d) => loc.get(d)?.info.state === "ok");
  }

  /** What a client needs to do I/O on the volume (volume-views.ts), as of the current state. */
  attachInfo(given: VolumeRecord): AttachInfo {
    const loc = this.locate();
    return attachInfoOf(given, this.state, (d) => loc.get(d)?.address ?? null, this.mirror.stable());
  }

  legViews(vol: VolumeRecord): LegView[] {
    const loc = this.locate();
    return legViewsOf(vol, (d) => loc.get(d)?.info.state === "ok", (c) => this.mirror.progress(vol, c));
  }

  /** Takes a drive out: its mirror legs go dead and are replaced by blank ones elsewhere. */
  evictDrive(uuid: string): Outcome<null> {
    const no = evictRefusal(this.state, uuid);
    if (no) return { ok: false, ...no };
    this.mirror.evict(uuid);
    this.kick();
    return { ok: true, value: null };
  }

  /**
   * A target refused this TOMA's version as older than `newest`. Only a TOMA that took a newer
   * term writes a newer version, so one TOMA acts on the drives that is not this one: a single
   * TOMA stands down rather than take the state back (two would take turns deposing each other).
   */
  private deposedBy(newest: number): void {
    if (this.deposed !== null || !this.ready || newest <= this.version()) return;
    this.deposed = newest;
    this.ready = false;
    this.env.log.error("deposed: another TOMA acts on this cluster's drives with a newer version; this one stops acting", {
      ours: fenceVersion(this.state!.term, this.state!.generation),
      newest,
    });
  }

  // ---- internals -------------------------------------------------------------------------------

  /** Where each drive is served right now: the up target that lists it (last one wins). */
  private locate(): Map<string, { address: string; link: TargetLink; info: DriveInfo }> {
    const m = new Map<string, { address: string; link: TargetLink; info: DriveInfo }>();
    for (const link of this.links) {
      if (!link.up) continue;
      for (const info of link.drives) m.set(info.drive_uuid, { address: link.address, link, info });
    }
    return m;
  }

  private topology(): Topology {
    const loc = this.locate();
    const usable = new Set<string>();
    const target_of = new Map<string, string>();
    for (const [uuid, at] of loc) {
      target_of.set(uuid, at.address);
      const s = this.seen.get(uuid);
      if (at.info.state === "ok" && at.info.cluster_uuid === this.cluster_uuid && s?.slot.kind !== "corrupt") {
        usable.add(uuid);
      }
    }
    return { usable, target_of };
  }

  private readyState(): Outcome<ClusterState> {
    if (!this.ready || !this.state) return unavailable(`TOMA not ready: ${this.readiness()}`);
    return { ok: true, value: this.state };
  }

  private isHeard(uuid: string): boolean {
    const s = this.seen.get(uuid);
    return s !== undefined && s.info.cluster_uuid === this.cluster_uuid && heard(s.slot);
  }

  /** The valid state with the highest generation among our cluster's drives. */
  private candidate(): { state: ClusterState; generation: number } | null {
    let best: { state: ClusterState; generation: number } | null = null;
    for (const s of this.seen.values()) {
      if (s.slot.kind !== "valid" || s.info.cluster_uuid !== this.cluster_uuid) continue;
      if (!best || s.slot.generation > best.generation) best = { state: s.slot.state, generation: s.slot.generation };
    }
    return best;
  }

  /**
   * Commits a command computed from the state of generation `computed_at`, through the same
   * path a replicated log entry takes (consensus/proposal.ts): a command computed from a state
   * that has changed since is refused, changing nothing, and the caller computes it again.
   */
  private async propose(cmd: Command, computed_at: number): Promise<Outcome<ClusterState>> {
    const state = this.readyState();
    if (!state.ok) return state;
    // Generations skipped by a failed write are skipped for good: the entry's index is above them.
    const index = Math.max(state.value.generation + 1, this.floor_generation);
    const r = applyProposal(state.value, { index, data: encodeProposal({ computed_at, cmd }) });
    if (r.kind === "refused") {
      if (r.code === "stale") return unavailable(`the cluster state changed while this change was computed (${r.error}); try again`);
      return { ok: false, code: r.code === "undecodable" ? "invalid" : r.code, error: r.error };
    }
    assert(r.kind === "applied", () => `a command applied as ${r.kind}`);
    return this.commit(r.state);
  }

  /**
   * Takes this process's term: the recovered (or new) state written again with term + 1 before
   * the TOMA acts on anything, as a Raft leader's first entry of its own term. Every version it
   * stamps from then on is above any version an earlier TOMA process (or a TOMA that has since
   * lost the drives to this one) stamped, and a restart is never refused by its own past.
   */
  private async takeTerm(): Promise<boolean> {
    const prev = this.state!;
    const next = { ...prev, term: prev.term + 1, generation: Math.max(prev.generation + 1, this.floor_generation) };
    const r = await this.commit(next);
    if (!r.ok) {
      this.env.log.warn("cannot take a term yet", { error: r.error });
      return false;
    }
    this.env.log.info("term taken", { term: next.term, generation: next.generation, version: fenceVersion(next.term, next.generation) });
    return true;
  }

  /** Writes `next` (its generation already chosen) to the drives; adopts it on a quorum. */
  private async commit(next: ClusterState): Promise<Outcome<ClusterState>> {
    const prev = this.state!;
    const loc = this.locate();
    const oldList = prev.drives.map((d) => d.drive_uuid);
    const newList = next.drives.map((d) => d.drive_uuid);
    const writable = [...new Set([...oldList, ...newList])].filter((u) => {
      const s = this.seen.get(u);
      return loc.has(u) && s !== undefined && s.slot.kind !== "corrupt";
    });
    const shortOf = (list: string[], acks: Set<string>) =>
      list.length > 0 && list.filter((u) => acks.has(u)).length < majority(list.length);
    const reach = new Set(writable);
    for (const list of [oldList, newList]) {
      if (shortOf(list, reach)) {
        const n = list.filter((u) => reach.has(u)).length;
        return unavailable(
          `only ${n} of the cluster's ${list.length} drives are reachable; ${majority(list.length)} must acknowledge a change`,
        );
      }
    }
    // From here on some drive may hold `next.generation`: never reuse it.
    this.floor_generation = Math.max(this.floor_generation, next.generation + 1);
    const payload = encodeState(next);
    const writes = new Map(writable.map((u) => [u, this.writeSlot(u, next.generation, payload)] as const));
    // Decided on the first answers that decide it: a paused target's drive does not hold every
    // commit for request_timeout_ms. The writes still unanswered then go on (stragglers); each
    // updates its drive's `seen` slot when it settles and nothing else: in particular a straggler
    // that fails after the commit succeeded does not ask for a retraction (the change is on a
    // majority of both lists; that drive is merely behind, and maintain() writes it back).
    //
    // Why a straggler landing late is safe (docs/toma.md, "Safety argument", point 7):
    // - its generation is below `floor_generation` (raised above), so this TOMA never writes
    //   another payload at that generation; the only other write at it is the write-back of the
    //   same committed state (same bytes), which maintain() does not send while this one runs
    //   (`writing`);
    // - the next commit may write a newer generation to the same drive while the straggler is
    //   still on its way. The target runs a drive's META_WRITEs one at a time and refuses one whose
    //   generation is not newer than the slot's (STALE; formatted-drive.ts metaWrite), so an older
    //   generation never lands after a newer one: it is refused. Its answer then never moves what
    //   `seen` knows of that slot backwards (writeSlot);
    // - a straggler of a refused commit is a partial write, as one whose answer timed out always
    //   was: `retract_needed` is set here, the retraction writes a newer generation, and no
    //   write-back runs before it succeeded.
    const { ok, acks, failed, pending } = await awaitQuorum(writes, [oldList, newList]);
    if (!ok) {
      this.retract_needed = true;
      // The list that can no longer reach a majority: too many of its drives failed (or were
      // not written) for the rest to make one.
      const failures = (list: string[]) => list.filter((u) => failed.has(u)).length;
      const lost = [oldList, newList].find((list) => list.length > 0 && list.length - failures(list) < majority(list.length));
      assert(lost !== undefined, "a commit refused with every drive list still able to make a majority");
      const n = lost.filter((u) => acks.has(u)).length;
      const down = failures(lost);
      this.env.log.warn("change not committed", { generation: next.generation, acks: n, failed: down, of: lost.length, unanswered: pending });
      return unavailable(
        `${down} of the cluster's ${lost.length} drives failed to acknowledge the change (${n} acknowledged); ${majority(lost.length)} needed; nothing changed`,
      );
    }
    this.state = next;
    this.retract_needed = false;
    this.env.log.info("committed", { generation: next.generation, acks: acks.size, unanswered: pending });
    // Requests from here on act on the new state: they carry its version.
    const version = this.version();
    for (const l of this.links) if (l.session) l.session.generation = version;
    return { ok: true, value: next };
  }

  /**
   * Writes a drive's metadata slot; true when the drive acknowledged. May settle after the step
   * that sent it (a commit's straggler): the answer then applies only while the drive is still
   * served where it was written, and never makes `seen` know an older generation than it did.
   */
  private writeSlot(uuid: string, generation: number, payload: Uint8Array): Promise<boolean> {
    this.writing.set(uuid, Math.max(generation, this.writing.get(uuid) ?? 0));
    const w = this.sendSlot(uuid, generation, payload).finally(() => {
      this.writes.delete(w);
      if (this.writing.get(uuid) === generation) this.writing.delete(uuid);
    });
    this.writes.add(w);
    return w;
  }

  private async sendSlot(uuid: string, generation: number, payload: Uint8Array): Promise<boolean> {
    const s = this.seen.get(uuid)!;
    const at = this.locate().get(uuid);
    const session = at?.link.session;
    if (!at || !session) return false;
    // Whether this answer is still news: the drive is where it was written, and nothing newer is
    // known of its slot (an older write answering after a newer one tells nothing).
    const current = () => {
      const known = knownGeneration(s.slot);
      return s.target === at.address && (known === null || known < generation);
    };
    try {
      await withTimeout(
        this.env,
        session.metaWrite(uuidFromString(uuid), generation, payload),
        this.timings.request_timeout_ms,
        `write metadata of drive ${uuid}`,
      );
      if (current()) s.slot = { kind: "written", generation };
      if (s.target === at.address) s.error = null;
      return true;
    } catch (e) {
      if (e instanceof TimeoutError) at.link.suspect(e.message, session);
      if (!current()) return false;
      s.error = `metadata write failed: ${(e as Error).message}`;
      // STALE: the drive holds something at least as new; read it again before trusting anything.
      if (e instanceof TargetError && e.status === Status.STALE) s.slot = { kind: "unread" };
      return false;
    }
  }

  private async readSlot(s: DriveSeen): Promise<void> {
    const at = this.locate().get(s.info.drive_uuid);
    const session = at?.link.session;
    if (!at || !session) return;
    try {
      const slot = await withTimeout(
        this.env,
        session.metaRead(uuidFromString(s.info.drive_uuid)),
        this.timings.request_timeout_ms,
        `read metadata of drive ${s.info.drive_uuid}`,
      );
      s.error = null;
      if (slot.payload === null) {
        s.slot = slot.generation === 0 ? { kind: "empty" } : { kind: "corrupt", generation: slot.generation, error: "generation without payload" };
        return;
      }
      try {
        if (decodeRecord(slot.payload, { slot_generation: slot.generation, drive_uuid: s.info.drive_uuid }).kind === "record") {
          // Taken over by a TOMA cluster: never ours again (and never written over: corrupt to us).
          throw new Error("holds a TOMA cluster member's hard-state record: this cluster is run by 'nvmesh toma run --peers' now");
        }
        const state = decodeState(slot.payload);
        if (state.generation !== slot.generation) {
          throw new Error(`state generation ${state.generation} differs from slot generation ${slot.generation}`);
        }
        if (state.cluster_uuid !== s.info.cluster_uuid) {
          throw new Error(`state of cluster ${state.cluster_uuid} on a drive of cluster ${s.info.cluster_uuid}`);
        }
        s.slot = { kind: "valid", generation: slot.generation, state };
      } catch (e) {
        s.slot = { kind: "corrupt", generation: slot.generation, error: (e as Error).message };
        this.env.log.error("ignoring corrupt metadata slot", { drive: s.info.drive_uuid, error: (e as Error).message });
      }
    } catch (e) {
      s.error = `metadata read failed: ${(e as Error).message}`;
      if (e instanceof TimeoutError) at.link.suspect(e.message, session);
    }
  }

  /** One maintenance pass: track drives, recover, claim, add, write back, retract. */
  private async reconcile(): Promise<void> {
    const loc = this.locate();
    for (const [uuid, at] of loc) {
      const s = this.seen.get(uuid);
      if (!s) this.seen.set(uuid, { info: at.info, target: at.address, slot: { kind: "unread" }, error: null });
      else {
        // Reappeared, or moved to another target: its slot is re-read, never assumed.
        if (s.target !== at.address) s.slot = { kind: "unread" };
        s.target = at.address;
        s.info = at.info;
      }
    }
    for (const [uuid, s] of this.seen) if (!loc.has(uuid)) s.target = null;

    const toRead = [...this.seen.values()].filter(
      (s) => s.target !== null && s.slot.kind === "unread" && s.info.state === "ok" && s.info.cluster_uuid !== NIL_UUID,
    );
    await Promise.all(toRead.map((s) => this.readSlot(s)));

    if (!this.cluster_uuid) this.chooseCluster();
    if (!this.cluster_uuid || this.deposed !== null) return;
    if (!this.ready && !this.adopted) this.recover();
    if (!this.ready && this.adopted) {
      if (!(await this.takeTerm())) {
        // Read every slot again before the next try: the partial write changed what they hold.
        this.adopted = false;
        for (const s of this.seen.values()) if (s.info.cluster_uuid === this.cluster_uuid) s.slot = { kind: "unread" };
        return;
      }
      this.adopted = false;
      this.ready = true;
      const version = this.version();
      for (const l of this.links) if (l.session) l.session.generation = version;
    }
    if (this.ready) await this.maintain();
    if (this.ready) {
      const loc = this.locate();
      await this.mirror.tick((d) => loc.get(d)?.info.state === "ok" && this.topology().usable.has(d));
    }
  }

  private chooseCluster(): void {
    const clusters = new Set<string>();
    for (const s of this.seen.values()) if (s.info.cluster_uuid !== NIL_UUID) clusters.add(s.info.cluster_uuid);
    if (clusters.size === 1) {
      this.cluster_uuid = [...clusters][0]!;
      this.env.log.info("managing cluster found on the drives", { cluster: this.cluster_uuid });
    } else if (clusters.size > 1) {
      const list = [...clusters].sort().join(", ");
      if (list !== this.warned_clusters) {
        this.warned_clusters = list;
        this.env.log.error("drives of several clusters found; pass the cluster uuid to choose", { clusters: list });
      }
    } else if (this.links.every((l) => l.ever_up)) {
      // Every configured target answered and no drive belongs to any cluster: a new cluster.
      this.cluster_uuid = uuidToString(randomUuid(this.env));
      this.state = emptyState(this.cluster_uuid);
      this.adopted = true;
      this.env.log.info("created a new cluster", { cluster: this.cluster_uuid });
    }
  }

  private recover(): void {
    const best = this.candidate();
    if (!best) {
      // Drives of our cluster exist but none holds a state (crash between claim and first commit).
      const ours = [...this.seen.values()].filter((s) => s.info.cluster_uuid === this.cluster_uuid);
      const allEmpty = ours.every((s) => s.slot.kind === "empty");
      if (ours.length > 0 && allEmpty && this.links.every((l) => l.ever_up)) {
        this.state = emptyState(this.cluster_uuid!);
        this.adopted = true;
        this.env.log.warn("cluster drives hold no state yet; starting from an empty state", { cluster: this.cluster_uuid });
      }
      return;
    }
    const list = best.state.drives.map((d) => d.drive_uuid);
    const n = list.filter((u) => this.isHeard(u)).length;
    if (n < majority(list.length)) return;
    this.state = best.state;
    this.adopted = true;
    for (const s of this.seen.values()) {
      const g = knownGeneration(s.slot);
      if (g !== null) this.floor_generation = Math.max(this.floor_generation, g + 1);
    }
    this.env.log.info("recovered cluster state", { generation: best.generation, heard: n, of: list.length });
  }

  private async maintain(): Promise<void> {
    const state = this.state!;
    const mine = [...this.seen.values()].filter((s) => s.info.cluster_uuid === this.cluster_uuid);
    const ourBytes = encodeState(state);
    for (const s of mine) {
      if (s.slot.kind !== "valid") continue;
      if (s.slot.generation > state.generation) {
        // Someone else committed past us (a second TOMA?): stop mutating and recover again.
        this.env.log.error("drive holds a newer state than ours; recovering again", {
          drive: s.info.drive_uuid,
          generation: s.slot.generation,
          ours: state.generation,
        });
        this.ready = false;
        this.adopted = false;
        for (const x of mine) x.slot = { kind: "unread" };
        return;
      }
      // Same generation, different content: an uncommitted leftover; supersede it.
      if (s.slot.generation === state.generation && !bytesEqual(encodeState(s.slot.state), ourBytes)) {
        this.retract_needed = true;
      }
    }

    await this.claimUnclaimed();
    // Drives claimed just now are members too: add them in this same pass, not a second later.
    const members = [...this.seen.values()].filter((s) => s.info.cluster_uuid === this.cluster_uuid);
    for (const s of members) {
      // Computed from the state as it is now: each drive added moves it on.
      const now = this.state!;
      const known = now.drives.some((d) => d.drive_uuid === s.info.drive_uuid);
      if (known || s.target === null || s.info.state !== "ok" || !heard(s.slot)) continue;
      const r = await this.propose({
        kind: "add_drive",
        drive: {
          drive_uuid: s.info.drive_uuid,
          extent_size_bytes: s.info.extent_size_bytes,
          extent_count: s.info.extent_count,
          cache_epoch: s.info.cache_epoch,
        },
      }, now.generation);
      if (r.ok) this.env.log.info("drive added", { drive: s.info.drive_uuid, target: s.target });
      else return;
    }

    if (this.retract_needed) {
      const r = await this.commit({ ...this.state!, generation: Math.max(this.state!.generation + 1, this.floor_generation) });
      if (!r.ok) return;
    }

    // Bring every reachable member drive that is behind up to the current state.
    const cur = this.state!;
    const payload = encodeState(cur);
    const behind = cur.drives
      .map((d) => this.seen.get(d.drive_uuid))
      .filter((s): s is DriveSeen => {
        if (!s || s.target === null) return false;
        const g = knownGeneration(s.slot);
        // A write of this state (or a newer one) still on its way: its answer updates the slot.
        return g !== null && g < cur.generation && (this.writing.get(s.info.drive_uuid) ?? 0) < cur.generation;
      });
    // Not waited for, as a commit's stragglers are not: a drive whose target was paused just now
    // would hold every step queued behind this pass for request_timeout_ms. Each answer updates
    // the drive's slot when it comes; a failed one is tried again by a later pass.
    for (const s of behind) void this.writeSlot(s.info.drive_uuid, cur.generation, payload);
    this.settled = true;
  }

  private async claimUnclaimed(): Promise<void> {
    const loc = this.locate();
    for (const [uuid, at] of loc) {
      if (at.info.state !== "ok" || at.info.cluster_uuid !== NIL_UUID || !at.link.session) continue;
      const s = this.seen.get(uuid)!;
      try {
        await withTimeout(
          this.env,
          at.link.session.claim(uuidFromString(uuid), this.cluster_uuid!),
          this.timings.request_timeout_ms,
          `claim drive ${uuid}`,
        );
        s.info = { ...at.info, cluster_uuid: this.cluster_uuid! };
        at.link.patchDrive(s.info);
        s.slot = { kind: "unread" };
        s.error = null;
        this.env.log.info("claimed drive", { drive: uuid, target: at.address });
        await this.readSlot(s);
      } catch (e) {
        s.error = `claim failed: ${(e as Error).message}`;
      }
    }
  }
}

function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}
