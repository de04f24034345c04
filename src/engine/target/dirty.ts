/**
 * The dirty (write-intent) bits of one drive, as the target keeps them: the RAM bitmap the drive
 * loaded at open (FormattedDrive.bitmap), changed here and made durable block by block.
 *
 * The rule the mirror rests on: a bit that covers a write is durable before that write is
 * executed, so after any crash every region that may differ between the legs is marked. Bits are
 * only cleared by DIRTY_CLEAR (the TOMA, once the region is equal on the legs).
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

export class DirtyBits {
  private readonly version: Float64Array;
  private readonly durable: Float64Array;
  /** The persist of each block that is queued and has not taken its content yet. */
  private readonly queued: (Promise<void> | null)[];
  /** Tail of each block's chain of persists (never rejects). */
  private readonly tail: Promise<void>[];

  constructor(
    private readonly drive: FormattedDrive,
    /** Bytes of data area the bits describe. */
    private readonly data_bytes: number,
  ) {
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
  markForWrite(offset: number, length: number): Promise<void> | null {
    const span = this.span(offset, length);
    if (span === null) return null;
    this.change(span[0], span[1], true);
    return this.durableOf(span[0], span[1]);
  }

  /** DIRTY_SET: sets the bits and resolves once the blocks holding them are durable. */
  set(offset: number, length: number): Promise<void> {
    const span = this.span(offset, length);
    if (span === null) return DONE;
    this.change(span[0], span[1], true);
    return this.durableOf(span[0], span[1]) ?? DONE;
  }

  /** DIRTY_CLEAR: clears the bits and resolves once the blocks holding them are durable. */
  clear(offset: number, length: number): Promise<void> {
    const span = this.span(offset, length);
    if (span === null) return DONE;
    this.change(span[0], span[1], false);
    return this.durableOf(span[0], span[1]) ?? DONE;
  }

  /** DIRTY_GET: indices of the dirty regions the range touches, ascending. */
  list(offset: number, length: number): number[] {
    const span = this.span(offset, length);
    const out: number[] = [];
    if (span === null) return out;
    const bm = this.drive.bitmap;
    for (let i = span[0]; i <= span[1]; i++) if (bm[i >> 3]! & (1 << (i & 7))) out.push(i);
    return out;
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
