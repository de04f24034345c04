/**
 * The simulated world: one virtual clock, one event queue, one seeded PRNG and one trace.
 *
 * Determinism: events run one at a time in (time, sequence) order. After each event the loop
 * yields one macrotask, so every promise continuation the event started (the real protocol code is
 * async) runs to completion before the next event. Nothing else in the process schedules work, so
 * the same seed gives the same interleaving, the same trace and the same result.
 */
import { Prng } from "./prng.ts";

export interface SimEvent {
  readonly at: number;
  readonly seq: number;
  readonly fn: () => void;
  cancelled: boolean;
}

export class SimFailure extends Error {}

class EventHeap {
  private readonly items: SimEvent[] = [];

  get size(): number {
    return this.items.length;
  }

  push(e: SimEvent): void {
    const a = this.items;
    a.push(e);
    let i = a.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!before(a[i]!, a[p]!)) break;
      [a[i], a[p]] = [a[p]!, a[i]!];
      i = p;
    }
  }

  peek(): SimEvent | undefined {
    return this.items[0];
  }

  pop(): SimEvent | undefined {
    const a = this.items;
    const top = a[0];
    const last = a.pop();
    if (a.length > 0 && last) {
      a[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < a.length && before(a[l]!, a[m]!)) m = l;
        if (r < a.length && before(a[r]!, a[m]!)) m = r;
        if (m === i) break;
        [a[i], a[m]] = [a[m]!, a[i]!];
        i = m;
      }
    }
    return top;
  }
}

function before(x: SimEvent, y: SimEvent): boolean {
  return x.at < y.at || (x.at === y.at && x.seq < y.seq);
}

const yieldMacrotask = () => new Promise<void>((r) => setImmediate(r));

/** Keeps the trace's hash (for determinism checks) and its last lines (for failure reports). */
class Trace {
  hash = 0n;
  lines = 0;
  private readonly ring: string[];
  private head = 0;
  /** Every line, when the caller wants the whole trace (replay of one seed). */
  all: string[] | null = null;

  constructor(keep: number) {
    this.ring = new Array<string>(keep);
  }

  add(line: string): void {
    this.hash = BigInt(Bun.hash.wyhash(line, this.hash));
    this.ring[this.head] = line;
    this.head = (this.head + 1) % this.ring.length;
    this.lines++;
    this.all?.push(line);
  }

  last(n: number): string[] {
    const out: string[] = [];
    const count = Math.min(n, this.lines, this.ring.length);
    for (let i = count; i > 0; i--) out.push(this.ring[(this.head - i + this.ring.length) % this.ring.length]!);
    return out;
  }
}

export class World {
  readonly prng: Prng;
  now = 0;
  private seq = 0;
  private readonly queue = new EventHeap();
  private readonly trace: Trace;
  /** The first failure (a checker violation, an invariant, an exception escaping a node). */
  failure: string | null = null;
  events = 0;
  /** A run that needs more events than this is an event storm (a busy loop in virtual time). */
  max_events = 1_000_000;

  constructor(
    readonly seed: number,
    opts: { keep_trace?: number; full_trace?: boolean } = {},
  ) {
    this.prng = new Prng(seed);
    this.trace = new Trace(opts.keep_trace ?? 200);
    if (opts.full_trace) this.trace.all = [];
  }

  /** Runs `fn` at virtual time `at` (never in the past). */
  at(at: number, fn: () => void): SimEvent {
    const e: SimEvent = { at: Math.max(at, this.now), seq: this.seq++, fn, cancelled: false };
    this.queue.push(e);
    return e;
  }

  after(delay_ms: number, fn: () => void): SimEvent {
    return this.at(this.now + Math.max(0, delay_ms), fn);
  }

  log(node: string, what: string): void {
    this.trace.add(`${this.now.toFixed(3).padStart(12)} ${node.padEnd(8)} ${what}`);
  }

  fail(why: string): void {
    if (this.failure) return;
    this.failure = why;
    this.log("sim", `FAILURE ${why}`);
  }

  get traceHash(): string {
    return this.trace.hash.toString(16).padStart(16, "0");
  }

  get traceLines(): number {
    return this.trace.lines;
  }

  lastTrace(n: number): string[] {
    return this.trace.last(n);
  }

  fullTrace(): string[] {
    return this.trace.all ?? [];
  }

  /**
   * Runs events until `done()` holds, virtual time passes `deadline`, a failure is recorded, or
   * nothing is left to do. Returns why it stopped.
   */
  async run(done: () => boolean, deadline: number): Promise<"done" | "deadline" | "failed" | "idle"> {
    for (;;) {
      if (this.failure) return "failed";
      if (done()) return "done";
      const next = this.queue.peek();
      if (!next) return "idle";
      if (next.at > deadline) {
        this.now = deadline;
        return "deadline";
      }
      this.queue.pop();
      if (next.cancelled) continue;
      this.now = next.at;
      if (++this.events > this.max_events) {
        this.fail(`event storm: more than ${this.max_events} events by virtual time ${this.now.toFixed(3)} ms`);
        return "failed";
      }
      try {
        next.fn();
      } catch (e) {
        this.fail(`uncaught exception in an event: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`);
      }
      await yieldMacrotask();
    }
  }

  /** Lets virtual time pass by `ms` (running everything due meanwhile). */
  async advance(ms: number): Promise<void> {
    const until = this.now + ms;
    const r = await this.run(() => false, until);
    // Nothing left to do still lets the time pass (timeouts are "nothing happened for a while").
    if (r === "idle") this.now = Math.max(this.now, until);
  }
}
