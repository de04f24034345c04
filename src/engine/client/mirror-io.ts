/**
 * I/O of a mirrored volume (RAID1, RAID10) in whatever topology the TOMA gave us (DESIGN.md §3):
 *
 * - write: take the lock on the lock leg(s) — in Normal the one leg the lock unit interleaves to,
 *   otherwise every L leg in leg order, the last one by its own write (Flag.LOCK) — then write
 *   every other W leg in parallel (marking the region dirty on the R legs when a leg is DEAD);
 *   acknowledge once every leg answered; unlock. Overlapping writes of this client are serialised
 *   per lock unit here, UNLOCK included, so the target's lock is never asked twice by one owner.
 * - read: on the read leg (= the lock leg), testing the lock after the read; a LOCKED answer is
 *   read again shortly after.
 * - a leg that fails (unreachable, drive error) is reported to the TOMA, and the piece is planned
 *   again once a newer topology arrives; a REFUSED request (fenced) fetches the topology and retries.
 *   A leg we could not reach stays *suspect*, and is reported again every SUSPECT_REPORT_MS, until
 *   a session to its drive opens again: the TOMA keeps it out meanwhile, even when the TOMA itself
 *   still reaches it (a path cut one way from us).
 * - a request waiting on a leg that a newer topology takes out (DEAD, or another drive) is given up
 *   at once, the piece planned again on the new topology: a paused target or a cut path holds
 *   nothing of ours, and the switch to the topology without the leg is acknowledged without waiting
 *   for it. Its answer, if it ever comes, is ignored; its write, if it lands, lands on a leg no one
 *   reads, and before the leg is rebuilt the TOMA raises the fence there above the generation it was
 *   planned under (a FENCE waits for what it refuses), so it lands before the copy or not at all.
 *   A given-up request that takes a lock is unlocked like any other (`unlockLegs`, or owed): that
 *   UNLOCK also withdraws it if it still waits for the unit, at the target or in the session's
 *   queue (docs/protocol.md, UNLOCK), so it can never be granted after it and hold the unit for
 *   good, which our own next write of the unit would wait for.
 * - an I/O done under a topology newer than the stable generation completes only once that
 *   topology is stable: until every client has switched, someone may still read the old way.
 *
 * Every piece counts as in flight under the topology generation it was planned with, so the daemon
 * can acknowledge a switch once nothing older is in flight (`drained`). A trailing UNLOCK does not
 * count: it can only end a mutual exclusion late, never early, and its data is on every leg.
 */
import { DriveIoError } from "../drive/store.ts";
import { type Env, sleep, type TimerHandle } from "../env.ts";
import { lockLegsOf, readLeg } from "../layout/mirror-roles.ts";
import { type MirrorPiece, planMirror } from "../layout/planner.ts";
import type { AttachInfo, SetTopology } from "../layout/types.ts";
import { LOCK_UNIT_BYTES, Status } from "../wire/header.ts";
import { plantedBugs } from "../planted-bugs.ts";
import { SessionClosedError, TargetError, type TargetSession, type WriteOptions } from "../wire/session-api.ts";
import { LOST_WRITES } from "./cache-watch.ts";
import type { LegPlan, LegWriter } from "./leg-writer.ts";
import { MirrorWatch } from "./mirror-watch.ts";
import { NoRouteError, type TargetPool } from "./target-pool.ts";

export interface MirrorIoHooks {
  /** Fetches the volume's current topology from the TOMA (the slow path). */
  refresh: () => Promise<void>;
  /** Tells the TOMA a leg failed for us. */
  report: (column: number, error: string) => void;
  io_timeout_ms: number;
}

/** A leg could not do its part: the piece waits for a newer topology. */
class LegFailed extends Error {
  constructor(
    readonly column: number,
    message: string,
    /** False when the TOMA already took the leg out: nothing to report. */
    readonly report = true,
    /** The drive could not be reached (as opposed to failing a request): suspect it until reached. */
    readonly unreachable_drive: string | null = null,
  ) {
    super(message);
  }
}

class Refused extends Error {}

const LOCKED_RETRY_MS = 2;
/** How often a leg we cannot reach is reported again (the TOMA keeps a reported leg out 5 s). */
const SUSPECT_REPORT_MS = 2000;

/** A request waiting on one leg, given up if a newer topology takes the leg out. */
interface LegWait {
  column: number;
  drive_uuid: string;
  /** The cluster generation of the view it was planned under. */
  generation: number;
  reject: (e: Error) => void;
}

const DONE: Promise<void> = Promise.resolve();
function nothing(): void {}

/** Writes one leg of a piece with the options given (`locked`: under the piece's locks). */
type LegOp = (s: TargetSession, drive: Uint8Array, drive_offset: number, opts: WriteOptions, leg: number, locked: boolean) => Promise<number>;

export class MirrorIo {
  private info: AttachInfo;
  private readonly inflight = new Map<number, number>();
  private drainWaiters: (() => void)[] = [];
  private topoWaiters: (() => void)[] = [];
  private stableWaiters: (() => void)[] = [];
  /** Which legs acknowledged our unflushed writes, under which cache epochs. */
  private readonly watch = new MirrorWatch();
  /** Tail of the chain of this client's writes per lock unit ("set:unit"). */
  private readonly unitTail = new Map<number, Promise<void>>();
  /**
   * Lock units ("drive@offset") we may still hold: a LOCK whose answer, or an UNLOCK that, was
   * lost with its connection. Left held, our retry of the write would wait for our own lock for
   * ever (simulator seed 7 with --mirror), and so would every other writer of the unit and the
   * TOMA's rebuild (seed 121). Unlocked as soon as a session to the drive allows (`payLater`),
   * or before we next lock the unit, whichever comes first, always in the unit's turn of our
   * writes (`serialised`): nothing of ours holds it legitimately then, and the target serves a
   * new connection of ours only once the old one's requests are over.
   */
  private readonly owedUnlocks = new Set<string>();
  private flagsFor: Record<"dirty" | "intent" | "dirtyLock" | "intentLock", WriteOptions> & { generation: number } = {
    generation: -1,
    dirty: {},
    intent: {},
    dirtyLock: {},
    intentLock: {},
  };
  /** Requests waiting on a leg (see `guard`). */
  private readonly legWaits = new Set<LegWait>();
  /** Drives of legs we could not reach, and the column each serves: reported until reached again. */
  private readonly suspects = new Map<string, { column: number; timer: { cancel(): void } }>();
  closed = false;

  constructor(
    private readonly env: Env,
    private readonly pool: TargetPool,
    info: AttachInfo,
    private readonly hooks: MirrorIoHooks,
  ) {
    this.info = info;
  }

  /** Installs a newer view from the TOMA (topology and/or stable generation). */
  install(info: AttachInfo): void {
    if (info.generation < this.info.generation) return;
    const newTopology = info.topology_generation !== this.info.topology_generation;
    // A stable generation is a fact once reached (every client had switched; later ones start
    // above it): a lower one, from a new leader of a TOMA cluster that restored its clients
    // without their acknowledgements yet, is not news, and must not hold writes back again.
    this.info = info.stable_generation < this.info.stable_generation ? { ...info, stable_generation: this.info.stable_generation } : info;
    if (newTopology) this.abandonDroppedLegs();
    if (newTopology) this.wake("topo");
    this.wake("stable");
  }

  get topologyGeneration(): number {
    return this.info.topology_generation;
  }

  /** Resolves once no piece planned with a topology older than `generation` is in flight. */
  drained(generation: number): Promise<void> {
    if (![...this.inflight.entries()].some(([g, n]) => g < generation && n > 0)) return Promise.resolve();
    return new Promise((resolve) => {
      const check = () => {
        if (![...this.inflight.entries()].some(([g, n]) => g < generation && n > 0)) resolve();
        else this.drainWaiters.push(check);
      };
      this.drainWaiters.push(check);
    });
  }

  /**
   * `p`, unless a topology newer than the one it was planned under takes its leg out first: then
   * LegFailed at once, and `p`'s outcome is ignored (see the header: harmless when it lands).
   */
  private guard<T>(p: Promise<T>, column: number, drive_uuid: string, generation: number): Promise<T> {
    if (this.legOut(column, drive_uuid, generation)) {
      p.catch(() => {}); // its outcome is ignored, its failure too
      return Promise.reject(this.outOfTopology(column, drive_uuid));
    }
    return new Promise<T>((resolve, reject) => {
      const w: LegWait = { column, drive_uuid, generation, reject };
      this.legWaits.add(w);
      p.then(
        (v) => {
          if (this.legWaits.delete(w)) resolve(v);
        },
        (e) => {
          if (this.legWaits.delete(w)) reject(e);
        },
      );
    });
  }

  /** The current view, newer than the one of cluster generation `generation`, no longer uses this drive for this column. */
  private legOut(column: number, drive_uuid: string, generation: number): boolean {
    const info = this.info;
    if (info.generation <= generation) return false;
    const m = info.layout.mirrors;
    const role = info.topology[Math.floor(column / m)]?.legs[column % m];
    return role === "DEAD" || info.layout.columns[column]?.drive_uuid !== drive_uuid;
  }

  private outOfTopology(column: number, drive_uuid: string): LegFailed {
    return new LegFailed(column, `leg ${column} (drive ${drive_uuid}) was taken out of the topology while we waited on it`, false);
  }

  private abandonDroppedLegs(): void {
    for (const w of [...this.legWaits]) {
      if (!this.legOut(w.column, w.drive_uuid, w.generation)) continue;
      this.legWaits.delete(w);
      w.reject(this.outOfTopology(w.column, w.drive_uuid));
    }
  }

  /**
   * A leg we could not reach: reported now, and again every SUSPECT_REPORT_MS until a session to
   * its drive opens (or the leg is served by another drive, or the volume is detached).
   */
  private suspect(column: number, drive_uuid: string, why: string): void {
    this.hooks.report(column, why);
    if (this.suspects.has(drive_uuid)) return;
    const again = () => {
      const entry = this.suspects.get(drive_uuid);
      if (!entry) return;
      if (this.closed || this.info.layout.columns[column]?.drive_uuid !== drive_uuid) {
        this.suspects.delete(drive_uuid);
        return;
      }
      if (this.pool.cached(drive_uuid)) {
        this.suspects.delete(drive_uuid);
        this.env.log.info("leg reachable again", { column, drive: drive_uuid });
        return;
      }
      this.hooks.report(column, `leg ${column} (drive ${drive_uuid}) still unreachable`);
      // A session opening is what clears the suspicion (the pool keeps it for our I/O). Where
      // the drive is served is asked again first: no I/O of ours goes to a leg that is out, so
      // nothing else would tell us it moved to another server, and we would report it for ever.
      this.hooks
        .refresh()
        .catch(() => {})
        .then(() => this.pool.sessionFor(drive_uuid))
        .catch(() => {});
      entry.timer = this.env.timers.after(SUSPECT_REPORT_MS, again);
    };
    this.suspects.set(drive_uuid, { column, timer: this.env.timers.after(SUSPECT_REPORT_MS, again) });
    this.pool.sessionFor(drive_uuid).catch(() => {});
  }

  // ---- the operations ---------------------------------------------------------------------------

  async read(offset: number, dst: Uint8Array): Promise<void> {
    await this.pieces(offset, dst.length, (p, t, _g, planned) => this.readPiece(p, t, planned, dst));
  }

  async write(offset: number, src: Uint8Array, fua: boolean): Promise<void> {
    await this.watched(fua, (sink) =>
      this.pieces(offset, src.length, (p, t, g, planned) =>
        this.writeUnit(p, t, planned, (s, d, o, opts) => s.write(d, o, part(src, p), fua, opts), sink(g)),
      ),
    );
  }

  /** A write whose bytes are made per piece and leg when the piece is planned (the debug format). */
  async writeLegs(offset: number, length: number, fua: boolean, legs: LegWriter): Promise<void> {
    await this.watched(fua, (sink) =>
      this.pieces(offset, length, (p, t, generation, planned) => {
        const plan = legs.plan({ request_offset: p.request_offset, length: p.length, topology: t, generation });
        return this.writeUnit(p, t, planned, (s, d, o, opts, leg, locked) => s.write(d, o, plan.bytes(leg, locked), fua, opts), sink(generation), plan);
      }),
    );
  }

  async writeZeroes(offset: number, length: number, fua: boolean): Promise<void> {
    await this.watched(fua, (sink) =>
      this.pieces(offset, length, (p, t, g, planned) =>
        this.writeUnit(p, t, planned, (s, d, o, opts) => s.writeZeroes(d, o, p.length, fua, opts), sink(g)),
      ),
    );
  }

  async trim(offset: number, length: number): Promise<void> {
    await this.pieces(offset, length, (p, t, _g, planned) =>
      this.writeUnit(p, t, planned, (s, d, o, opts) => s.trim(d, o, p.length, opts), null),
    );
  }

  // ---- internals ---------------------------------------------------------------------------------

  /**
   * Write options: DIRTY while a leg is dead (the TOMA's bits for the rebuild), else INTENT (the
   * target's bits, in case its cache is lost); LOCK on the write that takes the lock leg's lock;
   * stamped with the generation the piece was planned under, so a target refuses it once that
   * plan is older than our fence there (see docs/mirroring.md, "Fencing on the targets"). Shared
   * per generation, not made per leg write.
   */
  private flags(t: SetTopology, planned: number, lock: boolean): WriteOptions {
    if (t.dirty && plantedBugs.skip_dirty_bit) return { generation: planned, lock };
    let f = this.flagsFor;
    if (f.generation !== planned) {
      const of = (o: WriteOptions) => ({ ...o, generation: planned });
      f = this.flagsFor = {
        generation: planned,
        dirty: of({ dirty: true }),
        intent: of({ intent: true }),
        dirtyLock: of({ dirty: true, lock: true }),
        intentLock: of({ intent: true, lock: true }),
      };
    }
    return t.dirty ? (lock ? f.dirtyLock : f.dirty) : lock ? f.intentLock : f.intent;
  }

  /**
   * Runs `fn` for each piece of the range, each planned (and re-planned after a failure) against
   * the topology current at that moment, then holds completion until that topology is stable.
   */
  private async pieces(
    offset: number,
    length: number,
    fn: (p: MirrorPiece, t: SetTopology, generation: number, planned: number) => Promise<void>,
  ): Promise<void> {
    // Pieces never cross a lock unit (64 KiB): far below the wire's frame limit.
    const planned = this.info;
    const all = planMirror(planned.layout, offset, length);
    const run = (p0: MirrorPiece) =>
      this.retrying((info) => {
        // Planned again after a change of view: the legs (even their drives) may have changed.
        let p = p0;
        if (info !== planned) {
          p = planMirror(info.layout, offset + p0.request_offset, p0.length)[0]!;
          p.request_offset = p0.request_offset;
        }
        return fn(p, info.topology[p.set]!, info.topology_generation, info.generation);
      });
    if (all.length === 1) return await run(all[0]!);
    await Promise.all(all.map(run));
  }

  /**
   * Runs `fn` against the view current at that moment, again against a newer one after a leg
   * failed or a request was refused, then holds completion until its topology is stable. The
   * io_timeout_ms bound runs from the first failure: a timer armed for every piece of every write
   * cost the busy path a timer each, for the rare one that fails.
   */
  private async retrying(fn: (info: AttachInfo) => Promise<void>): Promise<void> {
    let expired = false;
    let timer: TimerHandle | null = null;
    const arm = () => {
      timer ??= this.env.timers.after(this.hooks.io_timeout_ms, () => {
        expired = true;
        this.wake("topo");
      });
    };
    try {
      for (;;) {
        if (this.closed) throw new DriveIoError("volume detached", "ECLOSED");
        const info = this.info;
        const g = info.topology_generation;
        this.enter(g);
        try {
          await fn(info);
          this.leave(g);
          await this.stableAt(g);
          return;
        } catch (e) {
          this.leave(g);
          arm();
          if (e instanceof LegFailed) {
            if (e.unreachable_drive !== null) this.suspect(e.column, e.unreachable_drive, e.message);
            else if (e.report) this.hooks.report(e.column, e.message);
            if (expired && e.report) throw new DriveIoError(`mirror leg unreachable for ${this.hooks.io_timeout_ms} ms: ${e.message}`, "EIO");
            await Promise.race([this.newTopology(g), this.hooks.refresh().then(() => sleep(this.env, 50))]);
          } else if (e instanceof Refused) {
            if (expired) throw new DriveIoError(`fenced for ${this.hooks.io_timeout_ms} ms: ${e.message}`, "EIO");
            await this.hooks.refresh();
            await sleep(this.env, 20);
          } else throw e;
        }
      }
    } finally {
      (timer as TimerHandle | null)?.cancel();
    }
  }

  /**
   * FLUSH of every leg that is written (not DEAD), planned again on a newer topology like any
   * I/O. Fails with EIO when writes it covers may be gone from every leg that acknowledged them
   * (mirror-watch.ts); `reported` is called with that failure, before it is returned.
   */
  async flush(no: number, reported: () => void): Promise<void> {
    const mark = this.watch.mark(no);
    await this.retrying(async (info) => {
      const m = info.layout.mirrors;
      const legs: { column: number; drive_uuid: string }[] = [];
      info.topology.forEach((t, set) =>
        t.legs.forEach((role, i) => {
          if (role !== "DEAD") legs.push({ column: set * m + i, drive_uuid: info.layout.columns[set * m + i]!.drive_uuid });
        }),
      );
      const epochs = new Map<string, number>();
      const results = await Promise.allSettled(
        [...new Set(legs.map((l) => l.drive_uuid))].map(async (u) => {
          const column = legs.find((l) => l.drive_uuid === u)!.column;
          const s = await this.sessionOf(column, u, info.generation);
          try {
            const epoch = await this.guard(s.flush(this.pool.driveId(u)), column, u, info.generation);
            this.watch.seen(u, epoch);
            epochs.set(u, epoch);
          } catch (e) {
            throw this.classifyColumn(e, column);
          }
        }),
      );
      const bad = results.find((r) => r.status === "rejected");
      if (bad) throw (bad as PromiseRejectedResult).reason;
      // A leg that lost writes of ours goes out before the flush may succeed (it could serve
      // them stale), unless no complete leg of its set would be left: then they are lost.
      const stale = plantedBugs.ignore_cache_epoch ? [] : this.watch.staleDrives(mark, epochs);
      const staleLegs = legs.filter((l) => stale.includes(l.drive_uuid));
      if (staleLegs.some((l) => !hasCompletePeer(info, l.column))) {
        this.watch.lose(mark);
        reported();
        throw new DriveIoError(`flush: ${LOST_WRITES}`, "EIO");
      }
      const out = staleLegs;
      if (out.length > 0) {
        for (const l of out.slice(1)) this.hooks.report(l.column, `leg ${l.column} (drive ${l.drive_uuid}): ${LOST_WRITES}`);
        throw new LegFailed(out[0]!.column, `leg ${out[0]!.column} (drive ${out[0]!.drive_uuid}): ${LOST_WRITES}`);
      }
      if (this.watch.flushed(mark, epochs) && !plantedBugs.ignore_cache_epoch) {
        reported();
        throw new DriveIoError(`flush: ${LOST_WRITES}`, "EIO");
      }
    });
  }

  private async readPiece(p: MirrorPiece, t: SetTopology, planned: number, dst: Uint8Array): Promise<void> {
    const leg = readLeg(t, p.unit);
    const { drive_uuid, drive_offset } = p.legs[leg]!;
    const column = p.set * this.info.layout.mirrors + leg;
    const s = await this.session(p, leg, planned);
    for (;;) {
      try {
        await this.guard(s.readTestLock(this.pool.driveId(drive_uuid), drive_offset, part(dst, p)), column, drive_uuid, planned);
        return;
      } catch (e) {
        if (e instanceof TargetError && e.status === Status.LOCKED) {
          // Often our own lock, whose UNLOCK follows the write's acknowledgement: read again as
          // soon as the unit's writes of ours are over, or after the usual pause.
          const ours = this.unitTail.get(unitKey(p));
          await (ours ? Promise.race([ours, sleep(this.env, LOCKED_RETRY_MS)]) : sleep(this.env, LOCKED_RETRY_MS));
          continue;
        }
        throw this.classify(e, p, leg);
      }
    }
  }

  /**
   * One piece's write in the unit's turn of this client's writes (`serialised`). Resolves once
   * every leg it writes acknowledged; the UNLOCK goes on after that, off the path of the
   * acknowledgement, and the unit's next write of ours waits for it.
   */
  private writeUnit(
    p: MirrorPiece,
    t: SetTopology,
    planned: number,
    op: LegOp,
    acks: ((legs: [string, number][]) => void) | null,
    sabotage?: Pick<LegPlan, "skip_legs" | "skip_lock">,
  ): Promise<void> {
    return this.serialised(p, (after) => this.writePiece(p, t, planned, op, acks, after, sabotage));
  }

  /**
   * Lock, write, unlock. The lock legs are locked in leg order; the last one's LOCK rides on its
   * write (WriteOptions.lock: the target takes the lock, then writes), and the other legs are
   * written in parallel once that answered, so every leg is written under every lock, as with a
   * separate LOCK, for one request less per leg set.
   */
  private async writePiece(
    p: MirrorPiece,
    t: SetTopology,
    planned: number,
    op: LegOp,
    /** Where the piece's acknowledgements go (see `watched`); null when none is needed. */
    acks: ((legs: [string, number][]) => void) | null,
    /** Given the unlocking once the piece is done, which the unit's next write waits for. */
    after: (unlocked: Promise<void>) => void,
    sabotage?: Pick<LegPlan, "skip_legs" | "skip_lock">,
  ): Promise<void> {
    const lockLegs = sabotage?.skip_lock || plantedBugs.skip_lock ? [] : lockLegsOf(t, p.unit);
    const written = t.legs.flatMap((role, leg) => (role === "DEAD" || ((sabotage?.skip_legs ?? 0) & (1 << leg)) !== 0 ? [] : [leg]));
    const last = lockLegs.at(-1);
    const lockWrite = last !== undefined && written.includes(last) ? last : null;
    const underLock = lockLegs.length > 0;
    const locked: number[] = [];
    const legAcks: [string, number][] = [];
    const column = (leg: number) => p.set * this.info.layout.mirrors + leg;
    const writeLeg = async (leg: number, lock: boolean) => {
      const s = this.pool.cached(p.legs[leg]!.drive_uuid) ?? (await this.session(p, leg, planned));
      const { drive_uuid, drive_offset } = p.legs[leg]!;
      const drive = this.pool.driveId(drive_uuid);
      try {
        if (lock) {
          const paid = this.lockLeg(s, p, leg, locked);
          if (paid !== null) await this.guard(paid, column(leg), drive_uuid, planned);
        }
        const epoch = await this.guard(op(s, drive, drive_offset, this.flags(t, planned, lock), leg, underLock), column(leg), drive_uuid, planned);
        this.watch.seen(drive_uuid, epoch);
        legAcks.push([drive_uuid, epoch]);
      } catch (e) {
        throw this.classify(e, p, leg);
      }
    };
    try {
      for (const leg of lockLegs) {
        if (leg === lockWrite) break;
        const s = await this.session(p, leg, planned);
        try {
          const { drive_uuid, drive_offset } = p.legs[leg]!;
          const paid = this.lockLeg(s, p, leg, locked);
          if (paid !== null) await this.guard(paid, column(leg), drive_uuid, planned);
          await this.guard(s.lock(this.pool.driveId(drive_uuid), drive_offset, p.length), column(leg), drive_uuid, planned);
        } catch (e) {
          throw this.classify(e, p, leg);
        }
      }
      if (lockWrite !== null) await writeLeg(lockWrite, true);
      const results = await Promise.allSettled(written.filter((leg) => leg !== lockWrite).map((leg) => writeLeg(leg, false)));
      const bad = results.find((r) => r.status === "rejected");
      if (bad) throw (bad as PromiseRejectedResult).reason;
      acks?.(legAcks);
    } finally {
      // Unlocked whatever happened: a retry of this piece must not wait on our own lock.
      after(this.unlockLegs(p, locked, planned));
    }
  }

  /**
   * Before a leg's lock is asked for (by LOCK or by a write that carries it): counts the leg as
   * locked before the answer — a lock whose answer was lost with its connection may be held, and
   * UNLOCK of units we do not hold is harmless — and pays an unlock we owe for its unit (the
   * promise to await then; null, the common case, when nothing is owed).
   */
  private lockLeg(s: TargetSession, p: MirrorPiece, leg: number, locked: number[]): Promise<void> | null {
    locked.push(leg);
    if (this.owedUnlocks.size === 0) return null;
    const { drive_uuid, drive_offset } = p.legs[leg]!;
    const unit = drive_offset - (drive_offset % LOCK_UNIT_BYTES);
    if (this.owedUnlocks.delete(`${drive_uuid}@${unit}`)) return s.unlock(this.pool.driveId(drive_uuid), unit, LOCK_UNIT_BYTES);
    return null;
  }

  /** UNLOCK of the piece's locked legs; one that fails is owed (`owe`). Never rejects. */
  private unlockLegs(p: MirrorPiece, locked: number[], planned: number): Promise<void> {
    if (locked.length === 0) return DONE;
    if (locked.length === 1) return this.unlockLeg(p, locked[0]!, planned);
    return Promise.all(locked.map((leg) => this.unlockLeg(p, leg, planned))).then(nothing);
  }

  private unlockLeg(p: MirrorPiece, leg: number, planned: number): Promise<void> {
    const { drive_uuid, drive_offset } = p.legs[leg]!;
    const owe = () => this.owe(unitKey(p), drive_uuid, drive_offset - (drive_offset % LOCK_UNIT_BYTES));
    const s = this.pool.cached(drive_uuid);
    if (!s) {
      owe();
      return DONE;
    }
    // A leg taken out meanwhile (a paused target) must not hold the unit's next write of ours:
    // the unlock is owed instead, and paid once the drive answers again.
    return this.guard(s.unlock(this.pool.driveId(drive_uuid), drive_offset, p.length), p.set * this.info.layout.mirrors + leg, drive_uuid, planned).catch(owe);
  }

  private session(p: MirrorPiece, leg: number, planned: number): Promise<TargetSession> {
    return this.sessionOf(p.set * this.info.layout.mirrors + leg, p.legs[leg]!.drive_uuid, planned);
  }

  /** A session to the drive of `column`; a drive we cannot reach becomes a suspect (LegFailed). */
  private async sessionOf(column: number, drive_uuid: string, planned: number): Promise<TargetSession> {
    try {
      return await this.guard(this.pool.sessionFor(drive_uuid), column, drive_uuid, planned);
    } catch (e) {
      if (e instanceof LegFailed) throw e;
      const unreachable = e instanceof NoRouteError ? null : drive_uuid;
      throw new LegFailed(column, `leg ${column} (drive ${drive_uuid}): ${String(e)}`, true, unreachable);
    }
  }

  /** What a failed request means for the piece. */
  private classify(e: unknown, p: MirrorPiece, leg: number): Error {
    return this.classifyColumn(e, p.set * this.info.layout.mirrors + leg);
  }

  private classifyColumn(e: unknown, column: number): Error {
    if (e instanceof SessionClosedError) {
      const drive_uuid = this.info.layout.columns[column]?.drive_uuid ?? null;
      return new LegFailed(column, `leg ${column}: ${e.message}`, true, drive_uuid);
    }
    if (e instanceof TargetError) {
      if (e.status === Status.REFUSED) return new Refused(e.message);
      if (e.status === Status.OUT_OF_RANGE || e.status === Status.INVALID) {
        return new DriveIoError(`target refused leg ${column}: ${e.message}`, "EIO");
      }
    }
    if (e instanceof LegFailed || e instanceof Refused || e instanceof DriveIoError) return e;
    if (e instanceof NoRouteError || e instanceof Error) return new LegFailed(column, `leg ${column}: ${e.message}`);
    return new LegFailed(column, `leg ${column}: ${String(e)}`);
  }

  /**
   * Runs a write and, once all of it completed, gives each piece's acknowledgements to the
   * watch. Not piece by piece: a flush covers the writes completed before it was invoked, and a
   * piece acknowledged early must be judged by the first flush after its write completed
   * (simulator seed 128 with --mirror: a flush invoked before such a write completed failed for
   * it, the next one succeeded, and the write was gone). FUA writes need no watching.
   *
   * The write runs again, with the data we still hold, when a piece's legs may have lost it
   * before the whole write completed: a leg answered under another cache epoch since, or the
   * topology moved on by more than one step since the piece was written (a write waits for its
   * topology to be stable, which can take a whole failure and rebuild; the legs it wrote may have
   * been taken out and copied over meanwhile). Otherwise the loss would surface only as an EIO of
   * the next flush, long after we could have mended it.
   *
   * It also runs again when a piece was acknowledged under a topology not yet stable, so that its
   * completion was held until every client had switched: that hold has no bound (a crashed
   * client's acknowledgement is waited for until it expires), and a leg may lose its cache
   * meanwhile without this client hearing of it, since nothing of ours went to that drive since
   * (simulator seed 2795 with --mirror --toma-cluster: a write acknowledged by the last live leg
   * was held 30 s for two crashed client incarnations, the leg's server lost power meanwhile, and
   * the write completed with an acknowledgement of the lost cache epoch; the flush after the
   * cluster had healed failed). Written again once the topology is stable, it is not held, and its
   * acknowledgements carry the drives' epochs of now.
   */
  private async watched(fua: boolean, run: (sink: (generation: number) => ((legs: [string, number][]) => void) | null) => Promise<void>): Promise<void> {
    for (;;) {
      const acks: { generation: number; held: boolean; legs: [string, number][] }[] = [];
      await run((generation) => (fua ? null : (legs) => acks.push({ generation, held: this.info.stable_generation < generation, legs })));
      if (fua) return;
      const now = this.info.topology_generation;
      if (!plantedBugs.ignore_cache_epoch && acks.some((a) => a.held || now - a.generation > 1 || this.watch.outdated(a.legs))) {
        this.env.log.debug("the legs of a write may have lost it while it completed: writing it again");
        continue;
      }
      for (const a of acks) this.watch.acked(a.legs);
      return;
    }
  }

  private owe(chain: number, drive_uuid: string, unit: number): void {
    this.owedUnlocks.add(`${drive_uuid}@${unit}`);
    this.payLater(chain, drive_uuid, unit, 50);
  }

  /** Pays an owed unlock in the unit's turn, trying again later while the drive is unreachable. */
  private payLater(chain: number, drive_uuid: string, unit: number, delay_ms: number): void {
    const key = `${drive_uuid}@${unit}`;
    const retry = () => {
      if (this.owedUnlocks.has(key)) this.payLater(chain, drive_uuid, unit, Math.min(2 * delay_ms, 2000));
    };
    this.env.timers.after(delay_ms, () => {
      if (this.closed || !this.owedUnlocks.has(key)) return;
      // Connected outside the unit's turn: a drive that does not answer (a paused target) must
      // not hold our writes of the unit on the other legs meanwhile.
      this.pool.sessionFor(drive_uuid).then(
        (s) =>
          void this.serialisedKey(chain, async () => {
            if (!this.owedUnlocks.delete(key)) return; // paid before a LOCK meanwhile
            try {
              await s.unlock(this.pool.driveId(drive_uuid), unit, LOCK_UNIT_BYTES);
            } catch {
              this.owedUnlocks.add(key);
              retry();
            }
          }),
        retry,
      );
    });
  }

  private serialised(p: MirrorPiece, fn: (after: (trailing: Promise<void>) => void) => Promise<void>): Promise<void> {
    return this.serialisedKey(unitKey(p), fn);
  }

  /**
   * Runs fn once the key's earlier turns are over. A turn is over when fn's promise settled and
   * whatever fn handed to `after` (its UNLOCKs) did; the caller only waits for fn's promise.
   */
  private serialisedKey(key: number, fn: (after: (trailing: Promise<void>) => void) => Promise<void>): Promise<void> {
    const prev = this.unitTail.get(key) ?? Promise.resolve();
    let trailing: Promise<void> = Promise.resolve();
    const mine = prev.then(() => fn((t) => (trailing = t)));
    const tail = mine.then(
      () => trailing,
      () => trailing,
    );
    this.unitTail.set(key, tail);
    tail.then(() => {
      if (this.unitTail.get(key) === tail) this.unitTail.delete(key);
    });
    return mine;
  }

  private enter(g: number): void {
    this.inflight.set(g, (this.inflight.get(g) ?? 0) + 1);
  }

  private leave(g: number): void {
    const n = (this.inflight.get(g) ?? 1) - 1;
    if (n <= 0) this.inflight.delete(g);
    else this.inflight.set(g, n);
    if (this.drainWaiters.length === 0) return;
    const w = this.drainWaiters;
    this.drainWaiters = [];
    for (const f of w) f();
  }

  private stableAt(g: number): Promise<void> {
    if (this.info.stable_generation >= g || this.closed) return Promise.resolve();
    return new Promise((resolve) => {
      const check = () => {
        if (this.info.stable_generation >= g || this.closed) resolve();
        else this.stableWaiters.push(check);
      };
      this.stableWaiters.push(check);
    });
  }

  private newTopology(g: number): Promise<void> {
    if (this.info.topology_generation > g) return Promise.resolve();
    return new Promise((resolve) => this.topoWaiters.push(resolve));
  }

  private wake(which: "topo" | "stable"): void {
    const list = which === "topo" ? this.topoWaiters : this.stableWaiters;
    if (which === "topo") this.topoWaiters = [];
    else this.stableWaiters = [];
    for (const f of list) f();
  }

  /** A failed flush was returned when `invoked` flushes had been invoked (mirror-watch.ts). */
  reported(invoked: number): void {
    this.watch.reported(invoked);
  }

  close(): void {
    this.closed = true;
    for (const x of this.suspects.values()) x.timer.cancel();
    this.suspects.clear();
    this.wake("topo");
    this.wake("stable");
  }
}

/** Another leg of the column's set holds everything (RWL or WL): the column may go out. */
function hasCompletePeer(info: AttachInfo, column: number): boolean {
  const m = info.layout.mirrors;
  const set = Math.floor(column / m);
  return info.topology[set]!.legs.some((r, i) => set * m + i !== column && (r === "RWL" || r === "WL"));
}

/** The key of a piece's lock unit in its mirror set (a number: no string per write). */
function unitKey(p: MirrorPiece): number {
  return p.unit * MAX_SETS + p.set;
}

/** Mirror sets per volume that unitKey keeps apart (a volume has a few dozen at most). */
const MAX_SETS = 65536;

function part(buf: Uint8Array, p: MirrorPiece): Uint8Array {
  return p.request_offset === 0 && p.length === buf.length ? buf : buf.subarray(p.request_offset, p.request_offset + p.length);
}
