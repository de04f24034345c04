/**
 * One client connection: handshake, then transmission. Owns the Conn's callbacks, its place among
 * the connections still in their handshake (limits/preauth.ts: how many at once, for how long),
 * and the socket's pause while transmission cannot take more.
 *
 * While transmission is paused the socket is too (Conn.pause): the client meets TCP backpressure,
 * as qemu-nbd and nbd-server do it, and what it sends waits in the kernel. Only the rest of the
 * chunk being fed when the pause began is kept here.
 */
import type { Env } from "../env.ts";
import type { ByteBudget } from "../limits/byte-budget.ts";
import type { PreAuthTicket } from "../limits/preauth.ts";
import type { Conn } from "../net/conn.ts";
import type { ExportLookup, NbdExport } from "./exports.ts";
import { Handshake, type HandshakeLimits } from "./handshake.ts";
import { Transmission, type TransmissionLimits } from "./transmission.ts";
import { SendBatcher } from "../wire/send-batcher.ts";
import type { BufferPool } from "../wire/buffer-pool.ts";

export interface SessionLimits extends HandshakeLimits, TransmissionLimits {
  /** A client that has not entered transmission by then is closed. */
  handshake_timeout_ms: number;
  /** Connections in their handshake at once; more are closed as they arrive (logged). */
  max_handshakes: number;
}

type Phase = "handshake" | "transmission" | "closed";

export class NbdSession {
  /** The export being served once in transmission. */
  exp: NbdExport | null = null;
  export_name: string | null = null;
  readonly finished: Promise<void>;
  private resolveFinished!: () => void;
  private phase: Phase = "handshake";
  private readonly handshake: Handshake;
  private transmission: Transmission | null = null;
  /** Replies of one tick leave in one send (transmission phase only). */
  private out: SendBatcher | null = null;
  /** What transmission did not consume yet of the chunk being fed when it paused. */
  private rest: Uint8Array | null = null;
  private paused = false;
  /** True once the store will not be called any more on behalf of this session. */
  private storeIdle = true;
  private isFinished = false;

  constructor(
    private readonly env: Env,
    private readonly conn: Conn,
    /** What this connection may see: the exports of the listener it was accepted through. */
    readonly view: ExportLookup,
    private readonly limits: SessionLimits,
    private readonly budget: ByteBudget,
    private readonly pool: BufferPool,
    /** This connection's place among those in their handshake, until it enters transmission. */
    private readonly ticket: PreAuthTicket,
  ) {
    this.finished = new Promise((resolve) => (this.resolveFinished = resolve));
    this.handshake = new Handshake(view, (b) => this.conn.send(b), limits);
  }

  start(): void {
    this.conn.onData = (chunk) => this.onData(chunk);
    this.conn.onClose = (reason) => this.onConnClosed(reason);
    this.conn.send(this.handshake.greeting());
  }

  /** The handshake deadline passed (limits/preauth.ts). */
  expire(_why: string): void {
    if (this.phase === "handshake") this.closeConn(`handshake not finished within ${this.limits.handshake_timeout_ms} ms`, true);
  }

  /** Ends the session gracefully: requests in flight are answered, then the connection closes. */
  stop(reason: string): void {
    if (this.phase === "handshake") this.closeConn(reason, false);
    else if (this.phase === "transmission") this.transmission!.stop(reason);
  }

  private onData(chunk: Uint8Array): void {
    if (this.phase === "closed") return;
    this.guarded(() => {
      if (this.rest !== null) {
        // The transport handed over bytes although we paused (it may, for a chunk read before the
        // pause took effect): they queue behind the rest, in order.
        const both = new Uint8Array(this.rest.length + chunk.length);
        both.set(this.rest);
        both.set(chunk, this.rest.length);
        this.rest = both;
        return this.pump();
      }
      const used = this.feed(chunk, 0);
      if (used < chunk.length && this.phase !== "closed") {
        this.rest = chunk.slice(used); // chunk is only lent to us
        this.pause();
      }
    });
  }

  /** Decoders do not throw on bad bytes, so a throw is our bug: it costs this connection only. */
  private guarded(fn: () => void): void {
    try {
      fn();
    } catch (err) {
      this.env.log.error("nbd session internal error", {
        remote: this.conn.remote,
        error: err instanceof Error ? (err.stack ?? err.message) : String(err),
      });
      this.closeConn("internal error", false);
    }
  }

  /** feed() may close the session: read the phase again rather than trust a narrowed type. */
  private get isClosed(): boolean {
    return this.phase === "closed";
  }

  private pause(): void {
    if (this.paused) return;
    this.paused = true;
    this.conn.pause();
  }

  /** Feeds the kept rest while the current phase consumes it; reads the socket again once all is. */
  private pump(): void {
    const rest = this.rest;
    if (rest !== null && this.phase !== "closed") {
      const used = this.feed(rest, 0);
      this.rest = used < rest.length && !this.isClosed ? rest.subarray(used) : null;
    }
    if (this.rest !== null) return this.pause();
    if (this.paused && !this.isClosed) {
      this.paused = false;
      this.conn.resume();
    }
  }

  /** Hands src[pos..] to the current phase; returns bytes consumed. */
  private feed(src: Uint8Array, pos: number): number {
    let at = pos;
    while (at < src.length) {
      if (this.phase === "handshake") {
        at += this.handshake.feed(src, at);
        const outcome = this.handshake.outcome;
        if (!outcome) continue;
        if (outcome.kind === "close") {
          this.closeConn(outcome.reason, outcome.misbehaved);
          return src.length - pos;
        }
        this.enterTransmission(outcome.name, outcome.exp);
      } else if (this.phase === "transmission") {
        at += this.transmission!.feed(src, at);
        break; // consumed everything, or paused
      } else {
        return src.length - pos; // closed: discard
      }
    }
    return at - pos;
  }

  private enterTransmission(name: string, exp: NbdExport): void {
    this.ticket.authenticated();
    this.phase = "transmission";
    this.exp = exp;
    this.export_name = name;
    this.storeIdle = false;
    this.env.log.debug("nbd client entered transmission", { remote: this.conn.remote, export: name });
    const out = new SendBatcher(this.conn);
    this.out = out;
    this.transmission = new Transmission(
      exp,
      {
        send: (b) => out.push(b),
        sendCopies: out.copies,
        sendOwned: (b, give) => out.pushOwned(b, give),
        resume: () => this.guarded(() => this.pump()),
        close: (reason, misbehaved) => this.closeConn(reason, misbehaved),
        idle: () => {
          this.storeIdle = true;
          this.maybeFinished();
        },
      },
      this.limits,
      this.budget,
      this.pool,
      this.env.log,
    );
  }

  private closeConn(reason: string, misbehaved: boolean): void {
    if (this.phase === "closed") return;
    const fields = { remote: this.conn.remote, export: this.export_name, reason };
    if (misbehaved) this.env.log.warn("nbd connection closed: client broke the protocol", fields);
    else this.env.log.debug("nbd connection closed", fields);
    this.out?.flush(); // replies already computed leave before the connection ends
    this.enterClosed();
    this.conn.close();
    this.maybeFinished();
  }

  private onConnClosed(reason: string): void {
    if (this.phase === "closed") return;
    this.env.log.debug("nbd connection lost", { remote: this.conn.remote, export: this.export_name, reason });
    this.enterClosed();
    this.maybeFinished();
  }

  private enterClosed(): void {
    this.phase = "closed";
    this.ticket.closed();
    this.rest = null;
    this.transmission?.abandon();
  }

  private maybeFinished(): void {
    if (this.isFinished || this.phase !== "closed" || !this.storeIdle) return;
    this.isFinished = true;
    this.resolveFinished();
  }
}
