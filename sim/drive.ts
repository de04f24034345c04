/**
 * Simulated drives. A SimMedium is the physical drive: its content outlives processes and can be
 * pulled out of one server and plugged into another. A SimDriveStore is the DriveStore one process
 * (an Incarnation) opened on it; the real engine code (formatDrive, openDrive, the target) runs on
 * it unchanged.
 *
 * Model (every choice seeded, so a seed replays exactly):
 * - Content is sparse 512-byte sectors (absent = zeroes) in two layers: durable, and a volatile
 *   write-back cache of acknowledged-but-unflushed writes in the order they took effect. Reads
 *   see the cache over the durable layer.
 * - An op takes a latency from the drive's profile and takes effect at the instant it resolves,
 *   so concurrent ops complete in any order. Until then a write is "in flight": in the kernel.
 * - write → cache; write with FUA → durable when it resolves (and supersedes cached copies of the
 *   same sectors, so an older cached write can never resurface over it); flush → every write
 *   that resolved before flush() was called becomes durable (the whole drive's cache, whichever
 *   handle wrote it, like a real cache flush).
 * - writeZeroes is a write of zeroes. trim either zeroes the range or leaves the old data, at
 *   random per call: code must not rely on trimmed data reading as zeroes.
 * - Crashes settle in-flight writes fully, not at all, or torn per sector; see processCrash and
 *   powerLoss. A sector is never half old and half new (512-byte atomicity, as drives promise).
 * - Latent read errors live on sectors until a write to that sector (the drive remaps it).
 * - Misdirected writes land at another sector-aligned place; the intended sectors keep old data.
 * - Hot-unplug cuts the drive's power (its cache is lost or torn like a power loss) and fails
 *   every open handle's ops with EIO; opening a new handle later is plugging it back in.
 *
 * Simplifications: a writeZeroes costs one map entry per sector while cached (flushed zero
 * sectors are freed); a write that takes effect clears latent errors even if a later power loss
 * drops it; in-flight reads and flushes of a crashed process simply vanish.
 */
import { checkRange, DriveIoError, type DriveStore } from "../src/engine/drive/store.ts";
import type { Incarnation } from "./node.ts";
import type { Prng } from "./prng.ts";
import type { World } from "./world.ts";

export const SECTOR_BYTES = 512;

export interface DriveProfile {
  /** Service time of a read, write, writeZeroes or trim: uniform in [min, max] virtual ms. */
  readonly latency_ms: readonly [number, number];
  /** Service time of a flush; a FUA write pays one on top of its latency. */
  readonly flush_ms: readonly [number, number];
  /** Chance that a write leaves a latent read error on one of its sectors. */
  readonly read_error_rate: number;
  /** Chance that a write lands at another offset of the drive. */
  readonly misdirect_rate: number;
}

/** No faults, small fixed latency: for tests that are about something else. */
export function quietDriveProfile(): DriveProfile {
  return { latency_ms: [0.05, 0.05], flush_ms: [0.1, 0.1], read_error_rate: 0, misdirect_rate: 0 };
}

/**
 * A drive with its own speed and spread (a wide spread reorders concurrent ops). Faults stay off
 * unless asked for: misdirected writes lose data no replica protocol without checksums survives.
 */
export function randomDriveProfile(prng: Prng, faults: { read_error_rate?: number; misdirect_rate?: number } = {}): DriveProfile {
  const lat = prng.range(0.01, 0.2);
  const flush = prng.range(0.05, 1);
  return {
    latency_ms: [lat, lat + prng.range(0, 5)],
    flush_ms: [flush, flush + prng.range(0, 20)],
    read_error_rate: faults.read_error_rate ?? 0,
    misdirect_rate: faults.misdirect_rate ?? 0,
  };
}

/** A sector's content; null is zeroes. */
type Sector = Uint8Array | null;

/** A write (or zeroing) on its way to the medium. */
interface WriteReq {
  /** Where it lands: differs from where the caller asked when misdirected. */
  readonly offset: number;
  readonly length: number;
  /** Private copy of the caller's bytes; null writes zeroes. */
  readonly data: Uint8Array | null;
  readonly fua: boolean;
  /** A sector this write leaves a latent read error on, if the profile said so. */
  readonly latent_sector: number | null;
  readonly what: string;
}

/** An acknowledged write in the volatile cache, already cut into whole sectors. */
interface CachedWrite {
  readonly seq: number;
  readonly sectors: Map<number, Sector>;
  readonly what: string;
}

interface PendingOp {
  readonly handle: SimDriveStore;
  /** Set for writes: what a crash must settle. */
  readonly write: WriteReq | null;
  readonly reject: (e: Error) => void;
}

export interface Misdirect {
  readonly intended: number;
  readonly landed: number;
  readonly length: number;
}

type Outcome = "applied" | "lost" | "torn";

export class SimMedium {
  readonly name: string;
  readonly size_bytes: number;
  readonly profile: DriveProfile;
  /** Every misdirected write so far, for the checker. */
  readonly misdirected: Misdirect[] = [];

  private readonly durable = new Map<number, Uint8Array>();
  private volatile: CachedWrite[] = [];
  /** Newest cached content per sector: the read path's view of `volatile`. */
  private readonly cache = new Map<number, Sector>();
  private readonly bad = new Set<number>();
  private nextSeq = 0;
  /** Ops issued by handles and not answered yet, in issue order. */
  private readonly pending = new Set<PendingOp>();
  /** Handles opened since the drive was last plugged in. */
  private readonly handles = new Set<SimDriveStore>();
  private plugged_ = true;
  /** Bumped by each unplug: a handle from an older epoch belongs to a drive that was pulled. */
  private epoch_ = 0;
  /** Bumped by each loss of power (a power loss of its server, or an unplug): the cache epoch. */
  private powerCycles_ = 0;
  /** Node the drive sits in (last opened from), for the trace. */
  private holder = "drive";

  constructor(
    private readonly world: World,
    opts: { name: string; size_bytes: number; profile?: DriveProfile },
  ) {
    if (!Number.isSafeInteger(opts.size_bytes) || opts.size_bytes <= 0) throw new RangeError(`bad drive size ${opts.size_bytes}`);
    this.name = opts.name;
    this.size_bytes = opts.size_bytes;
    this.profile = opts.profile ?? quietDriveProfile();
  }

  get plugged(): boolean {
    return this.plugged_;
  }

  get epoch(): number {
    return this.epoch_;
  }

  /** What DriveStore.cache_epoch reports: changes whenever the volatile cache was lost. */
  get cacheEpoch(): number {
    return this.powerCycles_ + 1;
  }

  /** Sectors holding data in either layer: what the drive costs in memory. */
  get storedSectors(): number {
    return this.durable.size + this.cache.size;
  }

  /** Acknowledged writes not yet durable. */
  get volatileWrites(): number {
    return this.volatile.length;
  }

  /** What a read would return now (cache over durable), without latency or read errors. */
  snapshot(offset: number, length: number): Uint8Array {
    const out = new Uint8Array(this.checkSpan(offset, length));
    this.copyOut(offset, out, true);
    return out;
  }

  /** What survives if the drive loses power right now and no cached write makes it. */
  durableSnapshot(offset: number, length: number): Uint8Array {
    const out = new Uint8Array(this.checkSpan(offset, length));
    this.copyOut(offset, out, false);
    return out;
  }

  injectReadError(sector: number): void {
    this.checkSpan(sector * SECTOR_BYTES, 1);
    this.bad.add(sector);
    this.log(`latent read error injected at sector ${sector}`);
  }

  hasReadError(sector: number): boolean {
    return this.bad.has(sector);
  }

  /**
   * The process holding the drive died; its kernel lives on. Each in-flight write is applied
   * fully, not at all, or torn per sector (into the page cache, or durably for FUA); acknowledged
   * cached writes survive. Every open handle goes silent: its pending ops never resolve.
   */
  processCrash(prng: Prng): void {
    const inflight = this.takeInflight(true);
    const outcomes = inflight.map((w) => {
      const { outcome, keep } = settle(prng, sectorRange(w));
      this.apply(w, w.fua ? "durable" : "volatile", keep);
      return this.traceOutcome("process crash", `${w.what} (in flight)`, outcome, keep, sectorRange(w));
    });
    this.log(`process crash: ${summary(outcomes)} in-flight writes, ${this.volatile.length} cached writes kept`);
  }

  /**
   * The machine lost power. In-flight writes and every cached write (acknowledged or not) are
   * each lost, applied, or torn per sector; the cache is then empty. Handles go silent.
   */
  powerLoss(prng: Prng): void {
    this.cutPower(prng, "power loss", true);
  }

  /**
   * Pulls the drive out: its power goes (as in powerLoss) and every open handle fails its pending
   * and further ops with EIO. Open a new handle (from any node) to plug it back in.
   */
  unplug(prng: Prng = this.world.prng): void {
    if (!this.plugged_) return;
    this.log("UNPLUGGED");
    const live = [...this.pending].filter((op) => !op.handle.gone);
    this.plugged_ = false;
    this.epoch_++;
    this.cutPower(prng, "unplug", false);
    this.handles.clear();
    for (const op of live) op.reject(new DriveIoError(`${op.handle.describe}: unplugged`, "EIO"));
  }

  /** Plugs a pulled drive back in (opening a handle does it too). Handles from before stay dead. */
  replug(): void {
    if (this.plugged_) return;
    this.plugged_ = true;
    this.log("plugged in");
  }

  // ---- The handle side: used by SimDriveStore only. ----

  /** Registers a new handle, plugging the drive back in if it was pulled. Returns its epoch. */
  attach(handle: SimDriveStore, node: string): number {
    this.holder = node;
    this.replug();
    this.handles.add(handle);
    return this.epoch_;
  }

  detach(handle: SimDriveStore): void {
    this.handles.delete(handle);
  }

  /** Boundary for a flush called now: writes with a lower seq resolved before it. */
  get seq(): number {
    return this.nextSeq;
  }

  addPending(op: PendingOp): void {
    this.pending.add(op);
  }

  /** False if a crash or unplug already settled the op. */
  takePending(op: PendingOp): boolean {
    return this.pending.delete(op);
  }

  /** A write resolves: it takes effect now. */
  land(w: WriteReq): void {
    this.apply(w, w.fua ? "durable" : "volatile", null);
  }

  flushUpTo(seq: number): void {
    let n = 0;
    for (const cw of this.volatile) {
      if (cw.seq >= seq) break;
      for (const [s, v] of cw.sectors) this.setDurable(s, v);
      n++;
    }
    if (n === 0) return;
    this.volatile.splice(0, n);
    this.rebuildCache();
  }

  /** A read resolves: fails on a latent error anywhere in the range, else copies what is there. */
  readInto(offset: number, dst: Uint8Array, describe: string, node: string): void {
    for (let s = Math.floor(offset / SECTOR_BYTES); s * SECTOR_BYTES < offset + dst.length; s++) {
      if (!this.bad.has(s)) continue;
      this.world.log(node, `drive ${this.name}: read ${offset}+${dst.length} hits latent error at sector ${s}`);
      throw new DriveIoError(`${describe}: unrecoverable read error at sector ${s}`, "EIO");
    }
    this.copyOut(offset, dst, true);
  }

  recordMisdirect(m: Misdirect, node: string): void {
    this.misdirected.push(m);
    this.world.log(
      node,
      `drive ${this.name}: MISDIRECTED WRITE ${m.intended}+${m.length} lands at ${m.landed}; the intended sectors keep old data`,
    );
  }

  // ---- Internals. ----

  private log(what: string): void {
    this.world.log(this.holder, `drive ${this.name}: ${what}`);
  }

  private checkSpan(offset: number, length: number): number {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this.size_bytes) {
      throw new RangeError(`range ${offset}+${length} outside drive ${this.name} of ${this.size_bytes} bytes`);
    }
    return length;
  }

  /** Removes every pending op (they will never be answered) and returns the in-flight writes. */
  private takeInflight(silence: boolean): WriteReq[] {
    const writes: WriteReq[] = [];
    for (const op of this.pending) if (op.write) writes.push(op.write);
    this.pending.clear();
    if (silence) {
      for (const h of this.handles) h.silence();
      this.handles.clear();
    }
    return writes;
  }

  private cutPower(prng: Prng, why: string, silence: boolean): void {
    this.powerCycles_++;
    // In-flight writes may have reached the drive's cache; from there they share its fate.
    for (const w of this.takeInflight(silence)) this.apply(w, "volatile", null, " (in flight)");
    const outcomes = this.volatile.map((cw) => {
      const sectors = [...cw.sectors.keys()];
      const { outcome, keep } = settle(prng, sectors);
      for (const [s, v] of cw.sectors) if (keep(s)) this.setDurable(s, v);
      return this.traceOutcome(why, cw.what, outcome, keep, sectors);
    });
    this.volatile = [];
    this.cache.clear();
    this.log(`${why}: ${summary(outcomes)} cached writes; cache empty`);
  }

  private traceOutcome(why: string, what: string, outcome: Outcome, keep: (s: number) => boolean, sectors: number[]): Outcome {
    if (outcome === "lost") this.log(`${why}: ${what} lost`);
    if (outcome === "torn") this.log(`${why}: ${what} torn, ${sectors.filter(keep).length}/${sectors.length} sectors landed`);
    return outcome;
  }

  /** Makes (the kept sectors of) a write take effect in one layer. */
  private apply(w: WriteReq, layer: "volatile" | "durable", keep: ((s: number) => boolean) | null, note = ""): void {
    const sectors = this.toSectors(w, keep);
    for (const s of sectors.keys()) this.bad.delete(s);
    if (layer === "durable") {
      this.supersede(sectors);
      for (const [s, v] of sectors) this.setDurable(s, v);
    } else if (sectors.size > 0) {
      this.volatile.push({ seq: this.nextSeq++, sectors, what: w.what + note });
      for (const [s, v] of sectors) this.cache.set(s, v);
    }
    if (w.latent_sector !== null && sectors.has(w.latent_sector)) {
      this.bad.add(w.latent_sector);
      this.log(`${w.what} leaves a latent read error at sector ${w.latent_sector}`);
    }
  }

  /** Cuts a write into whole sectors; partial sectors are merged with what is there now. */
  private toSectors(w: WriteReq, keep: ((s: number) => boolean) | null): Map<number, Sector> {
    const out = new Map<number, Sector>();
    const end = w.offset + w.length;
    for (const s of sectorRange(w)) {
      if (keep && !keep(s)) continue;
      const lo = Math.max(w.offset, s * SECTOR_BYTES);
      const hi = Math.min(end, (s + 1) * SECTOR_BYTES);
      if (hi - lo === SECTOR_BYTES) {
        out.set(s, w.data ? w.data.subarray(lo - w.offset, hi - w.offset) : null);
        continue;
      }
      const buf = new Uint8Array(SECTOR_BYTES);
      const base = this.view(s);
      if (base) buf.set(base);
      if (w.data) buf.set(w.data.subarray(lo - w.offset, hi - w.offset), lo - s * SECTOR_BYTES);
      else buf.fill(0, lo - s * SECTOR_BYTES, hi - s * SECTOR_BYTES);
      out.set(s, buf);
    }
    return out;
  }

  /** A durable write replaces cached copies of its sectors: the drive's cache holds one per sector. */
  private supersede(sectors: Map<number, Sector>): void {
    const hit = [...sectors.keys()].filter((s) => this.cache.delete(s));
    if (hit.length === 0) return;
    for (const cw of this.volatile) for (const s of hit) cw.sectors.delete(s);
    this.volatile = this.volatile.filter((cw) => cw.sectors.size > 0);
  }

  private rebuildCache(): void {
    this.cache.clear();
    for (const cw of this.volatile) for (const [s, v] of cw.sectors) this.cache.set(s, v);
  }

  private setDurable(s: number, v: Sector): void {
    if (v) this.durable.set(s, v);
    else this.durable.delete(s);
  }

  private view(s: number): Sector {
    return this.cache.has(s) ? (this.cache.get(s) ?? null) : (this.durable.get(s) ?? null);
  }

  private copyOut(offset: number, dst: Uint8Array, withCache: boolean): void {
    let pos = 0;
    while (pos < dst.length) {
      const at = offset + pos;
      const s = Math.floor(at / SECTOR_BYTES);
      const within = at - s * SECTOR_BYTES;
      const n = Math.min(SECTOR_BYTES - within, dst.length - pos);
      const v = withCache ? this.view(s) : (this.durable.get(s) ?? null);
      if (v) dst.set(v.subarray(within, within + n), pos);
      else dst.fill(0, pos, pos + n);
      pos += n;
    }
  }
}

function sectorRange(w: { offset: number; length: number }): number[] {
  const out: number[] = [];
  for (let s = Math.floor(w.offset / SECTOR_BYTES); s * SECTOR_BYTES < w.offset + w.length; s++) out.push(s);
  return out;
}

/** A write caught by a crash: one of the three outcomes, and for "torn" a coin per sector. */
function settle(prng: Prng, sectors: number[]): { outcome: Outcome; keep: (s: number) => boolean } {
  const outcome = prng.pick<Outcome>(["applied", "lost", "torn"]);
  if (outcome !== "torn") return { outcome, keep: () => outcome === "applied" };
  const kept = new Set(sectors.filter(() => prng.chance(0.5)));
  return { outcome, keep: (s) => kept.has(s) };
}

function summary(outcomes: Outcome[]): string {
  const n = (o: Outcome) => outcomes.filter((x) => x === o).length;
  return `${outcomes.length} (${n("applied")} applied, ${n("lost")} lost, ${n("torn")} torn)`;
}

/**
 * One process's handle on a medium. Ops of a dead incarnation never resolve and never reach the
 * medium (only the kernel's in-flight writes do, through the crash hooks).
 */
export class SimDriveStore implements DriveStore {
  readonly size_bytes: number;
  readonly describe: string;
  /** Fixed for the handle's life: a power loss or an unplug kills the handle too. */
  readonly cache_epoch: number;
  private closed = false;
  private silenced = false;
  /** The plug-in epoch this handle was opened in. */
  private readonly epoch: number;

  constructor(
    private readonly world: World,
    readonly medium: SimMedium,
    readonly inc: Incarnation,
    private readonly prng: Prng,
  ) {
    this.size_bytes = medium.size_bytes;
    this.describe = `sim drive ${medium.name} on ${inc.node.name}#${inc.number}`;
    this.cache_epoch = medium.cacheEpoch;
    this.epoch = medium.attach(this, inc.node.name);
  }

  /** The process behind this handle is gone: nothing it asked for will ever be answered. */
  get gone(): boolean {
    return this.silenced || !this.inc.alive;
  }

  /** Called by the medium when a crash takes the handle's process. */
  silence(): void {
    this.silenced = true;
  }

  read(offset: number, dst: Uint8Array): Promise<void> {
    return this.op(offset, dst.length, () =>
      this.schedule(this.sample(this.medium.profile.latency_ms), null, () =>
        this.medium.readInto(offset, dst, this.describe, this.inc.node.name),
      ),
    );
  }

  write(offset: number, src: Uint8Array, fua: boolean): Promise<void> {
    return this.op(offset, src.length, () => this.issueWrite(offset, src.length, src.slice(), fua, "write"));
  }

  writeZeroes(offset: number, length: number, fua: boolean): Promise<void> {
    return this.op(offset, length, () => this.issueWrite(offset, length, null, fua, "zeroes"));
  }

  /** Either zeroes the range (like writeZeroes without FUA) or leaves it alone, at random. */
  trim(offset: number, length: number): Promise<void> {
    return this.op(offset, length, () =>
      this.prng.chance(0.5)
        ? this.issueWrite(offset, length, null, false, "trim")
        : this.schedule(this.sample(this.medium.profile.latency_ms), null, () => {}),
    );
  }

  flush(): Promise<void> {
    return this.op(0, 0, () => {
      const upto = this.medium.seq;
      return this.schedule(this.sample(this.medium.profile.flush_ms), null, () => this.medium.flushUpTo(upto));
    });
  }

  close(): Promise<void> {
    if (this.gone) return never();
    this.closed = true;
    this.medium.detach(this);
    return Promise.resolve();
  }

  /** The checks every op makes before reaching the drive, in the order a caller would see them. */
  private op(offset: number, length: number, start: () => Promise<void>): Promise<void> {
    if (this.gone) return never();
    try {
      checkRange(this, this.closed, offset, length);
      if (this.epoch !== this.medium.epoch || !this.medium.plugged) throw new DriveIoError(`${this.describe}: unplugged`, "EIO");
    } catch (e) {
      return Promise.reject(e);
    }
    return start();
  }

  private issueWrite(offset: number, length: number, data: Uint8Array | null, fua: boolean, kind: string): Promise<void> {
    const p = this.medium.profile;
    const landed = this.prng.chance(p.misdirect_rate) ? this.misdirect(offset, length) : offset;
    const sectors = sectorRange({ offset: landed, length });
    const latent_sector = sectors.length > 0 && this.prng.chance(p.read_error_rate) ? this.prng.pick(sectors) : null;
    const w: WriteReq = { offset: landed, length, data, fua, latent_sector, what: `${kind} ${landed}+${length}${fua ? " fua" : ""}` };
    const delay = this.sample(p.latency_ms) + (fua ? this.sample(p.flush_ms) : 0);
    return this.schedule(delay, w, () => this.medium.land(w));
  }

  /** Another sector-aligned shift of the same range that still fits the drive (or none). */
  private misdirect(offset: number, length: number): number {
    const first = Math.floor(offset / SECTOR_BYTES);
    const maxFirst = Math.floor((this.size_bytes - length - (offset % SECTOR_BYTES)) / SECTOR_BYTES);
    if (maxFirst < 1) return offset;
    let to = this.prng.int(0, maxFirst + 1);
    if (to === first) to = (to + 1) % (maxFirst + 1);
    const landed = to * SECTOR_BYTES + (offset % SECTOR_BYTES);
    this.medium.recordMisdirect({ intended: offset, landed, length }, this.inc.node.name);
    return landed;
  }

  /** Answers `finish()` after `delay` virtual ms, unless a crash or unplug settles the op first. */
  private schedule(delay: number, write: WriteReq | null, finish: () => void): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const op: PendingOp = { handle: this, write, reject };
      this.medium.addPending(op);
      this.world.after(delay, () => {
        if (!this.medium.takePending(op)) return;
        // Died without a crash hook settling its writes: nobody to answer, nothing lands.
        if (this.gone) return;
        // The drive completes the op; a paused process hears of it when it runs again.
        try {
          finish();
          this.inc.run(resolve);
        } catch (e) {
          this.inc.run(() => reject(e));
        }
      });
    });
  }

  private sample([lo, hi]: readonly [number, number]): number {
    return hi > lo ? this.prng.range(lo, hi) : lo;
  }
}

function never(): Promise<void> {
  return new Promise<void>(() => {});
}

/**
 * Opens a handle for `inc` and ties the medium's fate to it: when the incarnation dies, its
 * in-flight writes are settled as a process crash or a power loss, by how it died. A drive that
 * was pulled out before the death is not touched (it may already sit in another server).
 */
export function openSimDrive(world: World, medium: SimMedium, inc: Incarnation, prng: Prng): SimDriveStore {
  const store = new SimDriveStore(world, medium, inc, prng);
  const epoch = medium.epoch;
  if (inc.alive) {
    inc.onDeath(() => {
      if (medium.epoch !== epoch) return;
      if (inc.death === "power") medium.powerLoss(prng);
      else medium.processCrash(prng);
    });
  }
  return store;
}
