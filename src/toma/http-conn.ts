/**
 * The management API's connections, on any Conn: HTTP/1.1 requests one at a time (keep-alive,
 * pipelined requests answered in order), each handed to `handle` and answered with what it
 * returns. Sans-I/O: sockets come in through handle(conn), time through Env.
 *
 * A connection is a stranger's until one of its requests is answered with anything but 401
 * (the handler checks the request's signature) by a route that needs one: until then it holds a place among the port's
 * unauthenticated connections (limits/preauth.ts: a cap, and a deadline for its first request),
 * and a 401 closes it. What a stranger can make the TOMA hold is one request head (16 KiB) and
 * one body (64 KiB, refused from its Content-Length when larger), for at most the deadline. An
 * authenticated connection that stays idle is closed after `idle_timeout_ms`.
 */
import type { Env, TimerHandle } from "../engine/env.ts";
import { admitConnection, PreAuthGate, type PreAuthLimits, type PreAuthTicket } from "../engine/limits/preauth.ts";
import type { Conn } from "../engine/net/conn.ts";
import {
  CONTINUE_BYTES,
  DEFAULT_HTTP_WIRE_LIMITS,
  encodeResponse,
  HttpRequestParser,
  type HttpRequest,
  type HttpResponse,
  type HttpWireLimits,
  jsonResponse,
} from "./http-wire.ts";

export interface HttpLimits extends HttpWireLimits, PreAuthLimits {
  /** An authenticated connection with no request for this long is closed. */
  idle_timeout_ms: number;
}

export const DEFAULT_HTTP_LIMITS: HttpLimits = {
  ...DEFAULT_HTTP_WIRE_LIMITS,
  max_unauthenticated: 128,
  auth_timeout_ms: 10_000,
  idle_timeout_ms: 60_000,
};

export type HttpHandler = (req: HttpRequest, peer: string) => Promise<HttpResponse>;

export class HttpServer {
  private readonly gate: PreAuthGate;
  private readonly conns = new Set<HttpConnection>();

  constructor(
    private readonly env: Env,
    private readonly handler: HttpHandler,
    readonly limits: HttpLimits = DEFAULT_HTTP_LIMITS,
  ) {
    this.gate = new PreAuthGate(env, limits, "management API");
  }

  /** Takes ownership of an accepted connection. Never throws. */
  handle(conn: Conn): void {
    const c = admitConnection(this.gate, conn, (ticket) => new HttpConnection(this.env, conn, this.handler, this.limits, ticket, (ended) => this.conns.delete(ended)));
    if (c !== null) this.conns.add(c);
  }

  get unauthenticated(): number {
    return this.gate.unauthenticated;
  }

  get connections(): number {
    return this.conns.size;
  }

  closeAll(): void {
    for (const c of [...this.conns]) c.close("server stopping");
  }
}

class HttpConnection {
  private readonly parser: HttpRequestParser;
  /** Bytes of the chunk being fed when a request became complete: fed after its answer. */
  private rest: Uint8Array | null = null;
  private busy = false;
  private closed = false;
  private authenticated = false;
  private idle: TimerHandle | null = null;

  constructor(
    private readonly env: Env,
    private readonly conn: Conn,
    private readonly handler: HttpHandler,
    private readonly limits: HttpLimits,
    private readonly ticket: PreAuthTicket,
    private readonly onEnd: (c: HttpConnection) => void,
  ) {
    this.parser = new HttpRequestParser(limits);
    conn.onData = (chunk) => this.onData(chunk);
    conn.onClose = () => this.ended();
  }

  /** The deadline for a first, authenticated request passed (limits/preauth.ts). */
  expire(why: string): void {
    // A complete request being answered is not cut off: the answer decides (a 401 closes).
    if (this.closed || this.busy) return;
    this.env.log.warn("closing management connection", { peer: this.conn.remote, reason: why });
    // Nothing was answered yet: a 408 tells a slow client why (RFC 9110 §15.5.9).
    this.send(jsonResponse(408, { error: `request not completed within ${this.limits.auth_timeout_ms} ms` }), true);
    this.close(why);
  }

  close(_why: string): void {
    if (this.closed) return;
    this.conn.close();
    this.ended();
  }

  private onData(chunk: Uint8Array): void {
    if (this.closed) return;
    if (this.busy || this.rest !== null) {
      // A chunk read before the pause took effect: kept behind the rest, in order.
      const prev = this.rest ?? new Uint8Array(0);
      const both = new Uint8Array(prev.length + chunk.length);
      both.set(prev);
      both.set(chunk, prev.length);
      this.rest = both;
      return;
    }
    this.consume(chunk);
  }

  /** Feeds bytes until a request is complete (then answers it, pausing the socket) or they run out. */
  private consume(src: Uint8Array): void {
    let pos = 0;
    while (pos < src.length && !this.closed) {
      pos += this.parser.feed(src, pos);
      if (this.parser.expectsContinue) {
        this.parser.expectsContinue = false;
        this.conn.send(CONTINUE_BYTES);
      }
      const err = this.parser.error;
      if (err !== null) {
        this.env.log.warn("closing management connection", { peer: this.conn.remote, reason: `${err.status}: ${err.reason}` });
        this.send(jsonResponse(err.status, { error: err.reason }), true);
        return this.close(err.reason);
      }
      const req = this.parser.take();
      if (req !== null) {
        if (pos < src.length) this.rest = src.slice(pos); // the chunk is only lent to us
        return this.serve(req);
      }
    }
  }

  private serve(req: HttpRequest): void {
    this.idle?.cancel();
    this.idle = null;
    this.busy = true;
    this.conn.pause(); // one request at a time: the next waits in the kernel, not here
    this.handler(req, this.conn.remote).then(
      (res) => this.answered(req, res),
      (e: unknown) => this.answered(req, jsonResponse(500, { error: `internal error: ${(e as Error)?.message ?? String(e)}` })),
    );
  }

  private answered(req: HttpRequest, res: HttpResponse): void {
    if (this.closed) return;
    // 401 is the handler saying "not the cluster key": the stranger gets its answer and goes.
    const refused = res.status === 401;
    if (!refused && res.authenticates !== false && !this.authenticated) {
      this.authenticated = true;
      this.ticket.authenticated();
    }
    const close = req.close || refused;
    this.send(res, close, req.method === "HEAD");
    if (close) return this.close(refused ? "not authenticated" : "client asked to close");
    this.busy = false;
    this.conn.resume();
    this.armIdle();
    const rest = this.rest;
    this.rest = null;
    if (rest !== null) this.consume(rest);
  }

  private send(res: HttpResponse, close: boolean, head_only = false): void {
    this.conn.send(encodeResponse(res, { close, head_only }));
  }

  /**
   * Authenticated and waiting for its next request: closed unless one is complete in time (a
   * request dribbled byte by byte does not keep it open).
   */
  private armIdle(): void {
    if (!this.authenticated || this.closed || this.busy || this.idle !== null) return;
    this.idle = this.env.timers.after(this.limits.idle_timeout_ms, () => {
      this.idle = null;
      if (this.busy || this.closed) return;
      this.env.log.debug("closing idle management connection", { peer: this.conn.remote });
      this.close("idle");
    });
  }

  private ended(): void {
    if (this.closed) return;
    this.closed = true;
    this.ticket.closed();
    this.idle?.cancel();
    this.idle = null;
    this.rest = null;
    this.onEnd(this);
  }
}
