/**
 * One client connection: handshake, then transmission. Owns the Conn's callbacks, the handshake
 * deadline and the backlog of bytes received while transmission is paused at its in-flight bound.
 */
import type { Env, TimerHandle } from "../env.ts";
import type { Conn } from "../net/conn.ts";
import type { ExportLookup, NbdExport } from "./exports.ts";
import { Handshake, type HandshakeLimits } from "./handshake.ts";
import { Transmission, type TransmissionLimits } from "./transmission.ts";
import { SendBatcher } from "../wire/send-batcher.ts";

export interface SessionLimits extends HandshakeLimits, TransmissionLimits {
  /** A client that has not entered transmission by then is closed. */
  handshake_timeout_ms: number;
  /**
   * Bytes kept while paused. Conn cannot stop the socket from reading, so a client that ignores
   * its own queue depth would grow this without end; past the bound the connection is closed.
   */
  max_backlog_bytes: number;
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
  private handshakeTimer: TimerHandle | null = null;
  private backlog: Uint8Array[] = [];
  private backlogBytes = 0;
  /** True once the store will not be called any more on behalf of this session. */
  private storeIdle = true;
  private isFinished = false;

  constructor(
    private readonly env: Env,
    private readonly conn: Conn,
    exports: ExportLookup,
    private readonly limits: SessionLimits,
  ) {
    this.finished = new Promise((resolve) => (this.resolveFinished = resolve));
    this.handshake = new Handshake(exports, (b) => this.conn.send(b), limits);
  }

  start(): void {
    this.conn.onData = (chunk) => this.onData(chunk);
    this.conn.onClose = (reason) => this.onConnClosed(reason);
    this.handshakeTimer = this.env.timers.after(this.limits.handshake_timeout_ms, () => {
      if (this.phase === "handshake") this.closeConn("handshake timed out", true);
    });
    this.conn.send(this.handshake.greeting());
  }

  /** Ends the session gracefully: requests in flight are answered, then the connection closes. */
  stop(reason: string): void {
    if (this.phase === "handshake") this.closeConn(reason, false);
    else if (this.phase === "transmission") this.transmission!.stop(reason);
  }

  private onData(chunk: Uint8Array): void {
    if (this.phase === "closed") return;
    this.guarded(() => {
      if (this.backlog.length === 0) {
        const used = this.feed(chunk, 0);
        if (used < chunk.length && this.phase !== "closed") this.keep(chunk.slice(used)); // chunk is only lent to us
      } else {
        this.keep(chunk.slice());
        this.pump();
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

  private keep(bytes: Uint8Array): void {
    this.backlog.push(bytes);
    this.backlogBytes += bytes.length;
    if (this.backlogBytes > this.limits.max_backlog_bytes) {
      this.closeConn(`client sent over ${this.limits.max_backlog_bytes} bytes beyond the in-flight bound`, true);
    }
  }

  /** Feeds kept bytes while the current phase consumes them. */
  private pump(): void {
    while (this.backlog.length > 0 && this.phase !== "closed") {
      const head = this.backlog[0]!;
      const used = this.feed(head, 0);
      this.backlogBytes -= used;
      if (used < head.length) {
        this.backlog[0] = head.subarray(used);
        return;
      }
      this.backlog.shift();
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
    this.handshakeTimer?.cancel();
    this.handshakeTimer = null;
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
        resume: () => this.guarded(() => this.pump()),
        close: (reason, misbehaved) => this.closeConn(reason, misbehaved),
        idle: () => {
          this.storeIdle = true;
          this.maybeFinished();
        },
      },
      this.limits,
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
    this.handshakeTimer?.cancel();
    this.handshakeTimer = null;
    this.backlog = [];
    this.backlogBytes = 0;
    this.transmission?.abandon();
  }

  private maybeFinished(): void {
    if (this.isFinished || this.phase !== "closed" || !this.storeIdle) return;
    this.isFinished = true;
    this.resolveFinished();
  }
}
