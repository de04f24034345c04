/**
 * What the fuzz tests share: a seeded PRNG, a bounded run over seeds that names the failing seed
 * and how to replay it, random split points, and a server-side Conn that a test drives by hand
 * (chunks in, sends captured, pause honoured like a kernel buffer).
 *
 * Replay one seed: FUZZ_SEED=N FUZZ_SEEDS=1 node_modules/.bin/bun test FILE. Go wider:
 * FUZZ_SEEDS=100000. The default is small enough for CI (a few seconds per file).
 */
import type { Conn } from "../../src/engine/net/conn.ts";

export class Rng {
  private s: number;
  constructor(seed: number) {
    this.s = (seed >>> 0) ^ 0x9e3779b9 || 1;
    for (let i = 0; i < 4; i++) this.u32();
  }
  u32(): number {
    // xorshift32: fast, and the same sequence on every machine.
    let s = this.s;
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    this.s = s >>> 0;
    return this.s;
  }
  /** 0 ≤ n < max. */
  int(max: number): number {
    return max <= 1 ? 0 : this.u32() % max;
  }
  chance(p: number): boolean {
    return this.u32() / 0x1_0000_0000 < p;
  }
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)]!;
  }
  bytes(n: number): Uint8Array {
    const b = new Uint8Array(n);
    for (let i = 0; i < n; i++) b[i] = this.u32() & 0xff;
    return b;
  }
  /** A length that is usually small, sometimes at a boundary, sometimes huge. */
  length(max: number): number {
    const k = this.int(10);
    if (k < 5) return this.int(64);
    if (k < 8) return this.int(max + 1);
    return this.pick([0, 1, max - 1, max, max + 1, 0xffff_ffff, 2 ** 31]);
  }
  /** Flips a few bits, cuts or extends: a near miss of a valid encoding. */
  mutate(b: Uint8Array): Uint8Array {
    let out = b.slice();
    const k = this.int(4);
    if (k === 0 && out.length > 0) out = out.subarray(0, this.int(out.length));
    else if (k === 1) {
      const more = new Uint8Array(out.length + 1 + this.int(16));
      more.set(out);
      more.set(this.bytes(more.length - out.length), out.length);
      out = more;
    } else {
      for (let i = 1 + this.int(4); i > 0 && out.length > 0; i--) out[this.int(out.length)]! ^= 1 << this.int(8);
    }
    return out;
  }
}

export const FUZZ_SEED = Number(process.env.FUZZ_SEED ?? 1);

/** How many seeds a fuzz test runs: its own default, or FUZZ_SEEDS. */
export function seeds(byDefault: number): number {
  return Number(process.env.FUZZ_SEEDS ?? byDefault);
}

/**
 * Runs body for seeds FUZZ_SEED .. FUZZ_SEED+count-1; a failure is rethrown naming the seed and
 * the line that replays it.
 */
export async function forEachSeed(file: string, count: number, body: (rng: Rng, seed: number) => void | Promise<void>): Promise<void> {
  for (let seed = FUZZ_SEED; seed < FUZZ_SEED + count; seed++) {
    try {
      await body(new Rng(seed), seed);
    } catch (e) {
      const err = e as Error;
      const replay = `FUZZ_SEED=${seed} FUZZ_SEEDS=1 node_modules/.bin/bun test ${file}`;
      console.error(`fuzz failure at seed ${seed}; replay: ${replay}`);
      throw new Error(`seed ${seed} (replay: ${replay}): ${err.stack ?? err.message}`);
    }
  }
}

/**
 * What a fuzz run reached (counters of the deep paths), printed; with enough seeds every one must
 * be above zero, so that a generator that stopped reaching a path shows. A replay of one seed
 * checks nothing here.
 */
export function expectReached(what: string, reached: Record<string, number>, count: number): void {
  console.log(`${what} reached:`, reached);
  if (count < 50) return;
  for (const [path, n] of Object.entries(reached)) {
    if (n === 0) throw new Error(`${what}: ${count} seeds never reached '${path}': the generator no longer gets there`);
  }
}

/** Cuts bytes at random points (sometimes one byte at a time, sometimes whole). */
export function splitRandomly(rng: Rng, b: Uint8Array): Uint8Array[] {
  const out: Uint8Array[] = [];
  const mode = rng.int(4);
  let at = 0;
  while (at < b.length) {
    // Byte by byte only where it is cheap; a long stream in tiny pieces costs time, not coverage.
    const tiny = b.length <= 8192 ? 1 : 1 + rng.int(256);
    const n = mode === 0 ? tiny : mode === 1 ? b.length : 1 + rng.int(mode === 2 ? 4096 : 70_000);
    out.push(b.subarray(at, at + n));
    at += n;
  }
  return out;
}

export function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/**
 * The server's end of a connection, driven by the test: deliver() hands a chunk to the server
 * (held while it paused, as a kernel buffer would), sends are captured, close is recorded.
 * onData throwing is the one thing that must never happen: it is recorded and fails the test.
 */
export class FuzzConn implements Conn {
  readonly remote = "fuzz-peer";
  onData: ((chunk: Uint8Array) => void) | null = null;
  onClose: ((reason: string) => void) | null = null;
  sent: Uint8Array[] = [];
  closed = false;
  paused = false;
  /** The server paused this connection at least once (its bounds were reached). */
  pausedEver = false;
  private held: Uint8Array[] = [];
  thrown: unknown[] = [];

  send(bytes: Uint8Array): boolean {
    if (this.closed) return false;
    this.sent.push(bytes.slice());
    return true;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    queueMicrotask(() => this.hangUp("closed"));
  }

  pause(): void {
    this.paused = true;
    this.pausedEver = true;
  }

  resume(): void {
    if (!this.paused) return;
    this.paused = false;
    queueMicrotask(() => this.pump());
  }

  /** The peer sends a chunk. */
  deliver(chunk: Uint8Array): void {
    if (this.closed) return;
    this.held.push(chunk.slice());
    this.pump();
  }

  /** The peer sends bytes cut at random points, letting the server run between some chunks. */
  async deliverSplit(rng: Rng, bytes: Uint8Array): Promise<void> {
    for (const chunk of splitRandomly(rng, bytes)) {
      this.deliver(chunk);
      if (rng.chance(0.3)) await settle(1);
    }
  }

  /** The peer goes away. */
  peerCloses(): void {
    if (this.closed) return;
    this.closed = true;
    this.hangUp("closed by peer");
  }

  get heldBytes(): number {
    return this.held.reduce((n, c) => n + c.length, 0);
  }

  private pump(): void {
    while (!this.paused && !this.closed && this.held.length > 0) {
      const c = this.held.shift()!;
      try {
        this.onData?.(c);
      } catch (e) {
        this.thrown.push(e);
      }
    }
  }

  private hangUp(reason: string): void {
    const cb = this.onClose;
    this.onClose = null;
    this.onData = null;
    this.held = [];
    try {
      cb?.(reason);
    } catch (e) {
      this.thrown.push(e);
    }
  }
}

/** Lets microtasks and promise chains run (a few macrotask turns). */
export async function settle(turns = 3): Promise<void> {
  for (let i = 0; i < turns; i++) await new Promise((r) => setImmediate(r));
}
