/**
 * A raw socket for attack-minded tests: bytes in and out exactly as a test writes them, with
 * the sender honouring TCP backpressure (a write resolves once the kernel took every byte), so a
 * flooding test measures the server, not its own send queue. Plus /proc readings of a daemon.
 */
import { readFileSync } from "node:fs";
import type { Socket } from "bun";
import { ExactReader } from "../../src/engine/nbd/test-kit.ts";

export type RawAddress = { hostname: string; port: number } | { unix: string };

export function hostPort(a: string): RawAddress {
  if (a.startsWith("unix:")) return { unix: a.slice(5) };
  const i = a.lastIndexOf(":");
  return { hostname: a.slice(0, i), port: Number(a.slice(i + 1)) };
}

export class RawSocket {
  private readonly reader = new ExactReader();
  private pending: { bytes: Uint8Array; resolve: () => void; reject: (e: Error) => void }[] = [];
  private sock!: Socket<undefined>;
  /** Set once the connection ended (by either side), with why. */
  closeReason: string | null = null;
  readonly closed: Promise<string>;
  private onClosed!: (why: string) => void;
  /** When set, received bytes go here instead of the read() buffer (a flood's reply counter). */
  onData: ((chunk: Uint8Array) => void) | null = null;

  private constructor() {
    this.closed = new Promise((r) => (this.onClosed = r));
  }

  static async connect(addr: RawAddress): Promise<RawSocket> {
    const s = new RawSocket();
    s.sock = await Bun.connect<undefined>({
      ...addr,
      data: undefined,
      socket: {
        data: (_sock, chunk) => s.received(chunk),
        drain: () => s.drain(),
        close: () => s.ended("closed"),
        end: () => s.ended("closed by the server"),
        error: (_sock, e) => s.ended(`error: ${e.message}`),
      },
    } as Parameters<typeof Bun.connect<undefined>>[0]);
    return s;
  }

  /** Resolves once the kernel took every byte (rejects if the connection ends first). */
  write(bytes: Uint8Array | string): Promise<void> {
    const b = typeof bytes === "string" ? new TextEncoder().encode(bytes) : bytes;
    if (this.closeReason !== null) return Promise.reject(new Error(`connection closed (${this.closeReason})`));
    return new Promise((resolve, reject) => {
      this.pending.push({ bytes: b, resolve, reject });
      if (this.pending.length === 1) this.drain();
    });
  }

  /** Exactly n bytes, or a rejection when the connection ends first. */
  read(n: number): Promise<Uint8Array> {
    return this.reader.read(n);
  }

  end(): void {
    this.sock.end();
  }

  /** Closes at once (RST where the kernel does so), without waiting for queued bytes. */
  terminate(): void {
    this.sock.terminate();
  }

  private drain(): void {
    while (this.pending.length > 0) {
      const head = this.pending[0]!;
      const n = this.sock.write(head.bytes);
      if (n < 0) return this.ended("write failed");
      if (n < head.bytes.length) {
        head.bytes = head.bytes.subarray(n);
        return;
      }
      this.pending.shift();
      head.resolve();
    }
  }

  private received(chunk: Uint8Array): void {
    if (this.onData) return this.onData(chunk);
    this.reader.push(chunk);
  }

  private ended(why: string): void {
    if (this.closeReason !== null) return;
    this.closeReason = why;
    for (const p of this.pending) p.reject(new Error(`connection closed (${why})`));
    this.pending = [];
    this.onClosed(why);
    this.reader.end(why);
  }
}

/** A process's resident memory in MiB, from /proc/PID/status. */
export function rssMiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  if (!m) throw new Error(`no VmRSS for pid ${pid}`);
  return Number(m[1]) / 1024;
}

/**
 * Samples a process's RSS every period_ms until stop() is called: the peak seen, and the
 * samples themselves for the failure message.
 */
export function sampleRss(pid: number, period_ms = 50): { readonly peak: number; readonly samples: number[]; stop(): void } {
  const samples: number[] = [rssMiB(pid)];
  const t = setInterval(() => {
    try {
      samples.push(rssMiB(pid));
    } catch {}
  }, period_ms);
  return {
    get peak() {
      return Math.max(...samples);
    },
    samples,
    stop: () => clearInterval(t),
  };
}

/**
 * Polls a process's RSS until it is at most `limit` MiB; returns the last reading either way (the
 * caller asserts on it, so a failure shows the number). Bounded by `give_up_ms`, not asserted on.
 */
export async function rssSettles(pid: number, limit: number, give_up_ms = 60_000): Promise<number> {
  const deadline = performance.now() + give_up_ms;
  let now = rssMiB(pid);
  while (now > limit && performance.now() < deadline) {
    await Bun.sleep(250);
    now = rssMiB(pid);
  }
  return now;
}

/**
 * A process's RSS once it has stopped moving (two readings a second apart within 2 MiB): the
 * baseline a test compares against, taken after the previous test's memory went back.
 */
export async function quietRss(pid: number, give_up_ms = 30_000): Promise<number> {
  const deadline = performance.now() + give_up_ms;
  let last = rssMiB(pid);
  for (;;) {
    await Bun.sleep(1000);
    const now = rssMiB(pid);
    if (Math.abs(now - last) < 2 || performance.now() > deadline) return Math.min(now, last);
    last = now;
  }
}
