/**
 * The TOMA's side of mirrored volumes: clients and their switch rounds, fences on the drives, one
 * topology step at a time, rebuilds and stale-lock recovery. Toma calls `tick()` on every
 * maintenance pass (and whenever a client reports something); everything it changes in the
 * cluster state goes through `propose`, one command per step.
 *
 * The rule that keeps topologies adjacent: a step is computed only when the stable generation
 * (every client switched, or fenced out) has reached the last topology change of every volume.
 */
import type { Env } from "../engine/env.ts";
import { uuidFromString } from "../engine/uuid.ts";
import { Status } from "../engine/wire/header.ts";
import { TargetError, type TargetSession } from "../engine/wire/session-api.ts";
import type { ClusterState, Command, VolumeRecord } from "./cluster-state.ts";
import { type ClientRecord, ClientRegistry, type ClientTimings, DEFAULT_CLIENT_TIMINGS, randomClientId } from "./clients.ts";
import { extentByteRuns, FenceSync, stateFenceTable } from "./fencing.ts";
import { plantedBugs } from "../engine/planted-bugs.ts";
import { RangeClaims } from "./range-claims.ts";
import { copyLeg, type HeldLock, LegUnavailable, type RebuildProgress, recoverSetLocks, type StaleLock } from "./rebuild.ts";
import { isMirrored, nextLegs, setColumns } from "./topology.ts";

export interface MirrorTimings extends ClientTimings {
  /** A leg a client reported failing stays out this long before it is tried again. */
  leg_retry_ms: number;
  /** Pause between rebuilt regions (throttle). */
  rebuild_pause_ms: number;
}

/** A released extent run is zeroed by WRITE_ZEROES requests of at most this many bytes. */
const ZERO_CHUNK_BYTES = 1 << 30;

export const DEFAULT_MIRROR_TIMINGS: MirrorTimings = {
  ...DEFAULT_CLIENT_TIMINGS,
  leg_retry_ms: 5000,
  rebuild_pause_ms: 2,
};

export interface MirrorDeps {
  env: Env;
  state: () => ClusterState | null;
  /**
   * Commits a command computed from the state of generation `computed_at`; refused, changing
   * nothing, when the state has moved on since (consensus/proposal.ts).
   */
  propose: (cmd: Command, computed_at: number) => Promise<{ ok: boolean; error?: string; stale?: boolean }>;
  sessionOf: (drive_uuid: string) => TargetSession | null;
  /**
   * The control-plane version of the state this TOMA acts on (0 while it has none): stamped on
   * every request to a target, which refuses an older one (docs/toma-cluster.md, "Fenced at the drives").
   */
  version: () => number;
  /** A target refused a request as older than `newest`, the version it has seen: another TOMA acts. */
  deposed: (newest: number) => void;
  regionBytes: (drive_uuid: string) => number;
  /** DriveInfo.cache_epoch of the drive where it is served now (undefined: not served). */
  cacheEpochOf: (drive_uuid: string) => number | undefined;
  /** Allocates a blank leg for a dead column of vol (another drive, another server if possible). */
  replacement: (vol: VolumeRecord, column: number) => { drive_uuid: string; extents: number[] } | null;
  /**
   * A TOMA cluster: the clients are part of the replicated state (cluster-state.ts `clients`),
   * and each one's secret is `secretOf(id)` (derived from the server key; null: --insecure).
   * Absent for the single TOMA, which keeps its clients in memory only.
   */
  replicated_clients?: { secretOf: ((id: number) => Uint8Array) | null };
  /** A TOMA cluster: who keeps each drive's fence table (fencing.ts FenceDeps.keeper). */
  fenceKeeper?: (drive_uuid: string, table_key: string) => "confirmed" | "owner" | "self";
  /**
   * A TOMA cluster: the copy of a syncing leg may be handed to the TOMA serving its drive
   * (cluster/rebuild-orders.ts). Absent for the single TOMA, which copies every leg itself.
   */
  delegate?: RebuildDelegate;
}

/** How a rebuild handed to another TOMA ended. */
export type RebuildOutcome = { ok: true; from_epoch: number | null } | { ok: false; error: string; report: boolean };

/** Rebuild copies run elsewhere than in this control (cluster/rebuild-orders.ts). */
export interface RebuildDelegate {
  /**
   * Hands the copy of `column` from `source` to the TOMA serving the column's drive; false: this
   * control copies it. `progress` is updated in place; `onEnd` is called once (`report`: the leg
   * is to be reported failing).
   */
  hand(vol: VolumeRecord, column: number, source: number, clear_bits: boolean, progress: RebuildProgress, onEnd: (out: RebuildOutcome) => void): boolean;
  /** Each pass: orders whose TOMA went silent are taken back. */
  check(): void;
  /** Lock owners of copies handed out whose requests a drive may still admit: never stale. */
  owners(): ReadonlySet<number>;
  /** Whether a copy handed out may still write in the volume's extents. */
  busyOn(volume_uuid: string): boolean;
}

/** How many times a client command refused as computed from a stale view is computed again. */
const CLIENT_COMMAND_TRIES = 8;

interface Job {
  progress: RebuildProgress;
  generation: number;
  done: boolean;
  running: boolean;
  /** The column copied from, and its drive's cache epoch, when it was the same at start and end. */
  from: { column: number; epoch: number } | null;
}

export class MirrorControl {
  readonly clients: ClientRegistry;
  readonly fences: FenceSync;
  readonly timings: MirrorTimings;
  /** "volume/column" → local time until which the leg is kept out. */
  private readonly failedUntil = new Map<string, number>();
  private readonly evicted = new Set<string>();
  /** "volume/column" → the rebuild of a syncing leg (for its topology generation). */
  private readonly jobs = new Map<string, Job>();
  private recovering = false;
  private checkingLocks = false;
  /** Legs "volume/column" reported failing by the cache-epoch check, until it settles their drive. */
  private readonly cacheSuspects = new Set<string>();
  private last_stable = -1;
  /** The TOMA's own lock owner id. */
  readonly owner_id: number;
  /** Ranges our copies are locking, or our stale locks being freed (range-claims.ts). */
  private readonly claims = new RangeClaims();

  private readonly deps: MirrorDeps;

  constructor(deps: MirrorDeps, timings: Partial<MirrorTimings> = {}) {
    this.timings = { ...DEFAULT_MIRROR_TIMINGS, ...timings };
    const rc = deps.replicated_clients;
    this.clients = new ClientRegistry(deps.env, this.timings, rc ? { replicated: true, ...(rc.secretOf ? { secretOf: rc.secretOf } : {}) } : {});
    // The TOMA locks like a client but is not one that must switch: it acts only while stable.
    this.owner_id = randomClientId(deps.env);
    // Every session it uses carries that id, so its own locks are known as its own (a rebuild's
    // lock mistaken for a stale one was freed under the rebuild: simulator seed 12 with --mirror).
    const sessionOf = deps.sessionOf;
    this.deps = {
      ...deps,
      sessionOf: (d) => {
        const s = sessionOf(d);
        if (s) {
          s.client_id = this.owner_id;
          s.generation = deps.version();
        }
        return s;
      },
    };
    this.fences = new FenceSync({
      clients: this.clients,
      // A TOMA cluster: the table every TOMA derives from the applied state (the leader's pushes
      // and each member's own, cluster/local-fences.ts, must never differ at one version).
      ...(rc ? { table: (d: string) => {
        const st = this.deps.state();
        return st ? stateFenceTable(st, d) : null;
      } } : {}),
      ...(deps.fenceKeeper ? { keeper: deps.fenceKeeper } : {}),
      volumes: () => this.deps.state()?.volumes ?? [],
      leftOut: (uuid) => this.deleting.has(uuid),
      retired: () => this.deps.state()?.retired ?? [],
      sessionOf: this.deps.sessionOf,
      push: (s, d, table) => s.fence(uuidFromString(d), { replace: true, volumes: table.volumes, set: table.set, remove: [] }),
      onError: (d, e) => {
        deps.env.log.warn("cannot update the fence of a drive", { drive: d, error: String(e) });
        if (e instanceof TargetError && e.status === Status.STALE && e.version !== null) deps.deposed(e.version);
      },
    });
  }

  /**
   * Volumes being deleted (uuids): left out of every fence table, and refused to attaching
   * clients, from before their extents are checked until the delete is committed or refused.
   */
  private readonly deleting = new Set<string>();
  /** Per volume uuid, copies and lock recoveries of ours running on its extents. */
  private readonly working = new Map<string, number>();

  isDeleting(volume_uuid: string): boolean {
    return this.deleting.has(volume_uuid);
  }

  /** The live clients that have the volume attached. */
  attachedBy(volume_uuid: string): ClientRecord[] {
    return this.clients.all().filter((c) => !c.expired && c.volumes.has(volume_uuid));
  }

  /**
   * Takes a volume out of every drive's fence table ahead of its deletion (`force`: out of its
   * clients' records first, so they are fenced out of it and their daemons tear its exports
   * down), and answers the drives where its extents may be freed at once: those that confirmed a
   * table without it, hold no lock in its extents any more, and with no work of ours running on
   * it. Its extents on the other drives are retired (cluster-state.ts) until those confirm too.
   * Call `done` once the delete is committed or refused.
   */
  async fenceOut(vol: VolumeRecord, force: boolean): Promise<{ released: string[]; done: () => void }> {
    this.deleting.add(vol.uuid);
    const done = () => this.deleting.delete(vol.uuid);
    try {
      for (const c of force ? this.attachedBy(vol.uuid) : []) {
        c.volumes.delete(vol.uuid);
        this.deps.env.log.warn("volume deleted with --force: fencing its client out of it", { volume: vol.name, client: c.id, name: c.name });
      }
      this.clients.notify();
      // A TOMA cluster's tables are the committed state's: the volume leaves them with its
      // delete, every extent of it retired and released once its drive confirmed such a table.
      if (this.deps.replicated_clients) return { released: [], done };
      this.fences.forget();
      await this.fences.sync();
      const released: string[] = [];
      for (const c of vol.columns) {
        if (await this.releasable(vol.uuid, c.drive_uuid, c.extents, vol.extent_size_bytes)) released.push(c.drive_uuid);
      }
      return { released, done };
    } catch (e) {
      done();
      throw e;
    }
  }

  /**
   * Whether a volume's extents on a drive may belong to another volume now, making them ready:
   * the drive confirmed a table without the volume (so the FENCE barrier drained its clients'
   * requests there and admits none any more), no copy or lock recovery of ours runs on the volume
   * (none may start: workOn), the extents are zeroed (a new owner never reads the old one's
   * data), and the locks held in them (its clients', or ours left by a lost UNLOCK) are freed, so
   * that a new owner's writers never wait for them.
   */
  private async releasable(volume_uuid: string, drive_uuid: string, extents: number[], extent_bytes: number): Promise<boolean> {
    if (!this.fences.inSync(drive_uuid) || (this.working.get(volume_uuid) ?? 0) > 0 || this.deps.delegate?.busyOn(volume_uuid)) return false;
    const s = this.deps.sessionOf(drive_uuid);
    if (!s) return false;
    const runs = extentByteRuns(extents, extent_bytes);
    if (runs.some(([a, b]) => this.claims.claimed(drive_uuid, a, b - a))) return false;
    try {
      const id = uuidFromString(drive_uuid);
      await zeroRuns(s, id, runs);
      for (const l of await s.lockList(id)) {
        for (const [a, b] of runs) {
          const from = Math.max(a, l.offset);
          const to = Math.min(b, l.offset + l.length);
          if (from < to) await s.unlockFor(id, from, to - from, l.client_id);
        }
      }
    } catch (e) {
      this.deps.env.log.warn("cannot zero a volume's released extents or free their locks", { drive: drive_uuid, volume: volume_uuid, error: String(e) });
      return false;
    }
    return this.fences.inSync(drive_uuid);
  }

  /** Frees the retired extents whose drive confirmed a table without their volume (one pass). */
  private async releaseRetired(state: ClusterState): Promise<void> {
    for (const r of state.retired) {
      const d = state.drives.find((x) => x.drive_uuid === r.drive_uuid);
      if (!d || !(await this.releasable(r.volume_uuid, r.drive_uuid, r.extents, d.extent_size_bytes))) continue;
      const now = this.deps.state(); // the pass awaited the drive: the state may have moved on
      if (now === null) return;
      const out = await this.deps.propose({ kind: "release_extents", volume_uuid: r.volume_uuid, drive_uuid: r.drive_uuid }, now.generation);
      if (out.ok) this.deps.env.log.info("retired extents released", { volume: r.volume_uuid, drive: r.drive_uuid, extents: r.extents.length });
    }
  }

  /** A deleted volume's leg records go with it: a new volume may take its name. */
  forgetVolume(name: string): void {
    for (const m of [this.failedUntil, this.jobs]) for (const k of [...m.keys()]) if (k.startsWith(`${name}/`)) m.delete(k);
    for (const k of [...this.cacheSuspects]) if (k.startsWith(`${name}/`)) this.cacheSuspects.delete(k);
  }

  /**
   * Runs a copy or lock recovery of ours on a volume's extents, counted for `releasable`. None
   * starts for a volume being deleted or gone: its extents may be zeroed and handed to another.
   */
  private async workOn<T>(volume_uuid: string, fn: () => Promise<T>): Promise<T> {
    if (this.deleting.has(volume_uuid) || !this.deps.state()?.volumes.some((x) => x.uuid === volume_uuid)) {
      throw new LegUnavailable(`volume ${volume_uuid} is being deleted`);
    }
    this.working.set(volume_uuid, (this.working.get(volume_uuid) ?? 0) + 1);
    try {
      return await fn();
    } finally {
      const n = this.working.get(volume_uuid)! - 1;
      if (n === 0) this.working.delete(volume_uuid);
      else this.working.set(volume_uuid, n);
    }
  }

  stable(): number {
    const st = this.deps.state();
    return st ? this.clients.stable(st.generation) : 0;
  }

  /**
   * A new client daemon. In a TOMA cluster its registration is committed first, so that every
   * later leader knows it; a string says why it could not be.
   */
  async register(name: string): Promise<ClientRecord | string> {
    if (!this.deps.replicated_clients) return this.clients.register(name, this.deps.state()?.generation ?? 0);
    const id = this.clients.newId();
    const why = await this.clientCommand({ kind: "register_client", id, name });
    if (why !== null) return why;
    const st = this.deps.state();
    if (!st) return "no longer leading";
    const c = this.clients.add(id, name, [], st.generation);
    this.deps.env.log.info("client registered", { client: id, name });
    return c;
  }

  /**
   * Registers the client on the volume's drives (by volume uuid) before it may do any I/O there.
   * In a TOMA cluster the attachment is committed first: no fence admits a client for a volume
   * that a later leader would not know it holds. A string says why it could not be.
   */
  async attach(c: ClientRecord, volume_uuid: string): Promise<string | null> {
    if (this.deps.replicated_clients && !this.deps.state()?.clients.find((x) => x.id === c.id)?.volumes.includes(volume_uuid)) {
      const why = await this.clientCommand({ kind: "attach_client", id: c.id, volume_uuid });
      if (why !== null) return why;
    }
    c.volumes.add(volume_uuid);
    this.clients.heard(c);
    await this.fences.sync();
    return null;
  }

  /** Commits a client command (TOMA cluster), computed again while refused as stale; null when done. */
  private async clientCommand(cmd: Command): Promise<string | null> {
    let why = "not tried";
    for (let i = 0; i < CLIENT_COMMAND_TRIES; i++) {
      const st = this.deps.state();
      if (!st) return "no longer leading";
      const r = await this.deps.propose(cmd, st.generation);
      if (r.ok) return null;
      why = r.error ?? "refused";
      if (!r.stale) return why;
    }
    return why;
  }

  /** The restoring half of syncClients, run at once when a leader's control starts. */
  restoreClients(): void {
    const st = this.deps.state();
    if (!this.deps.replicated_clients || !st) return;
    for (const e of st.clients) {
      if (this.clients.get(e.id)) continue;
      const c = this.clients.add(e.id, e.name, e.volumes, st.stable);
      this.deps.env.log.info("client restored from the cluster state", { client: e.id, name: e.name, volumes: e.volumes.length, acked: st.stable, ...(e.expired ? { expired: true } : {}) });
      // Its expiry is committed: counted until every drive of its volumes confirmed a table without it.
      if (e.expired) this.clients.expire(c, expiryDrives(st, c), "client restored expired: fencing it out");
    }
  }

  /**
   * TOMA cluster: every client of the replicated state that this control does not know yet is
   * restored, heard now (a full client_timeout_ms from this term's start before it may expire),
   * acknowledged as far as the state's stable generation says; and every client gone (fenced
   * out everywhere) has its removal committed before it stops counting.
   */
  async syncClients(): Promise<void> {
    if (!this.deps.replicated_clients) return;
    this.restoreClients();
    for (const c of this.clients.all()) {
      // Expired here: committed before any table leaves it out (the tables are the state's).
      const entry = this.deps.state()?.clients.find((x) => x.id === c.id);
      if (c.expired && entry && !entry.expired) await this.clientCommand({ kind: "expire_client", id: c.id });
      if (!c.gone) continue;
      const listed = this.deps.state()?.clients.some((x) => x.id === c.id);
      if (listed && (await this.clientCommand({ kind: "remove_client", id: c.id })) !== null) continue;
      this.clients.drop(c);
    }
  }

  reportFailure(vol: VolumeRecord, column: number, why: string): void {
    const key = `${vol.name}/${column}`;
    if (!this.failedUntil.has(key)) this.deps.env.log.warn("leg reported failing", { volume: vol.name, column, why });
    this.failedUntil.set(key, this.deps.env.clock.now_ms() + this.timings.leg_retry_ms);
  }

  evict(drive_uuid: string): void {
    this.evicted.add(drive_uuid);
  }

  progress(vol: VolumeRecord, column: number): RebuildProgress | null {
    return this.jobs.get(`${vol.name}/${column}`)?.progress ?? null;
  }

  /** One pass: expire, fence, recover locks, and at most one topology step. */
  async tick(reachable: (drive_uuid: string) => boolean): Promise<void> {
    await this.syncClients();
    const state = this.deps.state();
    if (!state) return;
    // A client whose volumes were all deleted may still be registered on their drives: with no
    // volume left to name them, every drive must confirm a table without it (else it would hold
    // the stable generation back forever, and with it every mirror write of the cluster).
    this.clients.expireSilent((c) => expiryDrives(state, c));
    this.fences.forget();
    await this.fences.sync();
    await this.releaseRetired(state);
    const stable = this.stable();
    const last = Math.max(0, ...state.volumes.map((v) => v.topology_seq));
    if (stable < last) this.deps.env.log.debug("switch round waits", { stable, last_change: last, acks: this.clients.all().filter((c) => c.volumes.size > 0).map((c) => `${c.id}:${c.acked}${c.expired ? "x" : ""}${c.gone ? "g" : ""}`).join(",") });
    if (stable !== this.last_stable) {
      this.last_stable = stable;
      this.clients.notify();
    }
    this.deps.delegate?.check();
    void this.recoverStaleLocks(state);
    void this.checkLostLocks(state);
    if (await this.checkCacheEpochs(state)) return;
    const last_change = Math.max(0, ...state.volumes.map((v) => v.topology_seq));
    if (stable < last_change && !plantedBugs.non_adjacent_topologies) return;
    const now = this.deps.env.clock.now_ms();
    for (const vol of state.volumes) {
      if (!isMirrored(vol)) continue;
      const drive = (c: number) => vol.columns[c]!.drive_uuid;
      const legs = nextLegs(vol, {
        reachable: (c) => reachable(drive(c)) && !this.evicted.has(drive(c)),
        failed: (c) => (this.failedUntil.get(`${vol.name}/${c}`) ?? -Infinity) > now,
        copied: (c) => {
          const j = this.jobs.get(`${vol.name}/${c}`);
          return j !== undefined && j.done && j.generation === vol.topology_seq;
        },
      });
      if (legs) {
        const r = await this.deps.propose({ kind: "set_legs", uuid: vol.uuid, legs }, state.generation);
        if (r.ok) {
          this.deps.env.log.info("topology step", { volume: vol.name, legs: legs.join(",") });
          // Held watches answer now: a client waiting on a leg just declared dead resumes with
          // the new topology at once, not when its watch's hold ends (up to watch_hold_ms later).
          this.clients.notify();
        }
        return;
      }
      // A dead leg on an evicted drive is replaced by a blank one.
      for (let c = 0; c < vol.columns.length; c++) {
        if (vol.legs[c] !== "dead" || !this.evicted.has(drive(c))) continue;
        const w = this.deps.replacement(vol, c);
        if (!w) continue;
        const r = await this.deps.propose({ kind: "replace_leg", uuid: vol.uuid, column: c, with: w }, state.generation);
        if (r.ok) this.deps.env.log.info("leg replaced by a blank one", { volume: vol.name, column: c, drive: w.drive_uuid });
        // The failure reported for the old drive is not the new one's: do not declare it dead.
        if (r.ok) this.failedUntil.delete(`${vol.name}/${c}`);
        return;
      }
      for (let c = 0; c < vol.columns.length; c++) {
        if (vol.legs[c] !== "syncing") continue;
        // The copy may start only once the new leg's drive confirmed, over our current session,
        // a fence table that refuses every request planned before the leg came back (every live
        // client's minimum is its acknowledgement, at least this syncing topology since it is
        // stable; expired clients are absent). A FENCE waits for what it refuses, so a request a
        // client gave up on while the leg was out (a paused target, a cut path) has landed by
        // now or never will: it cannot land over a region the copy already wrote.
        if (!this.fences.inSync(drive(c))) continue;
        // A TOMA cluster's tables take the committed stable generation as every client's
        // minimum: it must reach this topology first, which one command carries.
        if (this.deps.replicated_clients && state.stable < vol.topology_seq) {
          const r = await this.deps.propose({ kind: "note_stable" }, state.generation);
          if (r.ok) this.deps.env.log.info("stable generation committed before a rebuild", { volume: vol.name, column: c, stable: this.stable() });
          return;
        }
        this.startRebuild(vol, c);
      }
    }
  }

  /**
   * A drive whose cache epoch is not the one the cluster recorded may have lost writes it had
   * acknowledged. Its write-intent bits (target/dirty.ts) say where: a live leg with bits set on
   * it goes out and is rebuilt from the others, its own bits included (rebuild.ts), and is never
   * a rebuild's source meanwhile. Once no live leg on it is marked, the new epoch is recorded.
   * Returns whether it changed the cluster state (one command per pass).
   */
  private async checkCacheEpochs(state: ClusterState): Promise<boolean> {
    const legDrives = new Set(state.volumes.filter(isMirrored).flatMap((v) => v.columns.map((c) => c.drive_uuid)));
    for (const d of state.drives) {
      if (!legDrives.has(d.drive_uuid)) continue;
      const epoch = this.deps.cacheEpochOf(d.drive_uuid);
      if (epoch === undefined || epoch === d.cache_epoch) continue;
      const s = this.deps.sessionOf(d.drive_uuid);
      if (!s) continue;
      let settled = true;
      try {
        const id = uuidFromString(d.drive_uuid);
        for (const vol of state.volumes) {
          if (!isMirrored(vol)) continue;
          for (let c = 0; c < vol.columns.length; c++) {
            const { drive_uuid, extents } = vol.columns[c]!;
            if (drive_uuid !== d.drive_uuid || vol.legs[c] === "dead" || this.copiedFromSince(vol, c, epoch)) continue;
            const marked = await legRegions(vol, extents, (off, len) => s.dirtyGet(id, off, len));
            if (marked === 0) continue;
            settled = false;
            this.reportFailure(vol, c, `drive ${drive_uuid} lost its cache with ${marked} region(s) marked: writes may be missing there`);
            this.cacheSuspects.add(`${vol.name}/${c}`);
          }
        }
      } catch (e) {
        this.deps.env.log.warn("cannot read the write-intent bits of a drive that lost its cache", { drive: d.drive_uuid, error: String(e) });
        continue;
      }
      if (!settled) continue;
      const r = await this.deps.propose({ kind: "set_cache_epoch", drive_uuid: d.drive_uuid, cache_epoch: epoch }, state.generation);
      if (r.ok) {
        this.deps.env.log.info("drive cache epoch recorded", { drive: d.drive_uuid, cache_epoch: epoch });
        // Settled: what this check held against the drive's legs no longer holds. Left standing,
        // the report took the drive's leg out moments after its case was closed, and a client's
        // flush that was waiting for the *other* leg to go out lost its last complete leg
        // (simulator seed 355 with --mirror). A client that still finds the leg failing says so again.
        for (const vol of state.volumes) {
          vol.columns.forEach((col, c) => {
            const key = `${vol.name}/${c}`;
            if (col.drive_uuid === d.drive_uuid && this.cacheSuspects.delete(key)) this.failedUntil.delete(key);
          });
        }
      }
      return true;
    }
    return false;
  }

  /**
   * Whether every other leg of column c's set was rebuilt from c since its drive took cache epoch
   * `epoch`, and has been written with it ever since. Then nothing that c may have lost in that
   * cache loss is on any other leg either (the copies took c's marked regions as they were, with
   * LOSSY_COPY, so the loss was reported to the clients that had acknowledged writes there):
   * taking c out to copy it back from those legs would gain nothing. Worse, the copy back would
   * itself be lossy (its sources carry c's loss), failing the flush of a write every leg still
   * holds (simulator seed 180 with --mirror, when watches were woken on each commit).
   */
  private copiedFromSince(vol: VolumeRecord, c: number, epoch: number): boolean {
    const peers = setColumns(vol, Math.floor(c / vol.mirrors)).filter((x) => x !== c);
    return peers.every((x) => {
      const j = this.jobs.get(`${vol.name}/${x}`);
      if (!j?.done || j.from?.column !== c || j.from.epoch !== epoch) return false;
      // A leg rebuilt again gets a new job; one that went dead since has not been written with c.
      return vol.legs[x] === "ok" || vol.legs[x] === "synced" || (vol.legs[x] === "syncing" && j.generation === vol.topology_seq);
    });
  }

  /**
   * A drive served anew (its target restarted, or it was plugged in again) lost its lock table:
   * a client may have been half-way through a write under one of those locks, the other legs
   * written and this one not, and may never finish it (it died too). The lock's bit, set before
   * the LOCK was answered (target/dirty.ts markLocked) and inherited by the new serving, is what
   * is left of it. A live leg with inherited bits goes out and is rebuilt from the others, its own
   * bits included (rebuild.ts), which clears them (a syncing leg is being rebuilt so already); a
   * set's last ok leg stays (the others are then
   * dead or syncing, and copy its bits, or synced, and hold the lock themselves).
   */
  private async checkLostLocks(state: ClusterState): Promise<void> {
    // Not awaited by the pass: a target that never answers must not stall every other step.
    if (this.checkingLocks) return;
    this.checkingLocks = true;
    try {
      await this.findLostLocks(state);
    } finally {
      this.checkingLocks = false;
    }
  }

  private async findLostLocks(state: ClusterState): Promise<void> {
    for (const vol of state.volumes) {
      if (!isMirrored(vol)) continue;
      for (let c = 0; c < vol.columns.length; c++) {
        // A syncing leg's rebuild copies its own bits anyway (and clears them).
        if (vol.legs[c] === "dead" || vol.legs[c] === "syncing") continue;
        const others = setColumns(vol, Math.floor(c / vol.mirrors)).filter((x) => x !== c && vol.legs[x] === "ok");
        if (vol.legs[c] === "ok" && others.length === 0) continue;
        const { drive_uuid, extents } = vol.columns[c]!;
        const s = this.deps.sessionOf(drive_uuid);
        if (!s) continue;
        const id = uuidFromString(drive_uuid);
        let marked: number;
        try {
          marked = await legRegions(vol, extents, (off, len) => s.dirtyInherited(id, off, len));
        } catch {
          continue; // unreachable for now: asked again next pass
        }
        if (marked > 0) {
          this.reportFailure(vol, c, `drive ${drive_uuid} was served anew with ${marked} region(s) marked under locks it lost: copied again from the other legs`);
        }
      }
    }
  }

  private startRebuild(vol: VolumeRecord, column: number): void {
    const key = `${vol.name}/${column}`;
    let job = this.jobs.get(key);
    if (job && (job.running || (job.done && job.generation === vol.topology_seq))) return;
    const set = Math.floor(column / vol.mirrors);
    const legs = setColumns(vol, set);
    const source = legs.find((c) => vol.legs[c] === "ok")!;
    const sourceDrive = vol.columns[source]!.drive_uuid;
    const startEpoch = this.deps.cacheEpochOf(sourceDrive);
    job = { progress: { done_bytes: 0, total_bytes: 0 }, generation: vol.topology_seq, done: false, running: true, from: null };
    this.jobs.set(key, job);
    const clearBits = !legs.some((c) => vol.legs[c] === "dead");
    const j = job;
    const cancelled = () => {
      const now = this.deps.state()?.volumes.find((x) => x.name === vol.name);
      return !now || now.topology_seq !== j.generation;
    };
    if (!this.deleting.has(vol.uuid) && this.deps.delegate?.hand(vol, column, source, clearBits, j.progress, (out) => this.handedEnded(vol, column, source, j, cancelled, out))) return;
    this.deps.env.log.info("rebuild started", { volume: vol.name, column, source });
    this.workOn(vol.uuid, () => copyLeg(this.rebuildDeps(), vol, column, source, clearBits, job.progress, cancelled))
      .then(() => {
        if (cancelled()) return;
        j.done = true;
        const endEpoch = this.deps.cacheEpochOf(sourceDrive);
        if (startEpoch !== undefined && endEpoch === startEpoch) j.from = { column: source, epoch: startEpoch };
        this.deps.env.log.info("rebuild done", { volume: vol.name, column, bytes: j.progress.done_bytes });
      })
      .catch((e) => {
        this.deps.env.log.warn("rebuild interrupted; it resumes from the dirty bits", { volume: vol.name, column, error: String(e) });
        if (!(e instanceof LegUnavailable)) this.reportFailure(vol, column, String(e));
      })
      .finally(() => {
        j.running = false;
      });
  }

  /** A copy handed to another TOMA ended: as the end of one run here (startRebuild). */
  private handedEnded(vol: VolumeRecord, column: number, source: number, j: Job, cancelled: () => boolean, out: RebuildOutcome): void {
    j.running = false;
    if (cancelled()) return;
    if (out.ok) {
      j.done = true;
      if (out.from_epoch !== null) j.from = { column: source, epoch: out.from_epoch };
      return;
    }
    this.deps.env.log.warn("rebuild handed out ended unfinished; it resumes from the dirty bits", { volume: vol.name, column, error: out.error });
    if (out.report) this.reportFailure(vol, column, out.error);
  }

  private rebuildDeps() {
    return {
      env: this.deps.env,
      sessionOf: this.deps.sessionOf,
      regionBytes: this.deps.regionBytes,
      pause_ms: this.timings.rebuild_pause_ms,
      owner_id: this.owner_id,
      claims: this.claims,
      lossy: (d: string) => {
        const epoch = this.deps.cacheEpochOf(d);
        return epoch === undefined || epoch !== this.deps.state()?.drives.find((x) => x.drive_uuid === d)?.cache_epoch;
      },
    };
  }

  /**
   * A lock of ours outside any claim was left by a copy whose UNLOCK was lost. The next copy of
   * that range would free it, but there may be none (the leg was replaced, the volume deleted),
   * and meanwhile it holds every client's writes of the unit back. Freed under a claim, so no copy
   * of ours can be holding it legitimately at that moment. The copy left the range's dirty bits
   * set, so nothing needs copying here.
   */
  private async freeOwnStaleLocks(s: TargetSession, drive_uuid: string, ours: HeldLock[]): Promise<void> {
    for (const l of ours) {
      if (this.claims.claimed(drive_uuid, l.offset, l.length)) continue;
      const release = await this.claims.claim(drive_uuid, l.offset, l.length);
      try {
        await s.unlock(uuidFromString(drive_uuid), l.offset, l.length);
      } finally {
        release();
      }
      this.deps.env.log.info("a lock our own lost UNLOCK left was freed", { drive: drive_uuid, offset: l.offset, length: l.length });
    }
  }

  /**
   * A lock whose owner the drive's fence no longer admits is stale: its owner can no longer write
   * any leg once every writable leg of the set confirmed a fence without it. The legs of the unit
   * are made equal and the lock freed.
   */
  private async recoverStaleLocks(state: ClusterState): Promise<void> {
    if (this.recovering) return;
    this.recovering = true;
    try {
      for (const vol of state.volumes) {
        if (!isMirrored(vol)) continue;
        for (let set = 0; set < vol.stripe_width; set++) {
          const legs = setColumns(vol, set).filter((c) => vol.legs[c] !== "dead");
          const drives = legs.map((c) => vol.columns[c]!.drive_uuid);
          if (!drives.every((d) => this.fences.inSync(d))) continue;
          const stale: StaleLock[] = [];
          let listedAll = true;
          for (const d of drives) {
            const s = this.deps.sessionOf(d);
            if (!s) {
              listedAll = false;
              continue;
            }
            const listed = await s.lockList(uuidFromString(d));
            // Judged against the tables as they are *after* the listing: a client that attached
            // meanwhile holds live locks, and its I/O may be in flight right now.
            if (!drives.every((x) => this.fences.inSync(x))) {
              listedAll = false;
              break;
            }
            const table = this.fences.tableFor(d);
            if (!table) {
              listedAll = false;
              break;
            }
            const admitted = new Set(table.set.map((e) => e.client_id));
            await this.freeOwnStaleLocks(s, d, listed.filter((l) => l.client_id === this.owner_id));
            // A copy handed to another TOMA locks under its own id: never a dead client's (rebuild-orders.ts).
            const tomas = this.deps.delegate?.owners();
            for (const l of listed) if (!admitted.has(l.client_id) && l.client_id !== this.owner_id && !tomas?.has(l.client_id)) stale.push({ ...l, drive_uuid: d });
          }
          // A unit's dead locks are recovered together (recoverSetLocks): with a leg unlisted,
          // one of them could be freed while another is held, and a writer slip in between.
          if (!listedAll || stale.length === 0) continue;
          const n = await this.workOn(vol.uuid, () => recoverSetLocks(this.rebuildDeps(), vol, set, stale));
          if (n > 0) {
            this.deps.env.log.info("stale locks recovered", {
              volume: vol.name,
              set,
              units: n,
              locks: stale.length,
              owners: [...new Set(stale.map((l) => l.client_id))].join(","),
              at: stale.slice(0, 4).map((l) => `${l.drive_uuid}@${l.offset}`).join(",") + (stale.length > 4 ? ",…" : ""),
            });
          }
        }
      }
    } catch (e) {
      this.deps.env.log.warn("stale-lock recovery interrupted", { error: String(e) });
    } finally {
      this.recovering = false;
    }
  }
}

/**
 * The drives an expired client must be fenced out of: those of its volumes, or every drive when
 * none is left (with no volume to name it, every drive must confirm a table without it, else it
 * would hold the stable generation back forever, and with it every mirror write of the cluster).
 */
function expiryDrives(state: ClusterState, c: { volumes: Iterable<string> }): string[] {
  const drives = [...c.volumes].flatMap((v) => state.volumes.find((x) => x.uuid === v)?.columns.map((k) => k.drive_uuid) ?? []);
  return drives.length > 0 ? drives : state.drives.map((d) => d.drive_uuid);
}

/** How many bitmap regions `list` (DIRTY_GET or DIRTY_INHERITED of the leg's drive) names in a leg's extents. */
async function legRegions(vol: VolumeRecord, extents: number[], list: (offset: number, length: number) => Promise<number[]>): Promise<number> {
  const E = vol.extent_size_bytes;
  let n = 0;
  for (const x of extents) n += (await list(x * E, E)).length;
  return n;
}


/**
 * Zeroes byte ranges [from, to) of a drive's data area durably (WRITE_ZEROES with FUA), in
 * chunks: a new owner of those extents never reads the old one's data.
 */
export async function zeroRuns(s: TargetSession, drive: Uint8Array, runs: readonly (readonly [number, number])[]): Promise<void> {
  for (const [a, b] of runs) {
    for (let off = a; off < b; off += ZERO_CHUNK_BYTES) await s.writeZeroes(drive, off, Math.min(ZERO_CHUNK_BYTES, b - off), true);
  }
}
