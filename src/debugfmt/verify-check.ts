/**
 * What a verify worker checks of the data it reads back over NBD, where only the logical data is
 * visible (the debug headers stay on the drives, for forensics): the 512 bytes of every sector
 * must be exactly the verify data the pattern says, and a block never goes back in time.
 *
 * Per sector of a block read:
 *   | the block is             | acceptable                                                      |
 *   | ------------------------ | --------------------------------------------------------------- |
 *   | the reader's own, written| exactly the data of the last step the reader wrote there        |
 *   | the reader's own, not yet| anything but data of this run (a leftover of an earlier run)    |
 *   |   written in this run    |                                                                 |
 *   | another worker's         | zeros or other data while this reader never saw this run's data |
 *   |                          | there; else data of this run stamped for this LBA, by the       |
 *   |                          | block's owner, at a step that writes this block, byte for byte, |
 *   |                          | and not older than the oldest step this reader saw on the block |
 *   |                          | last time (each sector's write lands on its own, so the minimum)|
 *
 * A mismatch names the block, the LBA, what was expected and what was found.
 */
import { blockAt, blockLbas, dataFor, ownerOf, type PatternSpec, readDataStamp } from "./pattern.ts";
import { DATA_BYTES } from "./sector.ts";

export type MismatchKind = "lost_write" | "stale" | "misdirected" | "wrong_block" | "corrupt" | "unexpected";

export interface Mismatch {
  kind: MismatchKind;
  block: number;
  lba: number;
  /** The worker that owns (writes) the block. */
  owner: number;
  expected: string;
  found: string;
}

/** What one reader remembers: the last step it wrote on its own blocks, the oldest it saw elsewhere. */
export class ReaderState {
  /** Per block: own blocks, the last step written (−1: not yet); others, the step floor (−1: none). */
  private readonly steps: Float64Array;

  constructor(
    readonly spec: PatternSpec,
    readonly worker: number,
  ) {
    this.steps = new Float64Array(spec.blocks).fill(-1);
  }

  wrote(block: number, step: number): void {
    this.steps[block] = step;
  }

  /** Own block: the last step written; another's: the oldest step seen at the last read (−1: none). */
  known(block: number): number {
    return this.steps[block]!;
  }

  /**
   * Checks a block read back (block_sectors × 512 bytes); returns the first mismatch or null, and
   * on success remembers the oldest step found for another worker's block.
   */
  check(block: number, data: Uint8Array): Mismatch | null {
    const spec = this.spec;
    const owner = ownerOf(spec, block);
    const { first_lba, sectors } = blockLbas(spec, block);
    const known = this.steps[block]!;
    let oldest = Number.POSITIVE_INFINITY;
    for (let i = 0; i < sectors; i++) {
      const lba = first_lba + i;
      const got = data.subarray(i * DATA_BYTES, (i + 1) * DATA_BYTES);
      const m = owner === this.worker ? this.checkOwn(block, lba, known, got) : this.checkOther(block, owner, lba, known, got);
      if (typeof m !== "number") return m;
      oldest = Math.min(oldest, m);
    }
    if (owner !== this.worker && oldest > known) this.steps[block] = oldest;
    return null;
  }

  private checkOwn(block: number, lba: number, last: number, got: Uint8Array): Mismatch | number {
    const stamp = readDataStamp(got);
    const mine = stamp !== null && sameSpec(stamp, this.spec);
    if (last < 0) {
      if (!mine) return -1;
      return this.mismatch("unexpected", block, lba, this.worker, "no data of this run (this worker has not written the block yet)", describe(got));
    }
    const want = dataFor({ ...this.spec, worker: this.worker, step: last }, lba);
    if (equal(want, got)) return last;
    const kind: MismatchKind = !mine ? (isZero(got) ? "lost_write" : "corrupt") : stamp.lba !== lba ? "misdirected" : stamp.step < last ? "stale" : "corrupt";
    return this.mismatch(kind, block, lba, this.worker, `step ${last}, written by this worker last`, describe(got));
  }

  private checkOther(block: number, owner: number, lba: number, floor: number, got: Uint8Array): Mismatch | number {
    const stamp = readDataStamp(got);
    if (stamp === null || !sameSpec(stamp, this.spec)) {
      if (floor < 0) return -1; // never seen written in this run: anything else is fine
      return this.mismatch(isZero(got) ? "lost_write" : "corrupt", block, lba, owner, `worker ${owner}'s data at step ≥ ${floor} (seen before)`, describe(got));
    }
    const expectWhat = `worker ${owner}'s data for LBA ${lba}${floor >= 0 ? ` at step ≥ ${floor}` : ""}`;
    if (stamp.lba !== lba) return this.mismatch("misdirected", block, lba, owner, expectWhat, describe(got));
    if (stamp.worker !== owner || blockAt(this.spec, stamp) !== block) return this.mismatch("wrong_block", block, lba, owner, expectWhat, describe(got));
    if (!equal(dataFor(stamp, lba), got)) return this.mismatch("corrupt", block, lba, owner, expectWhat, `${describe(got)}, its bytes differ from that step's data`);
    if (stamp.step < floor) return this.mismatch("stale", block, lba, owner, expectWhat, describe(got));
    return stamp.step;
  }

  private mismatch(kind: MismatchKind, block: number, lba: number, owner: number, expected: string, found: string): Mismatch {
    return { kind, block, lba, owner, expected, found };
  }
}

function sameSpec(a: PatternSpec, b: PatternSpec): boolean {
  return a.seed_id === b.seed_id && a.workers === b.workers && a.blocks === b.blocks && a.block_sectors === b.block_sectors && a.base_lba === b.base_lba;
}

/** What a sector holds, for people. */
export function describe(got: Uint8Array): string {
  if (isZero(got)) return "zeros";
  const s = readDataStamp(got);
  if (s === null) return "data that is not verify data";
  return `worker ${s.worker}'s data of step ${s.step} for LBA ${s.lba} (seed ${s.seed_id})`;
}

function isZero(b: Uint8Array): boolean {
  for (let i = 0; i < b.length; i++) if (b[i] !== 0) return false;
  return true;
}

function equal(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}
