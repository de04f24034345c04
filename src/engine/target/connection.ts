/**
 * One requester's connection to the target: the HELLO gate, then pipelined requests that complete
 * out of order, at most `max_inflight` requests and `max_inflight_bytes` of payload at a time, and
 * never more than the target-wide byte budget allows. At those bounds the connection stops
 * receiving (FrameLink.pause: a socket stops being read, RDMA stops returning credits): the
 * requester meets backpressure, nobody is disconnected for sending fast. Frames received before
 * the pause took effect wait in a short queue. The frames come over a FrameLink: this code does
 * not know whether they crossed TCP, RDMA or nothing at all.
 *
 * Before HELLO (and AUTH, with a cluster key) the connection is a stranger's: it holds a place
 * among the target's unauthenticated connections (limits/preauth.ts) for at most the
 * authentication deadline, and a header that is not HELLO/AUTH or announces more than
 * MAX_PREAUTH_PAYLOAD_BYTES closes it before a byte of that payload is read or allocated
 * (FrameLink.admit).
 *
 * Nothing a peer sends can throw out of here: a malformed frame closes this connection only.
 */
import type { FrameLink } from "../net/frame-link.ts";
import type { ByteBudget } from "../limits/byte-budget.ts";
import type { PreAuthTicket } from "../limits/preauth.ts";
import { AuthRequest, HelloRequest, decodeBody, isInvalid } from "../wire/control.ts";
import { Flag, HEADER_BYTES, type Header, Op, Status } from "../wire/header.ts";
import { COPY_LIMIT_BYTES } from "../wire/send-batcher.ts";
import { type PendingAuth, admission, challengeFor } from "./capability.ts";
import { type Requester, type TargetContext, execute } from "./execute.ts";
import type { Role } from "./fence.ts";
import { cborResponse, errorResponse, recycleFrame, takeBuffer } from "./reply.ts";

/**
 * The largest HELLO or AUTH body a stranger may send: a HelloRequest (role, a name of at most
 * 256 characters, a 16-byte nonce) and an AuthRequest (a 32-byte proof) are a few hundred bytes.
 */
export const MAX_PREAUTH_PAYLOAD_BYTES = 4096;

/**
 * A requester that says HELLO again under the same role and name supersedes its older connections:
 * they are closed, and the new HELLO is answered only once everything they had started has
 * finished. A frame of the old connection still travelling in the network then lands on a closed
 * socket and is dropped, so a retried write can never be overtaken by its own first attempt.
 */
export type Supersede = (hello: HelloRequest, by: TargetConnection) => Promise<void> | null;

export interface ConnectionLimits {
  max_inflight: number;
  /**
   * Payload bytes of the requests executing (WRITE data, READ answers, control bodies); one
   * request larger than this runs alone. The session's own default is the same (64 MiB), so a
   * well-behaved requester never meets it.
   */
  max_inflight_bytes: number;
  /** LOCKs of one connection that may wait without holding an in-flight slot. */
  max_parked_locks: number;
  /**
   * Frames waiting to start. The connection is paused while any wait, so only what arrived before
   * the pause took effect lands here; past these caps the transport did not pause, and the peer
   * is disconnected rather than let it grow the queue.
   */
  max_queued_frames: number;
  max_queued_bytes: number;
}

interface Queued {
  h: Header;
  payload: Uint8Array;
}

/** What a request holds while it executes: its payload, and a READ's answer. */
function costOf(h: Header): number {
  return h.payload_len + (h.opcode === Op.READ ? HEADER_BYTES + h.length : 0);
}

/**
 * The cost of the request a response frame answers, for READ and WRITE (the response echoes
 * `length`, and a WRITE's payload_len equals its length); -1 for other ops, whose completion
 * carries its cost itself.
 */
function dataCostOfResponse(frame: Uint8Array): number {
  const op = frame[5];
  if (op !== Op.READ && op !== Op.WRITE) return -1;
  const length = (frame[12]! | (frame[13]! << 8) | (frame[14]! << 16)) + frame[15]! * 0x100_0000;
  return op === Op.READ ? HEADER_BYTES + length : length;
}

export class TargetConnection {
  /**
   * "new": HELLO expected. "auth": AUTH expected (the target has a cluster key). "waiting":
   * superseded connections are draining. "ready": serving.
   */
  private state: "new" | "auth" | "waiting" | "ready" = "new";
  /** The HELLO and the challenge sent, while AUTH is expected. */
  private pending: PendingAuth | null = null;
  private closed = false;
  private drainWaiters: (() => void)[] = [];
  /** Raised when the connection ends: requests waiting inside the target (LOCK) give up. */
  private readonly ending = new AbortController();
  /**
   * Set once admitted: the role every request of this connection is judged by (fencing); with a
   * cluster key, the one the key it proved gives (capability.ts), not necessarily HELLO's.
   */
  private requester: Requester | null = null;
  /** Requests executing, parked LOCKs included (drained() waits for all of them). */
  private inflight = 0;
  /** LOCKs waiting for their units: they do not hold an in-flight slot (see Requester.park). */
  private parked = 0;
  /** Payload bytes of the requests executing, parked ones included; and of the parked ones. */
  private inflightBytes = 0;
  private parkedBytes = 0;
  private pumping = false;
  private queue: Queued[] = [];
  private queueHead = 0;
  private queuedBytes = 0;
  /** The queue's head waits for the target-wide budget (and holds it once granted). */
  private budgetWait: "none" | "waiting" | "granted" = "none";
  /** What the head waits for (or was granted). */
  private waitCost = 0;
  private readonly onGrant = () => {
    if (this.closed) return this.budget.give(this.waitCost); // ended while the grant was on its way
    this.budgetWait = "granted";
    this.pump();
  };
  private paused = false;
  /** Bound once: no closure is allocated per request. */
  private readonly onDone = (frame: Uint8Array) => this.complete(frame, dataCostOfResponse(frame));
  private readonly onBug = (e: unknown) => this.fail(`internal error: ${String(e)}`);

  constructor(
    private readonly ctx: TargetContext,
    private readonly link: FrameLink,
    private readonly limits: ConnectionLimits,
    private readonly budget: ByteBudget,
    /** This connection's place among the unauthenticated ones, until HELLO (and AUTH) pass. */
    private readonly preauth: PreAuthTicket,
    private readonly onEnd: (c: TargetConnection) => void,
    private readonly supersede: Supersede,
  ) {
    link.onFrame = (h, payload, owned) => this.onFrame(h, payload, owned);
    link.onMalformed = (why) => this.fail(`malformed frame: ${why}`);
    // A large WRITE's data is collected straight into a buffer of its own, which the drive
    // write then uses as is: one copy instead of two, and the link's buffers stay small.
    link.sink = (h) => (h.opcode === Op.WRITE && (h.flags & Flag.RESPONSE) === 0 && !this.closed ? takeBuffer(h.payload_len) : null);
    link.admit = (h) => this.admitHeader(h);
    link.onClose = (reason) => this.ended(reason);
  }

  /** The authentication deadline passed (limits/preauth.ts). */
  expire(why: string): void {
    this.fail(why, "warn");
  }

  get remote(): string {
    return this.link.remote;
  }

  /** How this connection's frames travel (for status output). */
  get transport(): FrameLink["transport"] {
    return this.link.transport;
  }

  /** Resolves once this connection is closed and none of its requests is executing any more. */
  drained(): Promise<void> {
    if (this.closed && this.inflight === 0) return Promise.resolve();
    return new Promise((resolve) => this.drainWaiters.push(resolve));
  }

  /** Closes the connection; responses already computed are flushed first. */
  close(): void {
    if (this.closed) return;
    this.link.close();
    this.ended("closed by the target");
  }

  /**
   * Every header, as soon as it is whole: before authentication only a small HELLO, then a small
   * AUTH, may come, and anything else is refused before its payload is read.
   */
  private admitHeader(h: Header): string | null {
    if (this.state !== "new" && this.state !== "auth") return null;
    const want = this.state === "new" ? Op.HELLO : Op.AUTH;
    let why: string | null = null;
    if (h.opcode !== want || (h.flags & Flag.RESPONSE) !== 0) why = `${Op[h.opcode] ?? h.opcode} before authentication (expected ${Op[want]})`;
    else if (h.payload_len > MAX_PREAUTH_PAYLOAD_BYTES) why = `${Op[want]} body of ${h.payload_len} bytes (at most ${MAX_PREAUTH_PAYLOAD_BYTES} before authentication)`;
    if (why === null) return null;
    const message = this.state === "new" && h.opcode !== want ? "the first frame must be HELLO" : why;
    this.link.sendFrame(errorResponse(h, Status.NOT_AUTHENTICATED, message));
    this.ctx.log.warn("closing connection", { peer: this.link.remote, reason: why });
    this.close();
    return why;
  }

  private onFrame(h: Header, payload: Uint8Array, owned: boolean): void {
    if (this.closed) return;
    if (this.state === "new") return this.hello(h, payload);
    if (this.state === "auth") return this.auth(h, payload);
    // A liveness probe is answered here and now, ahead of whatever is queued or executing: a
    // requester judges us alive by it, and a slow drive must not make a live target look dead.
    if (h.opcode === Op.PING) return this.ping(h, payload, owned);
    if (this.state === "ready" && this.queueHead === this.queue.length && this.hasRoom(h)) {
      const cost = costOf(h);
      if (this.budget.take(cost, this.onGrant)) return this.start(h, payload, owned, cost);
      this.budgetWait = "waiting";
      this.waitCost = cost;
    }
    // Unless owned, payload points into the link's buffer: keep a copy.
    this.queue.push({ h, payload: owned ? payload : payload.slice() });
    this.queuedBytes += payload.length;
    this.pause();
    const waiting = this.queue.length - this.queueHead;
    if (waiting > this.limits.max_queued_frames || this.queuedBytes > this.limits.max_queued_bytes) {
      this.fail(`peer exceeded the request queue although its connection is paused (${waiting} frames, ${this.queuedBytes} bytes waiting)`);
    }
  }

  private ping(h: Header, payload: Uint8Array, owned: boolean): void {
    const answer = execute(this.ctx, this.requester!, h, payload, owned);
    if (!(answer instanceof Uint8Array)) throw new Error("invariant: a PING is answered synchronously");
    this.link.sendFrame(answer);
  }

  /** An in-flight slot and room in this connection's byte bound (one large request goes alone). */
  private hasRoom(h: Header): boolean {
    if (this.inflight - this.parked >= this.limits.max_inflight) return false;
    const held = this.inflightBytes - this.parkedBytes;
    return held === 0 || held + costOf(h) <= this.limits.max_inflight_bytes;
  }

  private pause(): void {
    if (this.paused) return;
    this.paused = true;
    this.link.pause();
  }

  private resume(): void {
    if (!this.paused) return;
    this.paused = false;
    this.link.resume();
  }

  private hello(h: Header, payload: Uint8Array): void {
    if (h.opcode !== Op.HELLO || (h.flags & Flag.RESPONSE) !== 0) {
      this.link.sendFrame(errorResponse(h, Status.NOT_AUTHENTICATED, "the first frame must be HELLO"));
      return this.fail(`first frame was ${Op[h.opcode]}, not HELLO`, "warn");
    }
    const req = decodeBody(HelloRequest, payload);
    if (isInvalid(req)) {
      this.link.sendFrame(errorResponse(h, Status.INVALID, `HELLO body: ${req.invalid}`));
      return this.fail(`invalid HELLO: ${req.invalid}`, "warn");
    }
    if (req.volume !== undefined && req.role !== "client") {
      this.link.sendFrame(errorResponse(h, Status.INVALID, `HELLO: only a client connection serves a volume, not role "${req.role}"`));
      return this.fail(`invalid HELLO: role ${req.role} with a volume`, "warn");
    }
    const auth = this.ctx.auth;
    // No key (a target started --insecure, or the simulator's open cluster): HELLO's role is
    // taken on trust.
    if (auth === null) return this.admit(h, req, req.role);
    // Nothing is served, not even the drive list, before the requester proves it holds a key.
    const challenge = new Uint8Array(16);
    auth.fill(challenge);
    this.pending = { hello: req, challenge, nonce: req.nonce ?? new Uint8Array(16) };
    this.state = "auth";
    const info = this.ctx.info();
    this.link.sendFrame(cborResponse(h, { target_name: info.target_name, version: info.version, drives: [], auth: challengeFor(auth.keys, this.pending) }));
  }

  private auth(h: Header, payload: Uint8Array): void {
    const p = this.pending!;
    const req = h.opcode === Op.AUTH && (h.flags & Flag.RESPONSE) === 0 ? decodeBody(AuthRequest, payload) : null;
    const a = admission(this.ctx.auth!.keys, p, req === null || isInvalid(req) ? null : req.proof);
    if ("refused" in a) {
      this.link.sendFrame(errorResponse(h, Status.NOT_AUTHENTICATED, a.refused));
      return this.fail(`requester ${p.hello.role} '${p.hello.name}' failed the cluster key check`, "warn");
    }
    this.pending = null;
    if (a.downgraded !== null) {
      this.ctx.log.warn("requester named a role its key does not give: served as a client (fenced)", {
        peer: this.link.remote,
        named: a.downgraded,
        name: p.hello.name,
      });
    }
    this.admit(h, p.hello, a.role);
  }

  /**
   * HELLO accepted (and AUTH, with a key): served as `role` from now on; answered once ready.
   * Superseding goes by the role served, so a client cannot close a TOMA's connection by naming
   * its role and name.
   */
  private admit(h: Header, hello: HelloRequest, role: Role): void {
    const req = { ...hello, role };
    this.state = "waiting";
    this.preauth.authenticated();
    this.requester = {
      role,
      volume: req.volume ?? null,
      ended: this.ending.signal,
      park: (bytes) => {
        if (this.parked >= this.limits.max_parked_locks || this.parkedBytes + bytes > this.limits.max_inflight_bytes) return false;
        this.parked++;
        this.parkedBytes += bytes;
        // A waiting LOCK's data no longer counts against the target's budget: the requests that
        // will free its units must never wait for the memory it holds (limits are per connection).
        this.budget.give(bytes);
        this.pump();
        return true;
      },
      unpark: (bytes) => {
        this.parked--;
        this.parkedBytes -= bytes;
        this.budget.force(bytes); // running again: its memory is counted, even above the budget
      },
    };
    this.ctx.log.debug("connection authenticated", { peer: this.link.remote, role: req.role, name: req.name, volume: req.volume?.uuid });
    const ready = () => {
      if (this.closed) return;
      this.state = "ready";
      this.link.sendFrame(cborResponse(h, this.ctx.info()));
      this.pump();
    };
    const wait = this.supersede(req, this);
    // Answered at once when there is nothing to wait for.
    if (wait) wait.then(ready, this.onBug);
    else ready();
  }

  /** Runs a request whose cost is already taken from the budget. */
  private start(h: Header, payload: Uint8Array, owned: boolean, cost: number): void {
    this.inflight++;
    this.inflightBytes += cost;
    const r = execute(this.ctx, this.requester!, h, payload, owned);
    if (r instanceof Uint8Array) this.complete(r, cost);
    // The common data ops: their answer says their cost (dataCostOfResponse), no closure needed.
    else if (h.opcode === Op.WRITE || (h.opcode === Op.READ && h.payload_len === 0)) r.then(this.onDone, this.onBug);
    else r.then((frame) => this.complete(frame, cost), this.onBug);
  }

  private complete(frame: Uint8Array, cost: number): void {
    if (cost < 0) throw new Error(`invariant: an answer to op ${frame[5]} went through the data ops' completion`);
    this.inflight--;
    this.inflightBytes -= cost;
    this.budget.give(cost);
    if (this.inflight < 0 || this.inflightBytes < 0) throw new Error(`invariant: target connection in flight ${this.inflight} requests, ${this.inflightBytes} bytes`);
    if (this.closed) {
      if (this.inflight === 0) this.wakeDrainWaiters();
      return;
    }
    if (frame.length >= COPY_LIMIT_BYTES && this.link.sendFrameOwned !== undefined) {
      // A large answer (a READ's data) is kept by reference until sent, not copied, and comes
      // back to the pool then.
      this.link.sendFrameOwned(frame, recycleFrame);
    } else {
      this.link.sendFrame(frame);
      // Small frames are always copied by the link; large ones too when the link says so.
      if (frame.length < COPY_LIMIT_BYTES || this.link.copies) recycleFrame(frame);
    }
    this.pump();
  }

  /**
   * Starts queued requests while in-flight slots are free. A LOCK that parks while being started
   * calls back in here: the loop already running sees the freed slot on its next turn.
   */
  private pump(): void {
    if (this.closed || this.pumping || this.state !== "ready") return;
    this.pumping = true;
    while (this.queueHead < this.queue.length) {
      const q = this.queue[this.queueHead]!;
      if (this.budgetWait === "waiting") break; // the grant calls back in here
      if (this.budgetWait === "none") {
        if (!this.hasRoom(q.h)) break;
        if (!this.budget.take(costOf(q.h), this.onGrant)) {
          this.budgetWait = "waiting";
          this.waitCost = costOf(q.h);
          break;
        }
      }
      this.budgetWait = "none";
      this.queue[this.queueHead++] = undefined as unknown as Queued;
      this.queuedBytes -= q.payload.length;
      this.start(q.h, q.payload, true, costOf(q.h));
    }
    this.pumping = false;
    if (this.queueHead === this.queue.length) {
      this.queue.length = 0;
      this.queueHead = 0;
      this.resume();
    } else if (this.queueHead >= 1024) {
      // Under sustained saturation the queue never empties: drop the consumed prefix.
      this.queue = this.queue.slice(this.queueHead);
      this.queueHead = 0;
    }
  }

  /** Logs why, then closes this connection (never the process). */
  private fail(why: string, level: "warn" | "error" = "error"): void {
    if (this.closed) return;
    this.ctx.log[level]("closing connection", { peer: this.link.remote, reason: why });
    this.close();
  }

  private ended(reason: string): void {
    if (this.closed) return;
    this.closed = true;
    this.preauth.closed();
    // A wait the budget no longer holds was granted on a microtask still to come: onGrant gives it back.
    if (this.budgetWait === "waiting") this.budget.cancel(this.onGrant);
    if (this.budgetWait === "granted") this.budget.give(this.waitCost);
    this.budgetWait = "none";
    this.queue = [];
    this.queueHead = 0;
    this.queuedBytes = 0;
    this.ctx.log.debug("connection ended", { peer: this.link.remote, reason });
    this.ending.abort();
    this.onEnd(this);
    if (this.inflight === 0) this.wakeDrainWaiters();
  }

  private wakeDrainWaiters(): void {
    const waiters = this.drainWaiters;
    this.drainWaiters = [];
    for (const w of waiters) w();
  }
}
