/**
 * The simulated network: byte-stream connections between named nodes, with per-direction link
 * state and packet-level faults turned into what TCP shows an application (delays, stalls, resets,
 * timeouts), never into corrupted or reordered bytes.
 *
 * Model. A connection has two pipes (one per direction). A pipe is a queue of segments (SYN,
 * SYN-ACK, refusal, data, FIN, RST), each with a due time that never goes below the previous one's,
 * so a stream stays in order. At its due time the head segment crosses the link if that direction
 * is passable (up and not clogged); otherwise the pipe is "held" (TCP retransmitting) until the
 * direction comes back. A sender tracks its unacknowledged segments: a segment counts as
 * acknowledged once delivered while the reverse direction is passable (or once it comes back), and
 * a sender whose oldest unacknowledged segment is older than user_timeout_ms gives up.
 *
 * Kernel vs process. Sockets belong to an Incarnation. When it dies the app hears nothing more;
 * segments already sent stay in flight; a "process" death resets open connections (the kernel
 * lives on), a "power" death sends nothing. Any data reaching a socket that is not open is
 * answered with a RST, which is how a peer of a power-killed node learns when it next sends.
 *
 * Kernel timers (user and connect timeouts) run on global virtual time: clock drift of a few
 * hundred ppm does not matter at their granularity.
 */
import { type Address, type Conn, type Listener, type Network, parseAddress } from "../src/engine/net/conn.ts";
import type { Incarnation, SimNetworkLike } from "./node.ts";
import type { Prng } from "./prng.ts";
import type { SimEvent, World } from "./world.ts";

export interface NetProfile {
  /** One-way latency of a segment, uniform in [min, max]. */
  latency_ms: [number, number];
  /** Per-segment probabilities. Loss costs retransmission timeouts; duplicates are discarded by
   *  the receiver; reordering becomes a short extra hold; split cuts a send into pieces (and
   *  coalesces adjacent due chunks on delivery). */
  loss: number;
  dup: number;
  reorder: number;
  split: number;
  /** Retransmission timeout: what one lost segment costs (doubling on repeated loss). */
  rto_ms: number;
  /** A sender whose oldest unacknowledged byte is this old gives up ("timed out"). */
  user_timeout_ms: number;
  connect_timeout_ms: number;
  /** Held segments older than this are gone from the network (kept ≥ user_timeout_ms). */
  msl_ms: number;
}

/** No faults and a fixed small latency: for tests that check exact behaviour. */
export function quietProfile(): NetProfile {
  return {
    latency_ms: [0.1, 0.1],
    loss: 0,
    dup: 0,
    reorder: 0,
    split: 0,
    rto_ms: 200,
    user_timeout_ms: 10_000,
    connect_timeout_ms: 3_000,
    msl_ms: 20_000,
  };
}

/** A profile drawn per seed: some seeds are clean, some are nasty. */
export function randomProfile(prng: Prng): NetProfile {
  const lo = prng.range(0.02, 0.5);
  const hi = prng.range(lo, 2);
  // A third of the seeds keep each fault off entirely, so clean paths get exercised too.
  const fault = (max: number) => (prng.chance(1 / 3) ? 0 : prng.range(0, max));
  const user_timeout_ms = prng.pick([3_000, 5_000, 10_000, 30_000]);
  return {
    latency_ms: [lo, hi],
    loss: fault(0.05),
    dup: fault(0.02),
    reorder: fault(0.05),
    split: fault(0.5),
    rto_ms: prng.pick([5, 20, 50, 200]),
    user_timeout_ms,
    connect_timeout_ms: prng.pick([1_000, 3_000, 10_000]),
    msl_ms: 2 * user_timeout_ms,
  };
}

/** Unix sockets and TCP loopback: same machine, no faults. */
const LOCAL_LATENCY_MS = 0.005;
/** Ephemeral ports handed out for port 0, per host. */
const FIRST_EPHEMERAL_PORT = 40_000;
/** Repeated losses of one segment back off at most this many times. */
const MAX_BACKOFFS = 6;

type SegKind = "syn" | "synack" | "refuse" | "data" | "fin" | "rst";

interface Segment {
  readonly kind: SegKind;
  readonly bytes: Uint8Array | null;
  readonly sentAt: number;
  due: number;
  readonly dup: boolean;
  /** Reached an open socket: acknowledgeable once the reverse direction is passable. */
  delivered: boolean;
}

/** One TCP or unix connection: endpoint 0 connected, endpoint 1 accepted (null until the SYN lands). */
class Connection {
  readonly ends: [SimConn, SimConn | null];
  readonly pipes: [Pipe, Pipe];

  constructor(
    readonly net: SimNetwork,
    readonly id: number,
    readonly address: Address,
    /** Where the connection points: { host, port } or { unix } on the connecting node. */
    readonly target: { unix: string } | { host: string; port: number },
    readonly fromHost: string,
    readonly toHost: string,
    readonly local: boolean,
    client: Incarnation,
  ) {
    this.ends = [new SimConn(this, 0, client, local && "unix" in target ? "unix" : toHost), null];
    this.pipes = [new Pipe(this, 0), new Pipe(this, 1)];
  }

  label(dir: 0 | 1): string {
    const [a, b] = dir === 0 ? [this.fromHost, this.toHost] : [this.toHost, this.fromHost];
    return `${a}→${b} c${this.id}`;
  }
}

/** One direction of one connection: the in-order segment queue plus the sender's retransmit state. */
class Pipe {
  private queue: Segment[] = [];
  /** Sent stream segments not yet acknowledged, oldest first (acks are cumulative, so a prefix goes). */
  private unacked: Segment[] = [];
  private lastDue = 0;
  private pumpEvent: SimEvent | null = null;
  private utEvent: SimEvent | null = null;
  /** The head is due but the direction is not passable: waiting for it to come back. */
  held = false;
  readonly from: string;
  readonly to: string;

  constructor(
    readonly conn: Connection,
    readonly dir: 0 | 1,
  ) {
    this.from = dir === 0 ? conn.fromHost : conn.toHost;
    this.to = dir === 0 ? conn.toHost : conn.fromHost;
  }

  get net(): SimNetwork {
    return this.conn.net;
  }

  get reverse(): Pipe {
    return this.conn.pipes[this.dir === 0 ? 1 : 0];
  }

  sender(): SimConn | null {
    return this.conn.ends[this.dir];
  }

  receiver(): SimConn | null {
    return this.conn.ends[this.dir === 0 ? 1 : 0];
  }

  /** Segments the link still has to carry or the sender still waits an ack for. */
  get busy(): boolean {
    return this.queue.length > 0 || this.unacked.length > 0;
  }

  push(kind: SegKind, bytes: Uint8Array | null = null): void {
    const net = this.net;
    const now = net.world.now;
    const d = this.conn.local ? { delay: LOCAL_LATENCY_MS, dup: false } : net.sampleDelay();
    const seg: Segment = { kind, bytes, sentAt: now, due: Math.max(this.lastDue, now + d.delay), dup: d.dup, delivered: false };
    this.lastDue = seg.due;
    this.queue.push(seg);
    // The stream's contents are retransmitted until acknowledged; RSTs and refusals are not.
    if (kind === "data" || kind === "fin" || kind === "synack") {
      this.unacked.push(seg);
      this.armUserTimeout();
    }
    this.schedule();
    net.track(this);
  }

  /** The receiving kernel discards everything not yet delivered (after a RST). */
  abort(): void {
    this.queue = [];
    this.unacked = [];
    this.held = false;
    if (this.pumpEvent) this.pumpEvent.cancelled = true;
    this.pumpEvent = null;
    if (this.utEvent) this.utEvent.cancelled = true;
    this.utEvent = null;
    this.net.track(this);
  }

  /** The direction came back: held segments go out on the next retransmission. */
  release(): void {
    if (!this.held) return;
    this.held = false;
    const net = this.net;
    // A retransmission timer is somewhere in its period when the link heals.
    const at = net.world.now + net.sampleDelay().delay + net.prng.range(0, net.profile.rto_ms);
    for (const s of this.queue) s.due = Math.max(s.due, at);
    this.lastDue = Math.max(this.lastDue, at);
    this.schedule();
  }

  /** Cumulative ack: everything delivered so far is acknowledged (the reverse is passable). */
  ack(): void {
    while (this.unacked[0]?.delivered) this.unacked.shift();
    this.net.track(this);
  }

  /** The sender gave up: no more retransmission (what is in flight stays in flight). */
  stopRetransmitting(): void {
    this.unacked = [];
    if (this.utEvent) this.utEvent.cancelled = true;
    this.utEvent = null;
    this.net.track(this);
  }

  private schedule(): void {
    const head = this.queue[0];
    if (!head || this.held) return;
    if (this.pumpEvent && this.pumpEvent.at <= head.due) return;
    if (this.pumpEvent) this.pumpEvent.cancelled = true;
    this.pumpEvent = this.net.world.at(head.due, () => this.pump());
  }

  private pump(): void {
    this.pumpEvent = null;
    const net = this.net;
    const now = net.world.now;
    while (this.queue.length > 0 && this.queue[0]!.due <= now) {
      if (!this.conn.local && !net.pipePassable(this)) {
        this.held = true;
        net.world.log("net", `hold ${this.conn.label(this.dir)} (${this.queue.length} segments)`);
        break;
      }
      this.dropExpired(now);
      const seg = this.queue.shift();
      if (!seg) break;
      const segs = [seg];
      let bytes = seg.bytes;
      // Adjacent due chunks may reach the application as one (a deliberate fault for decoders).
      while (
        bytes &&
        !this.conn.local &&
        this.queue[0]?.kind === "data" &&
        this.queue[0].due <= now &&
        net.prng.chance(net.profile.split)
      ) {
        const next = this.queue.shift()!;
        segs.push(next);
        bytes = concat(bytes, next.bytes!);
      }
      net.arrive(this, seg.kind, bytes, segs);
    }
    this.schedule();
    net.track(this);
  }

  /**
   * Segments held longer than the maximum segment lifetime are gone. A lost stream segment leaves
   * a gap no later segment can cross, so the rest of the stream goes with it; RSTs stand alone.
   */
  private dropExpired(now: number): void {
    const msl = this.net.profile.msl_ms;
    if (!this.queue[0] || now - this.queue[0].sentAt <= msl) return;
    let gap = false;
    const before = this.queue.length;
    this.queue = this.queue.filter((s) => {
      const expired = now - s.sentAt > msl;
      if (s.kind === "rst") return !expired;
      if (expired) gap = true;
      return !gap;
    });
    this.net.world.log("net", `expire ${this.conn.label(this.dir)} ${before - this.queue.length} segments older than msl`);
  }

  private armUserTimeout(): void {
    if (this.utEvent || this.unacked.length === 0) return;
    const world = this.net.world;
    const at = this.unacked[0]!.sentAt + this.net.profile.user_timeout_ms;
    this.utEvent = world.at(at, () => {
      this.utEvent = null;
      const s = this.sender();
      const oldest = this.unacked[0];
      // A dead sender's kernel socket (if any) is unobservable: nobody left to tell.
      if (!s || !s.inc.alive || !oldest) return;
      // Same expression as the deadline above: `now - sentAt >= ut` can round below it and re-arm forever.
      if (world.now >= oldest.sentAt + this.net.profile.user_timeout_ms) {
        this.stopRetransmitting();
        s.timedOut();
      } else {
        this.armUserTimeout();
      }
    });
  }
}

type InboxItem = { bytes: Uint8Array } | { close: string };

/**
 * One endpoint, as the application sees it (Conn) and as its kernel does (state).
 * connecting: SYN sent; open; closing: the app closed, the kernel still flushes; gone: no socket.
 */
class SimConn implements Conn {
  state: "connecting" | "open" | "closing" | "gone" = "connecting";
  onClose: ((reason: string) => void) | null = null;
  private dataHandler: ((chunk: Uint8Array) => void) | null = null;
  /** What the application has not been handed yet: data waiting for onData, then a close. */
  private inbox: InboxItem[] = [];
  private drainEvent: SimEvent | null = null;
  private closeFired = false;
  /** pause(): data waits in the inbox (the simulated kernel buffer) until resume(). */
  private paused = false;
  /** Removes our hook on the incarnation's resume (a paused process catches up on its sockets). */
  private readonly unhookResume: () => void;
  /** The connect() promise, while the handshake runs. */
  pending: { resolve: (c: Conn) => void; reject: (e: Error) => void } | null = null;

  constructor(
    readonly conn: Connection,
    readonly side: 0 | 1,
    readonly inc: Incarnation,
    readonly remote: string,
  ) {
    this.unhookResume = inc.onResume(() => {
      if (this.inbox.length > 0) this.scheduleDrain();
    });
  }

  get onData(): ((chunk: Uint8Array) => void) | null {
    return this.dataHandler;
  }

  /** Data that arrived while no handler was set is handed over in a following event. */
  set onData(fn: ((chunk: Uint8Array) => void) | null) {
    this.dataHandler = fn;
    if (fn && this.inbox.length > 0) this.scheduleDrain();
  }

  get out(): Pipe {
    return this.conn.pipes[this.side];
  }

  get name(): string {
    return this.side === 0 ? this.conn.fromHost : this.conn.toHost;
  }

  send(bytes: Uint8Array): boolean {
    if (this.state !== "open") return false;
    if (bytes.length === 0) return true;
    for (const piece of this.conn.net.split(bytes, this.conn.local)) this.out.push("data", piece);
    return true;
  }

  close(): void {
    if (this.state !== "open") return;
    this.state = "closing";
    this.inbox = [];
    this.conn.net.forget(this);
    this.conn.net.world.log("net", `close c${this.conn.id} by ${this.name}`);
    this.out.push("fin");
    // Like Bun, the closing side hears its own close too, later, never re-entrantly.
    this.conn.net.world.after(0, () => this.fireClose("closed"));
  }

  pause(): void {
    this.paused = true;
  }

  resume(): void {
    if (!this.paused) return;
    this.paused = false;
    if (this.inbox.length > 0) this.scheduleDrain();
  }

  /** Data from the peer, in stream order. */
  receive(bytes: Uint8Array): void {
    if (this.inbox.length === 0 && this.dataHandler && !this.paused && !this.inc.paused) this.dataHandler(bytes);
    else {
      // The chunk is only valid during a call, and this one is kept past it.
      this.inbox.push({ bytes: bytes.slice() });
      this.drain(false);
    }
  }

  /** The kernel socket ends; the app hears `reason` after any data it has not been handed yet. */
  shut(reason: string): void {
    this.state = "gone";
    this.conn.net.forget(this);
    this.inbox.push({ close: reason });
    this.drain(false);
  }

  timedOut(): void {
    this.conn.net.world.log("net", `timeout c${this.conn.id} at ${this.name} (${this.state})`);
    if (this.state === "open") this.shut("timed out");
    else if (this.state === "closing") this.state = "gone";
  }

  /** The incarnation died: the app hears nothing more. Returns whether the socket was open. */
  kill(): boolean {
    this.unhookResume();
    const wasOpen = this.state === "open";
    this.state = "gone";
    this.closeFired = true;
    this.inbox = [];
    this.pending = null;
    this.dataHandler = null;
    this.onClose = null;
    return wasOpen;
  }

  private scheduleDrain(): void {
    this.drainEvent ??= this.conn.net.world.after(0, () => {
      this.drainEvent = null;
      this.drain(true);
    });
  }

  /**
   * Hands the inbox to the app in order. An item whose handler is not set yet waits one event (the
   * code awaiting connect() gets to set it); if still unset then, data is dropped as Bun drops it.
   */
  private drain(final: boolean): void {
    while (this.inbox.length > 0 && !this.closeFired && this.inc.alive && !this.inc.paused) {
      const item = this.inbox[0]!;
      if (this.paused && !("close" in item)) return; // resume() schedules the rest
      const handler = "close" in item ? this.onClose : this.dataHandler;
      if (!handler && !final) return this.scheduleDrain();
      this.inbox.shift();
      if ("close" in item) return this.fireClose(item.close);
      if (this.dataHandler) this.dataHandler(item.bytes);
      else this.conn.net.world.log("net", `drop c${this.conn.id} ${item.bytes.length}B at ${this.name}: no onData`);
    }
  }

  private fireClose(reason: string): void {
    // A dead incarnation's code hears nothing (a closing socket outlives its process).
    if (this.closeFired || !this.inc.alive) return;
    if (this.inc.paused) return this.inc.run(() => this.fireClose(reason));
    this.closeFired = true;
    this.unhookResume();
    this.inbox = [];
    const cb = this.onClose;
    this.onClose = null;
    this.dataHandler = null;
    cb?.(reason);
  }
}

class SimListener implements Listener {
  closed = false;

  constructor(
    readonly net: SimNetwork,
    readonly host: string,
    readonly key: string,
    readonly address: Address,
    readonly inc: Incarnation,
    readonly onConn: (conn: Conn) => void,
  ) {}

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.net.unlisten(this);
  }
}

interface Host {
  /** "tcp:PORT" or "unix:/path" → the listener bound there. */
  listeners: Map<string, SimListener>;
  nextPort: number;
}

interface IncState {
  conns: Set<SimConn>;
  listeners: Set<SimListener>;
}

const linkKey = (from: string, to: string) => `${from}>${to}`;
const serviceKey = (client: string, service: string, dir: "to" | "from") => `${client}>${service}>${dir}`;

export class SimNetwork implements SimNetworkLike {
  readonly prng: Prng;
  private readonly hosts = new Map<string, Host>();
  private readonly incs = new WeakMap<Incarnation, IncState>();
  /** Directions currently down (by partition or setDirection) and clogged (by clog). */
  private readonly down = new Set<string>();
  /** Services cut off from one client host, by direction (cutService). */
  private readonly serviceDown = new Set<string>();
  private readonly clogged = new Set<string>();
  /** Pipes with work per direction, so link changes find what to release or acknowledge. */
  private readonly active = new Map<string, Set<Pipe>>();
  private nextConnId = 1;

  constructor(
    readonly world: World,
    readonly profile: NetProfile = quietProfile(),
  ) {
    this.prng = world.prng.fork("net");
    if (profile.msl_ms < profile.user_timeout_ms) throw new Error("msl_ms must be at least user_timeout_ms");
  }

  forIncarnation(inc: Incarnation): Network {
    this.incState(inc);
    return {
      connect: (address) => this.connect(inc, address),
      listen: (address, onConn) => this.listen(inc, address, onConn),
    };
  }

  // ---- controls for scenarios and the fault scheduler ----

  /** Whether segments can cross from → to right now (up and not clogged). */
  passable(from: string, to: string): boolean {
    if (from === to) return true;
    const k = linkKey(from, to);
    return !this.down.has(k) && !this.clogged.has(k);
  }

  /**
   * Whether a pipe's segments can cross now: its hosts' direction, and its connection's service
   * (the server's port) in that direction (cutService).
   */
  pipePassable(pipe: Pipe): boolean {
    if (!this.passable(pipe.from, pipe.to)) return false;
    const t = pipe.conn.target;
    if (this.serviceDown.size === 0 || "unix" in t) return true;
    return !this.serviceDown.has(serviceKey(pipe.conn.fromHost, `${pipe.conn.toHost}:${t.port}`, pipe.dir === 0 ? "to" : "from"));
  }

  /**
   * Cuts (or restores) the connections of host `client` to the service at `service` (host:port)
   * in one direction ("to": the requests, "from": the answers) or both, and no other traffic
   * between the two hosts: a client cut off from one server's TOMA but not from its target.
   */
  cutService(client: string, service: string, dir: "to" | "from" | "both", down: boolean): void {
    for (const d of dir === "both" ? (["to", "from"] as const) : [dir]) {
      const k = serviceKey(client, service, d);
      if (down) this.serviceDown.add(k);
      else this.serviceDown.delete(k);
    }
    this.world.log("net", `service ${client}→${service} ${dir} ${down ? "down" : "up"}`);
    const host = service.slice(0, service.lastIndexOf(":"));
    if (!down) {
      this.linkChanged(client, host);
      this.linkChanged(host, client);
    }
  }

  isUp(from: string, to: string): boolean {
    return from === to || !this.down.has(linkKey(from, to));
  }

  setDirection(from: string, to: string, up: boolean): void {
    if (from === to) return;
    const k = linkKey(from, to);
    if (this.down.has(k) === !up) return;
    if (up) this.down.delete(k);
    else this.down.add(k);
    this.world.log("net", `link ${from}→${to} ${up ? "up" : "down"}`);
    this.linkChanged(from, to);
  }

  /** Cuts every direction between the sides (or only A→B / B→A). */
  partition(sideA: string[], sideB: string[], opts: { oneWay?: "AtoB" | "BtoA" } = {}): void {
    this.world.log("net", `partition [${sideA.join(",")}] | [${sideB.join(",")}]${opts.oneWay ? ` ${opts.oneWay} only` : ""}`);
    for (const a of sideA) {
      for (const b of sideB) {
        if (opts.oneWay !== "BtoA") this.setDirection(a, b, false);
        if (opts.oneWay !== "AtoB") this.setDirection(b, a, false);
      }
    }
  }

  /** Brings every direction up. Clogs are a scenario's business and stay until unclogged. */
  heal(): void {
    this.world.log("net", "heal");
    for (const k of [...this.serviceDown]) {
      const [client, service, dir] = k.split(">") as [string, string, "to" | "from"];
      this.cutService(client, service, dir, false);
    }
    for (const k of [...this.down]) {
      const [from, to] = k.split(">") as [string, string];
      this.setDirection(from, to, true);
    }
  }

  /** Holds all traffic on these directions (SYNs too) until unclog. */
  clog(pairs: [string, string][]): void {
    for (const [from, to] of pairs) {
      if (from === to || this.clogged.has(linkKey(from, to))) continue;
      this.clogged.add(linkKey(from, to));
      this.world.log("net", `clog ${from}→${to}`);
    }
  }

  unclog(from: string, to: string): void {
    if (!this.clogged.delete(linkKey(from, to))) return;
    this.world.log("net", `unclog ${from}→${to}`);
    this.linkChanged(from, to);
  }

  // ---- the Network seen by one incarnation ----

  private async connect(inc: Incarnation, address: Address): Promise<Conn> {
    // A dead incarnation's code never gets an answer, like anything else it awaits.
    if (!inc.alive) return await new Promise<Conn>(() => {});
    const target = parseAddress(address);
    const from = inc.node.name;
    const toHost = "unix" in target ? from : target.host;
    const conn = new Connection(this, this.nextConnId++, address, target, from, toHost, toHost === from, inc);
    const a = conn.ends[0];
    this.incState(inc).conns.add(a);
    this.world.log("net", `connect c${conn.id} ${from} → ${address}`);
    return await new Promise<Conn>((resolve, reject) => {
      a.pending = { resolve, reject };
      conn.pipes[0].push("syn");
      this.world.after(this.profile.connect_timeout_ms, () => {
        if (!a.pending) return;
        a.pending = null;
        a.state = "gone";
        this.forget(a);
        this.world.log("net", `connect c${conn.id} ${from} → ${address} timed out`);
        inc.run(() => reject(new Error(`connect to ${address} timed out`)));
      });
    });
  }

  private async listen(inc: Incarnation, address: Address, onConn: (conn: Conn) => void): Promise<Listener> {
    if (!inc.alive) return await new Promise<Listener>(() => {});
    const a = parseAddress(address);
    const name = inc.node.name;
    const host = this.host(name);
    let key: string;
    let bound: Address;
    if ("unix" in a) {
      key = `unix:${a.unix}`;
      bound = address;
    } else {
      if (a.host !== name) throw new Error(`cannot listen on ${address}: ${a.host} is not this node (${name})`);
      let port = a.port;
      if (port === 0) {
        while (host.listeners.has(`tcp:${host.nextPort}`)) host.nextPort++;
        port = host.nextPort++;
      }
      key = `tcp:${port}`;
      bound = `${name}:${port}`;
    }
    if (host.listeners.has(key)) throw new Error(`cannot listen on ${address}: address in use`);
    const l = new SimListener(this, name, key, bound, inc, onConn);
    host.listeners.set(key, l);
    this.incState(inc).listeners.add(l);
    this.world.log("net", `listen ${bound} by ${name}#${inc.number}`);
    return l;
  }

  unlisten(l: SimListener): void {
    const host = this.host(l.host);
    if (host.listeners.get(l.key) === l) host.listeners.delete(l.key);
    this.incs.get(l.inc)?.listeners.delete(l);
    this.world.log("net", `unlisten ${l.address}`);
  }

  // ---- internals used by pipes and endpoints ----

  /** Latency of one segment on a faulty link, with what loss and reordering add. */
  sampleDelay(): { delay: number; dup: boolean } {
    const p = this.profile;
    let delay = this.prng.range(p.latency_ms[0], p.latency_ms[1]);
    // Each loss costs one retransmission timeout, doubling like TCP's backoff.
    for (let k = 0; k < MAX_BACKOFFS && this.prng.chance(p.loss); k++) delay += p.rto_ms * 2 ** k;
    // TCP reassembles reordered segments: the application only sees a short extra wait.
    if (this.prng.chance(p.reorder)) delay += this.prng.range(0, 2 * p.latency_ms[1]);
    return { delay, dup: this.prng.chance(p.dup) };
  }

  /** Cuts a send at random byte positions (no copies: pieces are views of the caller's buffer). */
  split(bytes: Uint8Array, local: boolean): Uint8Array[] {
    if (local || bytes.length < 2 || !this.prng.chance(this.profile.split)) return [bytes];
    const cuts = new Set<number>();
    const n = this.prng.int(1, 4);
    for (let i = 0; i < n; i++) cuts.add(this.prng.int(1, bytes.length));
    const out: Uint8Array[] = [];
    let at = 0;
    for (const c of [...cuts].sort((x, y) => x - y)) {
      out.push(bytes.subarray(at, c));
      at = c;
    }
    out.push(bytes.subarray(at));
    return out;
  }

  /** A segment (or coalesced data segments) reaches the other end of `pipe`. */
  arrive(pipe: Pipe, kind: SegKind, bytes: Uint8Array | null, segs: Segment[]): void {
    const conn = pipe.conn;
    const to = pipe.receiver();
    const label = conn.label(pipe.dir);
    const dup = segs.some((s) => s.dup) ? " (+dup discarded)" : "";
    switch (kind) {
      case "syn":
        return this.onSyn(conn);
      case "synack": {
        const a = conn.ends[0];
        if (a.state === "connecting" && a.pending && a.inc.alive) {
          a.state = "open";
          this.acknowledge(pipe, segs);
          const p = a.pending;
          a.pending = null;
          this.world.log("net", `established c${conn.id}${dup}`);
          a.inc.run(() => p.resolve(a));
        } else this.answerReset(pipe, "synack");
        return;
      }
      case "refuse": {
        const a = conn.ends[0];
        if (a.state !== "connecting" || !a.pending) return;
        const p = a.pending;
        a.pending = null;
        a.state = "gone";
        this.forget(a);
        this.world.log("net", `refused c${conn.id} ${conn.address}`);
        a.inc.run(() => p.reject(new Error(`connect to ${conn.address}: connection refused`)));
        return;
      }
      case "data":
        if (to?.state !== "open") return this.answerReset(pipe, `${bytes!.length}B`);
        this.world.log("net", `${label} ${bytes!.length}B${segs.length > 1 ? ` (${segs.length} coalesced)` : ""}${dup}`);
        this.acknowledge(pipe, segs);
        to.receive(bytes!);
        return;
      case "fin":
        if (to?.state === "open") {
          this.world.log("net", `fin ${label}`);
          this.acknowledge(pipe, segs);
          to.shut("closed by peer");
        } else if (to?.state === "closing") {
          // Both sides closed: the normal end of a connection.
          this.acknowledge(pipe, segs);
          to.state = "gone";
        } else this.answerReset(pipe, "fin");
        return;
      case "rst":
        if (!to || (to.state !== "open" && to.state !== "closing")) return;
        this.world.log("net", `reset ${label}`);
        to.out.abort();
        if (to.state === "open") to.shut("connection reset");
        else to.state = "gone";
        return;
    }
  }

  /** The SYN reached the target host: its kernel accepts (listener) or refuses. */
  private onSyn(conn: Connection): void {
    const back = conn.pipes[1];
    const key = "unix" in conn.target ? `unix:${conn.target.unix}` : `tcp:${conn.target.port}`;
    const l = this.hosts.get(conn.toHost)?.listeners.get(key);
    if (!l || !l.inc.alive) {
      // No listener (or the process behind it is dead): the kernel answers.
      this.world.log("net", `refuse c${conn.id} ${conn.address}`);
      back.push("refuse");
      return;
    }
    const b = new SimConn(conn, 1, l.inc, conn.local && "unix" in conn.target ? "unix" : conn.fromHost);
    b.state = "open";
    conn.ends[1] = b;
    this.incState(l.inc).conns.add(b);
    this.world.log("net", `accept c${conn.id} ${l.address} from ${conn.fromHost}`);
    // The SYN-ACK goes first, so anything the accepting side sends follows it.
    back.push("synack");
    l.inc.run(() => l.onConn(b));
  }

  /** Data for a socket that is not open: the kernel answers with a RST. */
  private answerReset(pipe: Pipe, what: string): void {
    this.world.log("net", `${pipe.conn.label(pipe.dir)} ${what} to a closed socket: RST`);
    pipe.reverse.push("rst");
  }

  private acknowledge(pipe: Pipe, segs: Segment[]): void {
    for (const s of segs) s.delivered = true;
    if (pipe.conn.local || this.pipePassable(pipe.reverse)) pipe.ack();
  }

  /** A direction became passable (or not): release what it held, let acks through the other way. */
  private linkChanged(from: string, to: string): void {
    if (!this.passable(from, to)) return;
    for (const p of [...(this.active.get(linkKey(from, to)) ?? [])]) p.release();
    for (const p of [...(this.active.get(linkKey(to, from)) ?? [])]) p.ack();
  }

  /** Keeps `active` to the pipes with work, so long runs do not accumulate dead connections. */
  track(pipe: Pipe): void {
    if (pipe.conn.local) return;
    const k = linkKey(pipe.from, pipe.to);
    let set = this.active.get(k);
    if (pipe.busy) {
      if (!set) this.active.set(k, (set = new Set()));
      set.add(pipe);
    } else if (set?.delete(pipe) && set.size === 0) this.active.delete(k);
  }

  /** The endpoint no longer belongs to its incarnation (closed, reset, timed out). */
  forget(c: SimConn): void {
    this.incs.get(c.inc)?.conns.delete(c);
  }

  private host(name: string): Host {
    let h = this.hosts.get(name);
    if (!h) this.hosts.set(name, (h = { listeners: new Map(), nextPort: FIRST_EPHEMERAL_PORT }));
    return h;
  }

  private incState(inc: Incarnation): IncState {
    let s = this.incs.get(inc);
    if (!s) {
      const state: IncState = { conns: new Set(), listeners: new Set() };
      this.incs.set(inc, state);
      inc.onDeath(() => this.died(inc, state));
      s = state;
    }
    return s;
  }

  private died(inc: Incarnation, s: IncState): void {
    for (const l of [...s.listeners]) l.close();
    for (const c of [...s.conns]) {
      const wasOpen = c.kill();
      // A killed process's kernel resets its connections; a machine without power says nothing.
      if (wasOpen && inc.death === "process") {
        this.world.log("net", `reset c${c.conn.id} from ${c.name} (process died)`);
        c.out.push("rst");
      }
    }
    s.conns.clear();
  }
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}
