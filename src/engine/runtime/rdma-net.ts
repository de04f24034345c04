/**
 * RDMA links for the real runtime: reliable-connected queue pairs set up with rdma_cm (ffi/rdmacm.ts),
 * each carrying the data-path frames through net/rdma-framing.ts. A FrameLink like any other:
 * Session and TargetConnection do not know they run on it.
 *
 * Completions reach the event loop two ways. While a link has work (a SEND posted, a completion
 * seen in the last SPIN_MS), its completion queue is polled on every event-loop turn
 * (setImmediate): no thread hop, no syscall. Once it has been quiet that long it asks for a
 * completion event (ibv_req_notify_cq), polls once more to close the race, and leaves the
 * completion channel's fd to ffi/fd-watch.ts, whose thread blocks in poll(2) and wakes this one.
 * The rdma_cm event channel (connection requests, establishment, disconnects) is watched the same
 * way, always.
 *
 * Not measured for speed: this machine has no RDMA device, and the emulated guests that test it
 * (tests/vm/rdma.test.ts, soft-RoCE) are for function only.
 */
import { lookup } from "node:dns/promises";
import { type CmEvent, CmEvents, type CmId } from "../../ffi/rdmacm.ts";
import { fdWatch } from "../../ffi/fd-watch.ts";
import { CONSTANTS, type Endpoint, newCompletions, rdmaProblem, VerbsError } from "../../ffi/verbs.ts";
import type { FrameLink, Transport } from "../net/frame-link.ts";
import { decodePrivateData, encodePrivateData, type PeerShape, RdmaFraming, type RdmaShape } from "../net/rdma-framing.ts";
import type { Header } from "../wire/header.ts";

/**
 * Per link: 64 receive slots of 64 KiB (4 MiB registered, the same again for sending). A 4 KiB
 * request or answer takes 4.2 KiB of a message and one tick's frames share messages, so 64
 * messages in flight carry far more than a session's 256 requests; a 4 MiB WRITE is 65 messages.
 */
export const DEFAULT_SHAPE: RdmaShape = { send_slots: 64, recv_slots: 64, slot_bytes: 64 * 1024 };
/** A link with no completion for this long stops polling and waits for a completion event. */
const SPIN_MS = 0.2;
/** rdma_cm address and route resolution, each. */
const RESOLVE_TIMEOUT_MS = 2000;
/** A whole connect: resolution, connection request and answer (below the TOMA's 5 s connect timeout). */
const CONNECT_TIMEOUT_MS = 4000;
/** close() waits this long at most for posted SENDs to complete before disconnecting. */
const CLOSE_GRACE_MS = 1000;

type Handler = (ev: CmEvent) => void;

/** The process's rdma_cm channel, its watcher, and who handles which id's events. */
class Runtime {
  readonly events = new CmEvents();
  readonly handlers = new Map<CmId, Handler>();
  private readonly watch = fdWatch();
  private watched = 0;

  /** Events of `id` go to `h` (connection requests: those of the listener it arrived on). */
  on(id: CmId, h: Handler): void {
    this.handlers.set(id, h);
    if (this.watched++ === 0) this.watch.watch(this.events.fd, () => this.dispatch());
  }

  off(id: CmId): void {
    if (!this.handlers.delete(id)) return;
    if (--this.watched === 0) this.watch.unwatch(this.events.fd);
  }

  private dispatch(): void {
    for (let ev = this.events.take(); ev !== null; ev = this.events.take()) {
      const h = ev.type === "connect_request" && ev.listener !== null ? this.handlers.get(ev.listener) : this.handlers.get(ev.id);
      if (h !== undefined) h(ev);
      else if (ev.type === "connect_request") ev.id.reject();
    }
    if (this.watched > 0) this.watch.rearm(this.events.fd);
  }
}

let runtime: Runtime | null = null;

function rt(): Runtime {
  const problem = rdmaProblem();
  if (problem !== null) throw new VerbsError(problem);
  runtime ??= new Runtime();
  return runtime;
}

/** Polls the completion queues of busy links on every event-loop turn. */
class Poller {
  private readonly active = new Set<RdmaLink>();
  private running = false;
  private readonly tickBound = () => this.tick();

  activate(l: RdmaLink): void {
    l.lastWork = performance.now();
    this.active.add(l);
    if (!this.running) {
      this.running = true;
      setImmediate(this.tickBound);
    }
  }

  remove(l: RdmaLink): void {
    this.active.delete(l);
  }

  private tick(): void {
    const now = performance.now();
    for (const l of this.active) {
      if (l.pollOnce() > 0) l.lastWork = now;
      else if (now - l.lastWork > SPIN_MS && l.sleep()) this.active.delete(l);
    }
    if (this.active.size > 0) setImmediate(this.tickBound);
    else this.running = false;
  }
}

const poller = new Poller();

/**
 * The queue pair as a link uses it: ffi/verbs.ts's Endpoint (tests drive the link with a
 * simulated one: tests/engine/rdma-link.test.ts).
 */
export type LinkEndpoint = Pick<
  Endpoint,
  "send_slots" | "recv_slots" | "slot_bytes" | "channel_fd" | "sendSlot" | "recvSlot" | "postSend" | "postRecv" | "poll" | "arm" | "takeEvents"
>;
/** The rdma_cm id as a link uses it. */
export type LinkId = Pick<CmId, "disconnect" | "destroy">;

export class RdmaLink implements FrameLink {
  readonly copies = true as const;
  onFrame: FrameLink["onFrame"] = null;
  sink: FrameLink["sink"] = null;
  admit: FrameLink["admit"] = null;
  onMalformed: FrameLink["onMalformed"] = null;
  onClose: FrameLink["onClose"] = null;
  onDrain: FrameLink["onDrain"] = null;
  lastWork = 0;
  private framing: RdmaFraming | null = null;
  private readonly completions = newCompletions();
  /** SENDs posted and not completed. */
  private outstanding = 0;
  private closing = false;
  private ended = false;
  private disconnected = false;

  constructor(
    private readonly id: LinkId,
    private readonly ep: LinkEndpoint,
    readonly remote: string,
    readonly transport: Transport,
  ) {}

  get queued_bytes(): number {
    return this.framing?.queued_bytes ?? 0;
  }

  /** The connection is up: frames may flow (the peer's shape is known from its private data). */
  start(peer: PeerShape, receivesPosted: boolean): void {
    const ep = this.ep;
    const port = {
      sendSlot: (i: number) => ep.sendSlot(i),
      recvSlot: (i: number) => ep.recvSlot(i),
      postRecv: (i: number) => ep.postRecv(i),
      postSend: (i: number, length: number) => {
        ep.postSend(i, length);
        this.outstanding++;
        poller.activate(this);
      },
    };
    this.framing = new RdmaFraming(port, { send_slots: ep.send_slots, recv_slots: ep.recv_slots, slot_bytes: ep.slot_bytes }, peer, {
      onFrame: (h, p, owned) => this.onFrame?.(h, p, owned),
      sink: (h) => (this.sink === null ? null : this.sink(h)),
      admit: (h) => (this.admit === null ? null : this.admit(h)),
      onMalformed: (why) => this.onMalformed?.(why),
      onDrain: () => this.onDrain?.(),
      later: queueMicrotask,
    });
    if (!receivesPosted) this.framing.postAllReceives();
    fdWatch().watch(ep.channel_fd, () => {
      ep.takeEvents();
      if (!this.ended) poller.activate(this);
    });
    // Completions that came before start() (the peer's first messages) are waiting in the CQ.
    poller.activate(this);
  }

  send(h: Header, payload: Uint8Array | null): boolean {
    if (this.ended || this.closing || this.framing === null) return false;
    this.framing.send(h, payload);
    return true;
  }

  sendFrame(frame: Uint8Array): boolean {
    if (this.ended || this.closing || this.framing === null) return false;
    this.framing.sendFrame(frame);
    return true;
  }

  pause(): void {
    this.framing?.pause();
  }

  resume(): void {
    this.framing?.resume();
  }

  /** Reaps one batch of completions; returns how many. */
  pollOnce(): number {
    if (this.ended) return 0;
    const c = this.completions;
    let n: number;
    try {
      n = this.ep.poll(c);
    } catch (e) {
      this.end(`RDMA: ${(e as Error).message}`);
      return 0;
    }
    const f = this.framing!;
    for (let i = 0; i < n && !this.ended; i++) {
      if (c.status[i] !== CONSTANTS.IBV_WC_SUCCESS) {
        // Flushed work requests follow a disconnect: the disconnected event says why.
        if (c.status[i] !== CONSTANTS.IBV_WC_WR_FLUSH_ERR) this.end(`RDMA ${c.recv[i] ? "receive" : "send"} failed: completion status ${c.status[i]}`);
        if (!c.recv[i]) this.outstanding--;
        continue;
      }
      try {
        if (c.recv[i]) f.received(c.slot[i]!, c.byte_len[i]!);
        else {
          this.outstanding--;
          f.sendCompleted(c.slot[i]!);
        }
      } catch (e) {
        this.end(`RDMA: ${(e as Error).message}`);
      }
    }
    if (this.closing && this.outstanding === 0) this.disconnect();
    return n;
  }

  /** No completion for a while: arm the completion event. False if one slipped in meanwhile. */
  sleep(): boolean {
    if (this.ended) return true;
    try {
      this.ep.arm();
    } catch (e) {
      this.end(`RDMA: ${(e as Error).message}`);
      return true;
    }
    if (this.pollOnce() > 0) return false;
    fdWatch().rearm(this.ep.channel_fd);
    return true;
  }

  close(): void {
    if (this.ended || this.closing) return;
    this.closing = true;
    // Frames queued before close still go out: disconnect once the posted SENDs completed.
    this.framing?.flush();
    if (this.outstanding === 0) return this.disconnect();
    poller.activate(this);
    setTimeout(() => this.disconnect(), CLOSE_GRACE_MS).unref();
  }

  private disconnect(): void {
    if (this.disconnected || this.ended) return;
    this.disconnected = true;
    this.id.disconnect();
    // Our own disconnected event ends the link; a peer already gone may never send one.
    setTimeout(() => this.end("closed"), CLOSE_GRACE_MS).unref();
  }

  /** The rdma_cm event for this connection. */
  event(ev: CmEvent): void {
    if (ev.type === "disconnected") this.end(this.closing ? "closed" : "closed by peer");
    else if (ev.type === "error") this.end(`RDMA connection failed: ${ev.error}`);
  }

  /** Ends the link once: nothing more is sent or delivered, native resources are freed. */
  end(reason: string): void {
    if (this.ended) return;
    this.ended = true;
    this.framing?.stop();
    poller.remove(this);
    fdWatch().unwatch(this.ep.channel_fd);
    if (!this.disconnected) {
      this.disconnected = true;
      this.id.disconnect();
    }
    runtime?.off(this.id as CmId);
    this.id.destroy();
    const cb = this.onClose;
    this.onClose = null;
    this.onFrame = null;
    cb?.(reason);
  }
}

async function ipv4(host: string): Promise<string> {
  if (/^\d+\.\d+\.\d+\.\d+$/.test(host)) return host;
  try {
    return (await lookup(host, { family: 4 })).address;
  } catch (e) {
    throw new VerbsError(`cannot resolve ${host} to an IPv4 address: ${(e as Error).message}`);
  }
}

/** "rdma://HOST:PORT" → host and port. */
export function parseRdmaAddress(address: string): { host: string; port: number } {
  const m = /^rdma:\/\/(.+):(\d+)$/.exec(address);
  const port = m ? Number(m[2]) : NaN;
  if (!m || !Number.isInteger(port) || port < 0 || port > 65535) throw new Error(`invalid RDMA address '${address}': expected rdma://HOST:PORT`);
  return { host: m[1]!.replace(/^\[(.*)\]$/, "$1"), port };
}

export interface RdmaListener {
  /** rdma://HOST:PORT as bound (a port 0 resolved). */
  readonly address: string;
  readonly port: number;
  close(): void;
}

/** Why this host cannot make RDMA links, or null when it can (a device exists). */
export function rdmaUnavailable(): string | null {
  return rdmaProblem();
}

/** The connector requesters move to RDMA with (client/rdma-upgrade.ts). */
export const realRdma = {
  unavailable: rdmaUnavailable,
  connect: (host: string, port: number, transport: Transport) => rdmaConnect(host, port, transport),
};

/** Connects to rdma://host:port; rejects with a message that says what failed. */
export async function rdmaConnect(host: string, port: number, transport: Transport, shape: RdmaShape = DEFAULT_SHAPE): Promise<FrameLink> {
  const r = rt();
  const ip = await ipv4(host);
  const id = r.events.createId();
  return await new Promise<FrameLink>((resolve, reject) => {
    let link: RdmaLink | null = null;
    let done = false;
    const fail = (why: string) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      r.off(id);
      if (link !== null) link.end(why);
      else id.destroy();
      reject(new VerbsError(`RDMA connection to ${ip}:${port} failed: ${why}`));
    };
    const timer = setTimeout(() => fail(`no answer in ${CONNECT_TIMEOUT_MS} ms`), CONNECT_TIMEOUT_MS);
    r.on(id, (ev) => {
      if (done) return link?.event(ev);
      try {
        if (ev.type === "addr_resolved") id.resolveRoute(RESOLVE_TIMEOUT_MS);
        else if (ev.type === "route_resolved") {
          const ep = id.createEndpoint(shape);
          link = new RdmaLink(id, ep, ip, transport);
          // Receives are posted before the request goes out: the target may send at once.
          for (let i = 0; i < shape.recv_slots; i++) ep.postRecv(i);
          id.connect(encodePrivateData(shape.recv_slots, shape.slot_bytes));
        } else if (ev.type === "established" && link !== null) {
          const peer = decodePrivateData(ev.private_data);
          if (typeof peer === "string") return fail(peer);
          done = true;
          clearTimeout(timer);
          link.start(peer, true);
          resolve(link);
        } else if (ev.type === "error" || ev.type === "disconnected") fail(ev.error);
      } catch (e) {
        fail((e as Error).message);
      }
    });
    try {
      id.resolveAddr(ip, port, RESOLVE_TIMEOUT_MS);
    } catch (e) {
      fail((e as Error).message);
    }
  });
}

/** Listens on rdma://host:port ("0.0.0.0": every RDMA device); each connection becomes a link. */
export async function rdmaListen(host: string, port: number, onLink: (link: FrameLink) => void, shape: RdmaShape = DEFAULT_SHAPE): Promise<RdmaListener> {
  const r = rt();
  const ip = await ipv4(host);
  const listener = r.events.createId();
  try {
    listener.listen(ip, port);
  } catch (e) {
    listener.destroy();
    throw e;
  }
  r.on(listener, (ev) => {
    if (ev.type !== "connect_request") return;
    const id = ev.id;
    const peer = decodePrivateData(ev.private_data);
    if (typeof peer === "string") {
      id.reject();
      id.destroy();
      return;
    }
    let link: RdmaLink | null = null;
    try {
      const ep = id.createEndpoint(shape);
      link = new RdmaLink(id, ep, id.peerAddress(), { kind: "rdma", why: "rdma" });
      link.start(peer, false);
      // Frames the requester sends as soon as it sees the connection wait until the link has
      // an owner (receive completions are held, their slots not re-posted meanwhile).
      link.pause();
      const l = link;
      r.on(id, (e) => {
        if (e.type === "established") {
          onLink(l);
          l.resume();
        } else l.event(e);
      });
      id.accept(encodePrivateData(shape.recv_slots, shape.slot_bytes));
    } catch {
      if (link !== null) link.end("accept failed");
      else {
        id.reject();
        id.destroy();
      }
    }
  });
  const bound = listener.port;
  return {
    address: `rdma://${host}:${bound}`,
    port: bound,
    close: () => {
      r.off(listener);
      listener.destroy();
    },
  };
}
