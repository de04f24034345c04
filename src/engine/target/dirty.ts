/**
 * The dirty (write-intent) bits of one drive, as the target keeps them: the RAM bitmap the drive
 * loaded at open (FormattedDrive.bitmap), changed here and made durable block by block.
 *
 * The rule the mirror rests on: a bit that covers a write is durable before that write is
 * executed, so after any crash every region that may differ between the legs is marked.
 *
 * Two kinds of writes mark bits. A DIRTY write (a degraded mirror) marks its regions for the TOMA:
 * only DIRTY_CLEAR clears them, once the region is equal on the legs. An INTENT write (a mirror
 * with every leg writable) marks them because the write will sit in this drive's volatile cache
 * until a flush: if the cache is lost (power, unplug) the region may differ from the other legs.
 * Such a bit is this target's own: it clears it itself once INTENT_QUIET_FLUSHES flushes have
 * completed with no write to the region since (lazily, so a busy region does not pay a bitmap
 * write per write). Whatever the kind, a bit never goes clear while a write to its region is
 * unflushed here: a DIRTY_CLEAR of such a region hands the bit to this target instead.
 *
 * Each 4 KiB block of the bitmap has a version, bumped by every change of one of its bits in RAM,
 * and the version known durable. Persisting a block is serialised per block and takes the block's
 * content when it starts; callers that need a version durable share the one queued write that
 * will cover it, so a burst of writes to fresh regions costs at most one write in progress and
 * one queued per block. A failed persist leaves the durable version where it was: the next caller
 * tries again, and the bits stay set in RAM (which only ever errs towards dirty).
 */
import type { FormattedDrive } from "../drive/formatted-api.ts";
import { BLOCK_BYTES } from "../drive/superblock.ts";

const BITS_PER_BLOCK = BLOCK_BYTES * 8;
const DONE: Promise<void> = Promise.resolve();
/** Completed flushes with no write to a region before this target clears the bit it set. */
export const INTENT_QUIET_FLUSHES = 3;

/** A region written by DIRTY or INTENT writes since it was last quiet (RAM only). */
interface Tracked {
  /** The bit is this target's (set by an INTENT write), not the TOMA's. */
  own: boolean;
  /** Writes to it executing now. */
  inflight: number;
  /** Number of the last write to it that completed (see `completed`). */
  last: number;
  /** Flushes completed since, covering that write. */
  quiet: number;
}

export class DirtyBits {
  private readonly version: Float64Array;
  private readonly durable: Float64Array;
  /** The persist of each block that is queued and has not taken its content yet. */
  private readonly queued: (Promise<void> | null)[];
  /** Tail of each block's chain of persists (never rejects). */
  private readonly tail: Promise<void>[];
  private readonly tracked = new Map<number, Tracked>();
  /** Writes completed so far (DIRTY or INTENT), numbered. */
  private completed = 0;
  /**
   * The bits set when this serving of the drive began that neither DIRTY_SET nor DIRTY_CLEAR
   * has touched since. The locks of that time are gone with the old process (or the old server),
   * and a bit set under one of them (`markLocked`) is all that says where a half-done write may
   * have left the legs different (the TOMA's `checkLostLocks`).
   */
  private readonly inherited: Uint8Array;

  constructor(
    private readonly drive: FormattedDrive,
    /** Bytes of data area the bits describe. */
    private readonly data_bytes: number,
    /** Whether a lock unit of the byte range is held now: a locked region's bit does not clear. */
    private readonly locked: (offset: number, length: number) => boolean = () => false,
  ) {
    this.inherited = drive.bitmap.slice();
    const blocks = Math.ceil(drive.bitmap.length / BLOCK_BYTES);
    this.version = new Float64Array(blocks);
    // A bitmap that could not be read is all ones in RAM only: no block of it is durable yet.
    this.durable = new Float64Array(blocks).fill(drive.bitmap_loaded ? 0 : -1);
    this.queued = new Array<Promise<void> | null>(blocks).fill(null);
    this.tail = new Array<Promise<void>>(blocks).fill(DONE);
  }

  get region_bytes(): number {
    return this.drive.bitmap_region_bytes;
  }

  /** Regions of the data area: bits beyond the last are ignored. */
  get regions(): number {
    return Math.ceil(this.data_bytes / this.drive.bitmap_region_bytes);
  }

  /**
   * Before a DIRTY write of [offset, offset + length): sets the bits of the regions it touches
   * and returns what to await before executing the write (null when every one of them was
   * already set and durable: the common case in a degraded mirror).
   */
  markForWrite(offset: number, length: number, kind: "dirty" | "intent" = "dirty"): Promise<void> | null {
    const span = this.span(offset, length);
    if (span === null) return null;
    for (let i = span[0]; i <= span[1]; i++) {
      let t = this.tracked.get(i);
      if (!t) {
        t = { own: kind === "intent" && !this.isSet(i), inflight: 0, last: 0, quiet: 0 };
        this.tracked.set(i, t);
      } else if (kind === "dirty") t.own = false;
      t.inflight++;
      t.quiet = 0;
    }
    this.change(span[0], span[1], true);
    return this.durableOf(span[0], span[1]);
  }

  /**
   * A LOCK was granted on [offset, offset + length): its regions are marked (this target's bit
   * unless already set) and stay marked while any lock is held in them, so the writes made under
   * the lock to the *other* legs are covered even if this drive's lock table is lost (a process
   * restart) before they complete. Returns what to await before answering the LOCK.
   */
  markLocked(offset: number, length: number): Promise<void> | null {
    const span = this.span(offset, length);
    if (span === null) return null;
    for (let i = span[0]; i <= span[1]; i++) {
      const t = this.tracked.get(i);
      if (t) t.quiet = 0;
      else this.tracked.set(i, { own: !this.isSet(i), inflight: 0, last: this.completed, quiet: 0 });
    }
    this.change(span[0], span[1], true);
    return this.durableOf(span[0], span[1]);
  }

  /** The write marked by markForWrite(offset, length) finished (done or failed: it may have landed). */
  writeDone(offset: number, length: number): void {
    const span = this.span(offset, length);
    if (span === null) return;
    const no = ++this.completed;
    for (let i = span[0]; i <= span[1]; i++) {
      const t = this.tracked.get(i);
      if (!t) continue;
      t.inflight--;
      t.last = no;
    }
  }

  /** Regions written by DIRTY or INTENT writes that are not yet quiet: a flush would help them. */
  get awaitingFlush(): boolean {
    return this.tracked.size > 0;
  }

  /** Taken when a flush of the drive starts: it covers the writes completed before it. */
  flushMark(): number {
    return this.completed;
  }

  /**
   * A flush taken at `mark` succeeded. Regions quiet for INTENT_QUIET_FLUSHES flushes stop being
   * tracked, and the bits this target set for them are cleared (durable some time later: until
   * then a crash leaves them set, which only costs a resync of the region).
   */
  flushed(mark: number): void {
    let first = Infinity;
    let last = -1;
    const R = this.drive.bitmap_region_bytes;
    for (const [i, t] of this.tracked) {
      if (t.inflight > 0 || t.last > mark) continue;
      if (this.locked(i * R, R)) {
        t.quiet = 0;
        continue;
      }
      if (++t.quiet < INTENT_QUIET_FLUSHES) continue;
      this.tracked.delete(i);
      if (!t.own) continue;
      this.change(i, i, false);
      first = Math.min(first, i);
      last = Math.max(last, i);
    }
    if (last >= 0) this.durableOf(first, last)?.catch(() => {});
  }

  /** DIRTY_SET: sets the bits and resolves once the blocks holding them are durable. */
  set(offset: number, length: number): Promise<void> {
    const span = this.span(offset, length);
    if (span === null) return DONE;
    for (let i = span[0]; i <= span[1]; i++) {
      const t = this.tracked.get(i);
      if (t) t.own = false;
    }
    this.change(span[0], span[1], true);
    this.forget(span[0], span[1]);
    return this.durableOf(span[0], span[1]) ?? DONE;
  }

  /**
   * DIRTY_CLEAR: clears the bits and resolves once the blocks holding them are durable. A region
   * with writes not yet flushed here keeps its bit, which becomes this target's to clear.
   */
  clear(offset: number, length: number): Promise<void> {
    const span = this.span(offset, length);
    if (span === null) return DONE;
    this.forget(span[0], span[1]);
    let from = span[0];
    for (let i = span[0]; i <= span[1] + 1; i++) {
      const t = i <= span[1] ? this.tracked.get(i) : undefined;
      if (i <= span[1] && !t) continue;
      if (t) t.own = true;
      if (i > from) this.change(from, i - 1, false);
      from = i + 1;
    }
    return this.durableOf(span[0], span[1]) ?? DONE;
  }

  private isSet(i: number): boolean {
    return (this.drive.bitmap[i >> 3]! & (1 << (i & 7))) !== 0;
  }

  /** DIRTY_GET: indices of the dirty regions the range touches, ascending. */
  list(offset: number, length: number): number[] {
    return this.marked(offset, length, false);
  }

  /** DIRTY_INHERITED: those of them set before this serving began and untouched by the TOMA since. */
  listInherited(offset: number, length: number): number[] {
    return this.marked(offset, length, true);
  }

  private marked(offset: number, length: number, inherited: boolean): number[] {
    const span = this.span(offset, length);
    const out: number[] = [];
    if (span === null) return out;
    const bm = this.drive.bitmap;
    const ih = this.inherited;
    for (let i = span[0]; i <= span[1]; i++) {
      const bit = 1 << (i & 7);
      if (bm[i >> 3]! & bit && (!inherited || ih[i >> 3]! & bit)) out.push(i);
    }
    return out;
  }

  /** The TOMA has set or cleared these regions' bits: they are its now, no longer inherited. */
  private forget(first: number, last: number): void {
    const ih = this.inherited;
    for (let i = first; i <= last; i++) ih[i >> 3] = ih[i >> 3]! & ~(1 << (i & 7));
  }

  /** First and last region index the range touches, or null for an empty range. */
  private span(offset: number, length: number): [number, number] | null {
    if (length === 0) return null;
    const r = this.drive.bitmap_region_bytes;
    return [Math.floor(offset / r), Math.floor((offset + length - 1) / r)];
  }

  private change(first: number, last: number, on: boolean): void {
    const bm = this.drive.bitmap;
    for (let i = first; i <= last; i++) {
      const byte = Math.floor(i / 8);
      const bit = 1 << (i & 7);
      const was = bm[byte]!;
      const now = on ? was | bit : was & ~bit;
      if (now === was) continue;
      bm[byte] = now;
      const b = Math.floor(i / BITS_PER_BLOCK);
      this.version[b] = this.version[b]! + 1;
    }
  }

  /** What to await so that every block holding bits first..last is durable at its current version. */
  private durableOf(first: number, last: number): Promise<void> | null {
    const b0 = Math.floor(first / BITS_PER_BLOCK);
    const b1 = Math.floor(last / BITS_PER_BLOCK);
    if (b0 === b1) return this.ensure(b0);
    const waits: Promise<void>[] = [];
    for (let b = b0; b <= b1; b++) {
      const p = this.ensure(b);
      if (p !== null) waits.push(p);
    }
    return waits.length === 0 ? null : Promise.all(waits).then(() => {});
  }

  private ensure(b: number): Promise<void> | null {
    if (this.durable[b]! >= this.version[b]!) return null;
    // A queued persist takes the block's content when it starts, so it covers this version too.
    const q = this.queued[b];
    if (q) return q;
    const p = this.tail[b]!.then(() => this.persist(b));
    this.queued[b] = p;
    this.tail[b] = p.catch(() => {});
    return p;
  }

  private async persist(b: number): Promise<void> {
    this.queued[b] = null;
    const v = this.version[b]!;
    if (this.durable[b]! >= v) return;
    // persistBitmapBlock copies the block before its first await: content and v match.
    await this.drive.persistBitmapBlock(b);
    if (v > this.durable[b]!) this.durable[b] = v;
  }
}
