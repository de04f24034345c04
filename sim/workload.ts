/**
 * A simulated application: lanes of random reads, writes (some FUA) and flushes on one volume
 * through a block client (the real NBD client over the simulated network). Every invocation and
 * completion goes to the checker, which validates each read as it completes.
 */
import { type Env, sleep } from "../src/engine/env.ts";
import type { Checker } from "./checker.ts";
import type { Prng } from "./prng.ts";
import { encodeSectors, SECTOR } from "./sector-value.ts";

export interface BlockClient {
  read(offset: number, length: number): Promise<Uint8Array>;
  write(offset: number, data: Uint8Array, fua: boolean): Promise<void>;
  flush(): Promise<void>;
}

export interface WorkloadOptions {
  lanes: number;
  /** Sectors [0, range_sectors) are used: small, so clients collide on the same blocks. */
  range_sectors: number;
  max_sectors: number;
  think_ms: [number, number];
  /** Probabilities of each operation; reads take the rest. */
  p_write: number;
  p_flush: number;
  p_fua: number;
}

export const DEFAULT_WORKLOAD: WorkloadOptions = {
  lanes: 2,
  range_sectors: 512,
  max_sectors: 24,
  think_ms: [5, 120],
  p_write: 0.5,
  p_flush: 0.08,
  p_fua: 0.2,
};

export class Workload {
  private stopped = false;
  private running = 0;
  private idle: (() => void) | null = null;
  ops = 0;
  /** Invocation times of operations that failed. */
  readonly errors: number[] = [];

  constructor(
    private readonly env: Env,
    private readonly prng: Prng,
    private readonly checker: Checker,
    private readonly client: string,
    private readonly volume: number,
    private readonly dev: BlockClient,
    private readonly opts: WorkloadOptions,
  ) {}

  start(): void {
    for (let i = 0; i < this.opts.lanes; i++) {
      this.running++;
      void this.lane().finally(() => {
        if (--this.running === 0) this.idle?.();
      });
    }
  }

  /** Lanes finish their current operation and stop; resolves when all have. */
  stop(): Promise<void> {
    this.stopped = true;
    if (this.running === 0) return Promise.resolve();
    return new Promise((r) => {
      this.idle = r;
    });
  }

  private async lane(): Promise<void> {
    const { opts, prng } = this;
    while (!this.stopped) {
      const r = prng.float();
      if (r < opts.p_flush) await this.flush();
      else {
        const n = prng.int(1, opts.max_sectors + 1);
        const first = prng.int(0, opts.range_sectors - n + 1);
        if (r < opts.p_flush + opts.p_write) await this.write(first, n, prng.chance(opts.p_fua));
        else await this.read(first, n);
      }
      this.ops++;
      await sleep(this.env, prng.range(opts.think_ms[0], opts.think_ms[1]));
    }
  }

  /** After the workload: flush, then read every sector of the range. Returns how many failed. */
  async verifyAll(): Promise<number> {
    const before = this.errors.length;
    await this.flush();
    const step = this.opts.max_sectors;
    for (let s = 0; s < this.opts.range_sectors; s += step) {
      await this.read(s, Math.min(step, this.opts.range_sectors - s));
    }
    return this.errors.length - before;
  }

  async write(first: number, n: number, fua: boolean): Promise<void> {
    const inv = this.checker.now;
    const w = this.checker.writeStart(this.client, this.volume, first, n, fua);
    const buf = new Uint8Array(n * SECTOR);
    encodeSectors(buf, w.id, this.volume, first);
    this.env.log.debug(`write #${w.id} v${this.volume} ${first}+${n}${fua ? " fua" : ""}`);
    try {
      await this.dev.write(first * SECTOR, buf, fua);
      this.env.log.debug(`write #${w.id} ok`);
      this.checker.writeEnd(w, true);
    } catch (e) {
      this.checker.writeEnd(w, false);
      this.errors.push(inv);
      this.env.log.info("workload write failed", { id: w.id, error: (e as Error).message });
    }
  }

  async read(first: number, n: number): Promise<void> {
    const inv = this.checker.now;
    try {
      const data = await this.dev.read(first * SECTOR, n * SECTOR);
      this.checker.readEnd(this.client, this.volume, first, data, inv);
    } catch (e) {
      this.checker.readFailed();
      this.errors.push(inv);
      this.env.log.info("workload read failed", { error: (e as Error).message });
    }
  }

  async flush(): Promise<void> {
    const inv = this.checker.now;
    const t = this.checker.flushStart(this.client, this.volume);
    this.env.log.debug(`flush v${this.volume}`);
    try {
      await this.dev.flush();
      this.env.log.debug(`flush v${this.volume} ok`);
      this.checker.flushEnd(t, true);
    } catch (e) {
      this.checker.flushEnd(t, false);
      this.errors.push(inv);
      this.env.log.info("workload flush failed", { error: (e as Error).message });
    }
  }
}
