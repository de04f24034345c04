/**
 * A simulated machine: a name, a local clock that is skewed, drifts and jumps, and a sequence of
 * incarnations (process lifetimes). `boot()` starts an incarnation and hands back its Env; `crash()`
 * ends it: its timers never fire, its connections drop, its drive handles go silent, so whatever
 * the old code was awaiting never resolves, exactly like RAM lost with a killed process.
 */
import type { Env, Logger, TimerHandle } from "../src/engine/env.ts";
import type { Network } from "../src/engine/net/conn.ts";
import type { Prng } from "./prng.ts";
import type { SimEvent, World } from "./world.ts";

/**
 * local(g) = offset + rate × g + jumps. Timers run on elapsed local time (rate only), like a
 * monotonic timer; now_ms() also sees jumps, which is what code comparing timestamps would see.
 */
export class SimClock {
  jumped_ms = 0;

  constructor(
    private readonly world: World,
    readonly offset_ms: number,
    public rate: number,
  ) {}

  now_ms(): number {
    return this.offset_ms + this.rate * this.world.now + this.jumped_ms;
  }

  /** Global virtual ms until `local_ms` of this node's elapsed time have passed. */
  toGlobal(local_ms: number): number {
    return Math.max(0, local_ms) / this.rate;
  }
}

/** "process": the daemon is killed, its kernel lives on (sockets reset, page cache kept).
 *  "power": the machine stops (sockets go silent, volatile drive caches are lost or torn). */
export type CrashKind = "process" | "power";

export class Incarnation {
  alive = true;
  /** Set when the incarnation dies: how it died. */
  death: CrashKind | null = null;
  private readonly deathHooks: (() => void)[] = [];
  private readonly timers = new Set<SimEvent>();
  /**
   * Paused (SIGSTOP): alive, its sockets open and its kernel acknowledging what arrives, but its
   * code runs nothing: timers due, data received and drive completions wait here, in order,
   * until resume(), and then run (stale requests and all).
   */
  paused = false;
  private held: (() => void)[] = [];
  private readonly resumeHooks = new Set<() => void>();

  constructor(
    readonly node: SimNode,
    readonly number: number,
  ) {}

  /** Runs `fn` when this incarnation dies (closing sockets, detaching drives). */
  onDeath(fn: () => void): void {
    if (!this.alive) fn();
    else this.deathHooks.push(fn);
  }

  /** Schedules `fn` in this incarnation's local time; never runs after the incarnation died. */
  after(local_ms: number, fn: () => void): TimerHandle {
    const world = this.node.world;
    const ev = world.after(this.node.clock.toGlobal(local_ms), () => {
      this.timers.delete(ev);
      if (this.alive) this.run(fn);
    });
    this.timers.add(ev);
    return {
      cancel: () => {
        ev.cancelled = true;
        this.timers.delete(ev);
      },
    };
  }

  /** Runs `fn` now, or at resume() while paused (code of this process only). */
  run(fn: () => void): void {
    if (this.paused) this.held.push(fn);
    else fn();
  }

  /** Called at resume() (a socket hands over what its kernel kept meanwhile); returns a remover. */
  onResume(fn: () => void): () => void {
    this.resumeHooks.add(fn);
    return () => this.resumeHooks.delete(fn);
  }

  pause(): void {
    this.paused = true;
  }

  resume(): void {
    if (!this.paused || !this.alive) return;
    this.paused = false;
    const held = this.held;
    this.held = [];
    // In their order, each its own event, as a process catching up would run them.
    for (const fn of held) this.node.world.after(0, () => this.alive && this.run(fn));
    for (const h of [...this.resumeHooks]) h();
  }

  die(kind: CrashKind): void {
    if (!this.alive) return;
    this.alive = false;
    this.paused = false;
    this.held = [];
    this.resumeHooks.clear();
    this.death = kind;
    for (const t of this.timers) t.cancelled = true;
    this.timers.clear();
    for (const h of this.deathHooks.splice(0)) h();
  }
}

export interface SimNetworkLike {
  /** The network as seen by one incarnation of one node. */
  forIncarnation(inc: Incarnation): Network;
}

export class SimNode {
  readonly clock: SimClock;
  current: Incarnation | null = null;
  private incarnations = 0;

  constructor(
    readonly world: World,
    readonly name: string,
    private readonly net: SimNetworkLike,
    clock: { offset_ms: number; rate: number },
  ) {
    this.clock = new SimClock(world, clock.offset_ms, clock.rate);
  }

  get alive(): boolean {
    return this.current?.alive ?? false;
  }

  /** Starts a new incarnation (the previous one must be dead) and returns its environment. */
  boot(): { env: Env; inc: Incarnation } {
    if (this.current?.alive) throw new Error(`${this.name} is already running`);
    const inc = new Incarnation(this, ++this.incarnations);
    this.current = inc;
    this.world.log(this.name, `boot #${inc.number}`);
    return { env: this.envFor(inc), inc };
  }

  crash(kind: CrashKind = "process"): void {
    if (!this.current?.alive) return;
    this.world.log(this.name, `CRASH (${kind}) #${this.current.number}`);
    this.current.die(kind);
  }

  /** SIGSTOP: the process stays, answering nothing, until resume(). */
  pause(): void {
    if (!this.current?.alive || this.current.paused) return;
    this.world.log(this.name, `PAUSE #${this.current.number}`);
    this.current.pause();
  }

  /** SIGCONT: everything that waited runs, in order. */
  resume(): void {
    if (!this.current?.alive || !this.current.paused) return;
    this.world.log(this.name, `RESUME #${this.current.number}`);
    this.current.resume();
  }

  jumpClock(delta_ms: number): void {
    this.clock.jumped_ms += delta_ms;
    this.world.log(this.name, `clock jumps ${delta_ms >= 0 ? "+" : ""}${delta_ms} ms`);
  }

  private envFor(inc: Incarnation): Env {
    const world = this.world;
    const rng: Prng = world.prng.fork(`${this.name}#${inc.number}`);
    const name = this.name;
    const log = (level: string) => (msg: string, fields?: Record<string, unknown>) => {
      if (inc.alive) world.log(name, `${level} ${msg}${fields ? ` ${fmtFields(fields)}` : ""}`);
    };
    const logger: Logger = { debug: log("debug"), info: log("info"), warn: log("warn"), error: log("error") };
    return {
      clock: { now_ms: () => this.clock.now_ms() },
      timers: {
        after: (delay_ms, fn) => inc.after(delay_ms, fn),
        every: (period_ms, fn) => {
          let handle: TimerHandle | null = null;
          let stopped = false;
          const tick = () => {
            if (stopped) return;
            handle = inc.after(period_ms, tick);
            fn();
          };
          handle = inc.after(period_ms, tick);
          return {
            cancel: () => {
              stopped = true;
              handle?.cancel();
            },
          };
        },
      },
      random: { u32: () => rng.u32(), fill: (b) => rng.fill(b) },
      net: this.net.forIncarnation(inc),
      log: logger,
    };
  }
}

function fmtFields(fields: Record<string, unknown>): string {
  return Object.entries(fields)
    .map(([k, v]) => `${k}=${typeof v === "string" ? v : safeJson(v)}`)
    .join(" ");
}

function safeJson(v: unknown): string {
  try {
    return JSON.stringify(v) ?? String(v);
  } catch {
    return String(v);
  }
}
