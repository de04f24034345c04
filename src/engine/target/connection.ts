/**
 * One requester's connection to the target: the HELLO gate, then pipelined requests that complete
 * out of order, at most `max_inflight` at a time. Frames decoded beyond that wait in a bounded
 * queue; Conn has no way to pause the socket, so a peer that overruns the queue's hard cap is
 * misbehaving (a session never has more in flight than the target allows) and is disconnected.
 *
 * Nothing a peer sends can throw out of here: a malformed frame closes this connection only.
 */
import type { Conn } from "../net/conn.ts";
import { AuthRequest, HelloRequest, decodeBody, isInvalid } from "../wire/control.ts";
import { Flag, FrameDecoder, type Header, Op, Status } from "../wire/header.ts";
import { COPY_LIMIT_BYTES, SendBatcher } from "../wire/send-batcher.ts";
import { type PendingAuth, admission, challengeFor } from "./capability.ts";
import { type Requester, type TargetContext, execute } from "./execute.ts";
import type { Role } from "./fence.ts";
import { cborResponse, errorResponse, recycleFrame, takeBuffer } from "./reply.ts";

/**
 * A requester that says HELLO again under the same role and name supersedes its older connections:
 * they are closed, and the new HELLO is answered only once everything they had started has
 * finished. A frame of the old connection still travelling in the network then lands on a closed
 * socket and is dropped, so a retried write can never be overtaken by its own first attempt.
 */
export type Supersede = (hello: HelloRequest, by: TargetConnection) => Promise<void> | null;

export interface ConnectionLimits {
  max_inflight: number;
  /** LOCKs of one connection that may wait without holding an in-flight slot. */
  max_parked_locks: number;
  /** Decoded frames waiting for an in-flight slot, beyond which the peer is disconnected. */
  max_queued_frames: number;
  max_queued_bytes: number;
}

interface Queued {
  h: Header;
  payload: Uint8Array;
}

export class TargetConnection {
  private readonly decoder: FrameDecoder;
  private readonly out: SendBatcher;
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
  private pumping = false;
  private queue: Queued[] = [];
  private queueHead = 0;
  private queuedBytes = 0;
  /** Bound once: no closure is allocated per request. */
  private readonly onDone = (frame: Uint8Array) => this.complete(frame);
  private readonly onBug = (e: unknown) => this.fail(`internal error: ${String(e)}`);

  constructor(
    private readonly ctx: TargetContext,
    private readonly conn: Conn,
    private readonly limits: ConnectionLimits,
    private readonly onEnd: (c: TargetConnection) => void,
    private readonly supersede: Supersede,
  ) {
    this.out = new SendBatcher(conn);
    this.decoder = new FrameDecoder(
      (h, payload, owned) => this.onFrame(h, payload, owned),
      (why) => this.fail(`malformed frame: ${why}`),
      // A large WRITE's data is collected straight into a buffer of its own, which the drive
      // write then uses as is: one copy instead of two, and the decoder's buffer stays small.
      (h) => (h.opcode === Op.WRITE && (h.flags & Flag.RESPONSE) === 0 && !this.closed ? takeBuffer(h.payload_len) : null),
    );
    conn.onData = (chunk) => this.decoder.push(chunk);
    conn.onClose = (reason) => this.ended(reason);
  }

  get remote(): string {
    return this.conn.remote;
  }

  /** Resolves once this connection is closed and none of its requests is executing any more. */
  drained(): Promise<void> {
    if (this.closed && this.inflight === 0) return Promise.resolve();
    return new Promise((resolve) => this.drainWaiters.push(resolve));
  }

  /** Closes the connection; responses already computed are flushed first. */
  close(): void {
    if (this.closed) return;
    this.out.flush();
    this.conn.close();
    this.ended("closed by the target");
  }

  private onFrame(h: Header, payload: Uint8Array, owned: boolean): void {
    if (this.closed) return;
    if (this.state === "new") return this.hello(h, payload);
    if (this.state === "auth") return this.auth(h, payload);
    if (this.state === "ready" && this.inflight - this.parked < this.limits.max_inflight) return this.start(h, payload, owned);
    // Unless owned, payload points into the decoder's buffer: keep a copy.
    this.queue.push({ h, payload: owned ? payload : payload.slice() });
    this.queuedBytes += payload.length;
    const waiting = this.queue.length - this.queueHead;
    if (waiting > this.limits.max_queued_frames || this.queuedBytes > this.limits.max_queued_bytes) {
      this.fail(`peer exceeded the request queue (${waiting} frames, ${this.queuedBytes} bytes waiting)`);
    }
  }

  private hello(h: Header, payload: Uint8Array): void {
    if (h.opcode !== Op.HELLO || (h.flags & Flag.RESPONSE) !== 0) {
      this.out.push(errorResponse(h, Status.NOT_AUTHENTICATED, "the first frame must be HELLO"));
      return this.fail(`first frame was ${Op[h.opcode]}, not HELLO`, "warn");
    }
    const req = decodeBody(HelloRequest, payload);
    if (isInvalid(req)) {
      this.out.push(errorResponse(h, Status.INVALID, `HELLO body: ${req.invalid}`));
      return this.fail(`invalid HELLO: ${req.invalid}`, "warn");
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
    this.out.push(cborResponse(h, { target_name: info.target_name, version: info.version, drives: [], auth: challengeFor(auth.keys, this.pending) }));
  }

  private auth(h: Header, payload: Uint8Array): void {
    const p = this.pending!;
    const req = h.opcode === Op.AUTH && (h.flags & Flag.RESPONSE) === 0 ? decodeBody(AuthRequest, payload) : null;
    const a = admission(this.ctx.auth!.keys, p, req === null || isInvalid(req) ? null : req.proof);
    if ("refused" in a) {
      this.out.push(errorResponse(h, Status.NOT_AUTHENTICATED, a.refused));
      return this.fail(`requester ${p.hello.role} '${p.hello.name}' failed the cluster key check`, "warn");
    }
    this.pending = null;
    if (a.downgraded !== null) {
      this.ctx.log.warn("requester named a role its key does not give: served as a client (fenced)", {
        peer: this.conn.remote,
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
    this.requester = {
      role,
      ended: this.ending.signal,
      park: () => {
        if (this.parked >= this.limits.max_parked_locks) return false;
        this.parked++;
        this.pump();
        return true;
      },
      unpark: () => {
        this.parked--;
      },
    };
    this.ctx.log.debug("connection authenticated", { peer: this.conn.remote, role: req.role, name: req.name });
    const ready = () => {
      if (this.closed) return;
      this.state = "ready";
      this.out.push(cborResponse(h, this.ctx.info()));
      this.pump();
    };
    const wait = this.supersede(req, this);
    // Answered at once when there is nothing to wait for.
    if (wait) wait.then(ready, this.onBug);
    else ready();
  }

  private start(h: Header, payload: Uint8Array, owned: boolean): void {
    this.inflight++;
    const r = execute(this.ctx, this.requester!, h, payload, owned);
    if (r instanceof Uint8Array) this.complete(r);
    else r.then(this.onDone, this.onBug);
  }

  private complete(frame: Uint8Array): void {
    this.inflight--;
    if (this.closed) {
      if (this.inflight === 0) this.wakeDrainWaiters();
      return;
    }
    this.out.push(frame);
    // Small frames are copied by push(); large ones too when the socket copies what it is given.
    if (frame.length < COPY_LIMIT_BYTES || this.out.copies) recycleFrame(frame);
    this.pump();
  }

  /**
   * Starts queued requests while in-flight slots are free. A LOCK that parks while being started
   * calls back in here: the loop already running sees the freed slot on its next turn.
   */
  private pump(): void {
    if (this.closed || this.pumping) return;
    this.pumping = true;
    while (this.inflight - this.parked < this.limits.max_inflight && this.queueHead < this.queue.length) {
      const q = this.queue[this.queueHead]!;
      this.queue[this.queueHead++] = undefined as unknown as Queued;
      this.queuedBytes -= q.payload.length;
      this.start(q.h, q.payload, true);
    }
    this.pumping = false;
    if (this.queueHead === this.queue.length) {
      this.queue.length = 0;
      this.queueHead = 0;
    } else if (this.queueHead >= 1024) {
      // Under sustained saturation the queue never empties: drop the consumed prefix.
      this.queue = this.queue.slice(this.queueHead);
      this.queueHead = 0;
    }
  }

  /** Logs why, then closes this connection (never the process). */
  private fail(why: string, level: "warn" | "error" = "error"): void {
    if (this.closed) return;
    this.ctx.log[level]("closing connection", { peer: this.conn.remote, reason: why });
    this.close();
  }

  private ended(reason: string): void {
    if (this.closed) return;
    this.closed = true;
    this.decoder.stop();
    this.queue = [];
    this.queueHead = 0;
    this.queuedBytes = 0;
    this.ctx.log.debug("connection ended", { peer: this.conn.remote, reason });
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
