/**
 * One verify worker: pattern worker w of a run. It writes its own blocks step after step (the
 * pattern says which block and what data), and between writes reads random blocks of any worker
 * and checks them (verify-check.ts). It talks to nobody: every worker knows what every block may
 * hold from (seed, worker, step). On the first mismatch or I/O error it stops and says what it
 * found. Deterministic but for the device's timing: its choices come from (seed, worker).
 */
import { blockAt, blockLbas, dataFor, ownedBlocks, type PatternSpec, hashWords, mix32 } from "./pattern.ts";
import { DATA_BYTES } from "./sector.ts";
import { type Mismatch, ReaderState } from "./verify-check.ts";

/** What the worker needs of the volume: an NBD connection, or any block device. */
export interface VerifyDevice {
  read(offset: number, dst: Uint8Array): Promise<void>;
  write(offset: number, src: Uint8Array, fua: boolean): Promise<void>;
  flush(): Promise<void>;
}

export interface VerifyWorkerOptions {
  spec: PatternSpec;
  worker: number;
  /** Reads of random blocks after each write (default 1). */
  reads_per_write?: number;
  /** Polled between I/Os: the run's time is up (the caller owns the clock). */
  should_stop: () => boolean;
  /** Stop after this many writes at most. */
  max_steps?: number;
}

export interface VerifyWorkerResult {
  worker: number;
  writes: number;
  reads: number;
  /** Sectors read and checked. */
  sectors_checked: number;
  /** The next step this worker would have written. */
  next_step: number;
  mismatch: Mismatch | null;
  /** An I/O that failed (the device's error), with where. */
  error: string | null;
}

export async function runVerifyWorker(dev: VerifyDevice, opts: VerifyWorkerOptions): Promise<VerifyWorkerResult> {
  const { spec, worker } = opts;
  const reads_per_write = opts.reads_per_write ?? 1;
  if (!Number.isInteger(reads_per_write) || reads_per_write < 0) throw new Error(`reads_per_write ${reads_per_write} must be a whole number ≥ 0`);
  const state = new ReaderState(spec, worker);
  const res: VerifyWorkerResult = { worker, writes: 0, reads: 0, sectors_checked: 0, next_step: 0, mismatch: null, error: null };
  const bytes = spec.block_sectors * DATA_BYTES;
  const wbuf = new Uint8Array(bytes);
  const rbuf = new Uint8Array(bytes);
  let rng = hashWords(spec.seed_id, worker, 0x7665_7269) || 1;
  const random = (n: number) => {
    rng = mix32((rng + 0x9e3779b9) >>> 0);
    return Math.floor((rng / 2 ** 32) * n);
  };
  const owns = ownedBlocks(spec, worker) > 0;
  let step = 0;
  while (!opts.should_stop() && (opts.max_steps === undefined || step < opts.max_steps)) {
    if (owns) {
      const block = blockAt(spec, { worker, step });
      const { first_lba } = blockLbas(spec, block);
      for (let i = 0; i < spec.block_sectors; i++) {
        dataFor({ ...spec, worker, step }, first_lba + i, wbuf.subarray(i * DATA_BYTES, (i + 1) * DATA_BYTES));
      }
      try {
        await dev.write(first_lba * DATA_BYTES, wbuf, false);
      } catch (e) {
        res.error = `write of step ${step} (block ${block}, LBA ${first_lba}) failed: ${(e as Error).message}`;
        break;
      }
      state.wrote(block, step);
      res.writes++;
      step++;
      res.next_step = step;
    }
    for (let r = 0; r < reads_per_write; r++) {
      const block = random(spec.blocks);
      const { first_lba } = blockLbas(spec, block);
      try {
        await dev.read(first_lba * DATA_BYTES, rbuf);
      } catch (e) {
        res.error = `read of block ${block} (LBA ${first_lba}) failed: ${(e as Error).message}`;
        break;
      }
      res.reads++;
      const m = state.check(block, rbuf);
      if (m !== null) {
        res.mismatch = m;
        break;
      }
      res.sectors_checked += spec.block_sectors;
    }
    if (res.error !== null || res.mismatch !== null) break;
  }
  if (res.error === null && res.mismatch === null) {
    try {
      await dev.flush();
    } catch (e) {
      res.error = `final flush failed: ${(e as Error).message}`;
    }
  }
  return res;
}
