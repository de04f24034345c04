/**
 * The fault injector: while it runs, faults of every kind the foundation must survive arrive at
 * random (exponential gaps), each undone after a random while; `stop()` ends injection, and
 * `healAll()` brings every node, link and drive back so the liveness phase can begin.
 */
import type { ClientSim, ServerSim, SimCluster } from "./cluster.ts";
import type { SimMedium } from "./drive.ts";
import type { Prng } from "./prng.ts";
import type { SimEvent } from "./world.ts";

export type FaultKind =
  | "target_process_crash"
  | "server_power_loss"
  | "client_crash"
  | "partition"
  | "one_way_link"
  | "clog"
  | "clock_jump"
  | "drive_unplug"
  | "drive_move"
  | "process_pause";

export type FaultWeights = Partial<Record<FaultKind, number>>;

export const DEFAULT_FAULT_WEIGHTS: FaultWeights = {
  target_process_crash: 3,
  server_power_loss: 2,
  client_crash: 2,
  partition: 3,
  one_way_link: 3,
  clog: 2,
  clock_jump: 2,
  drive_unplug: 1,
  drive_move: 1,
};

/**
 * A process paused (SIGSTOP) for 5–20 s, longer than the data path's deadlines and the I/O
 * timeout, then resumed with what it received meanwhile: not among the defaults yet (`--pause`
 * adds it), so that the CI sweeps keep their seeds.
 */
export const PAUSE_FAULT_WEIGHT = 2;
export const PAUSE_MS: [number, number] = [5000, 20_000];

export interface FaultOptions {
  mean_gap_ms: number;
  /** How long a fault lasts before it is undone. */
  duration_ms: [number, number];
  weights: FaultWeights;
}

export class FaultInjector {
  private running = false;
  private next: SimEvent | null = null;
  /** Undo actions scheduled but not yet run: healAll() runs them at once. */
  private readonly undo = new Map<SimEvent, () => void>();
  readonly injected: Record<string, number> = {};

  constructor(
    private readonly cluster: SimCluster,
    private readonly prng: Prng,
    private readonly opts: FaultOptions,
  ) {}

  start(): void {
    this.running = true;
    this.schedule();
  }

  stop(): void {
    this.running = false;
    if (this.next) this.next.cancelled = true;
  }

  /** Undoes every outstanding fault now, restarts whatever is down and replugs every drive. */
  healAll(): void {
    for (const [ev, fn] of this.undo) {
      ev.cancelled = true;
      fn();
    }
    this.undo.clear();
    const c = this.cluster;
    c.net.heal();
    for (const s of c.servers) s.node.resume();
    for (const cl of c.clients) cl.node.resume();
    for (const s of c.servers) if (!s.node.alive) c.bootServer(s);
    for (const m of c.media) if (!m.plugged) c.plug(m, c.serverOf(m) ?? c.servers[0]!);
    for (const cl of c.clients) if (!cl.node.alive) c.bootClient(cl);
    c.world.log("faults", "healed: every node up, every link up, every drive plugged");
  }

  private schedule(): void {
    if (!this.running) return;
    const gap = -Math.log(1 - this.prng.float()) * this.opts.mean_gap_ms;
    this.next = this.cluster.world.after(gap, () => {
      this.inject();
      this.schedule();
    });
  }

  private later(fn: () => void, [lo, hi]: [number, number] = this.opts.duration_ms): void {
    const ev = this.cluster.world.after(this.prng.range(lo, hi), () => {
      this.undo.delete(ev);
      fn();
    });
    this.undo.set(ev, fn);
  }

  private pickKind(): FaultKind | null {
    const entries = Object.entries(this.opts.weights).filter(([, w]) => (w ?? 0) > 0) as [FaultKind, number][];
    const total = entries.reduce((a, [, w]) => a + w, 0);
    if (total === 0) return null;
    let r = this.prng.float() * total;
    for (const [k, w] of entries) {
      r -= w;
      if (r < 0) return k;
    }
    return entries[entries.length - 1]![0];
  }

  private inject(): void {
    const kind = this.pickKind();
    if (!kind) return;
    this.injected[kind] = (this.injected[kind] ?? 0) + 1;
    const c = this.cluster;
    const p = this.prng;
    const nodes = [...c.servers.map((s) => s.name), ...c.clients.map((x) => x.name)];
    switch (kind) {
      case "target_process_crash":
      case "server_power_loss": {
        const s: ServerSim = p.pick(c.servers);
        if (!s.node.alive) return;
        c.crashServer(s, kind === "server_power_loss" ? "power" : "process");
        this.later(() => {
          if (!s.node.alive) c.bootServer(s);
        });
        return;
      }
      case "process_pause": {
        const n = p.pick([...c.servers.map((s) => s.node), ...c.clients.map((x) => x.node)]);
        if (!n.alive || n.current?.paused) return;
        n.pause();
        this.later(() => n.resume(), PAUSE_MS);
        return;
      }
      case "client_crash": {
        const cl: ClientSim = p.pick(c.clients);
        if (!cl.node.alive) return;
        c.crashClient(cl);
        this.later(() => {
          if (!cl.node.alive) c.bootClient(cl);
        });
        return;
      }
      case "partition": {
        const side = p.shuffle([...nodes]);
        const cut = p.int(1, side.length);
        const a = side.slice(0, cut);
        const b = side.slice(cut);
        c.net.partition(a, b);
        this.later(() => {
          for (const x of a) for (const y of b) {
            c.net.setDirection(x, y, true);
            c.net.setDirection(y, x, true);
          }
        });
        return;
      }
      case "one_way_link": {
        const from = p.pick(nodes);
        const to = p.pick(nodes.filter((n) => n !== from));
        c.net.setDirection(from, to, false);
        this.later(() => c.net.setDirection(from, to, true));
        return;
      }
      case "clog": {
        const pairs: [string, string][] = [];
        for (const a of nodes) for (const b of nodes) if (a !== b && p.chance(0.3)) pairs.push([a, b]);
        c.net.clog(pairs);
        // Released one by one, in random order.
        for (const [a, b] of p.shuffle(pairs)) this.later(() => c.net.unclog(a, b));
        return;
      }
      case "clock_jump": {
        const all = [...c.servers.map((s) => s.node), ...c.clients.map((x) => x.node)];
        const n = p.pick(all);
        const mag = p.pick([1000, 60_000, 3_600_000]);
        n.jumpClock(p.chance(0.5) ? -mag : mag);
        return;
      }
      case "drive_unplug":
      case "drive_move": {
        const m: SimMedium = p.pick(c.media);
        if (!m.plugged) return;
        const from = c.serverOf(m)!;
        c.unplug(m);
        const to = kind === "drive_move" ? p.pick(c.servers.filter((s) => s !== from)) : from;
        if (kind === "drive_move" && c.spec.toma_cluster) {
          // A TOMA cluster keeps each TOMA's hard state on its own server's drives: a drive that
          // never comes home leaves that TOMA waiting for it (replacing the server is an
          // operator's act, not modelled here). It is moved away, served there, and brought back.
          c.plug(m, to);
          this.later(() => {
            if (!m.plugged || c.serverOf(m) === from) return;
            c.unplug(m);
            c.plug(m, from);
          });
          return;
        }
        this.later(() => {
          if (!m.plugged) c.plug(m, to);
        });
        return;
      }
    }
  }
}
