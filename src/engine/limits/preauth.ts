/**
 * What a port allows a connection that has not authenticated yet (or, on NBD, not finished its
 * handshake): at most `max_unauthenticated` such connections at once, each for at most
 * `auth_timeout_ms`. Anyone who can reach a port can open connections; without these bounds a
 * stranger holds sockets, buffers and timers for as long as they like, and a few hundred of them
 * take the daemon's memory. Authenticated sessions are never counted here, so a flood of strangers
 * cannot push out a requester that proved it holds the cluster key.
 *
 * Sans-I/O: the deadline is the daemon's own timer (Env), never a peer's clock. Used by the target
 * (HELLO/AUTH), the NBD server (option haggling) and the TOMA's management API (first request).
 */
import type { Env, TimerHandle } from "../env.ts";

export interface PreAuthLimits {
  /** Connections waiting to authenticate at once; more are closed as they arrive. */
  max_unauthenticated: number;
  /** A connection that has not authenticated after this long is closed. */
  auth_timeout_ms: number;
}

/** A connection's place among the unauthenticated ones. Both calls are idempotent. */
export interface PreAuthTicket {
  /** It proved who it is: no longer counted, no deadline. */
  authenticated(): void;
  /** It ended before authenticating: its place is free. */
  closed(): void;
}

/** Refusals are logged at most this often (with how many since), so a flood cannot flood the log. */
const REFUSAL_LOG_INTERVAL_MS = 1000;

export class PreAuthGate {
  private waiting = 0;
  private refusedSinceLog = 0;
  private lastRefusalLog_ms = Number.NEGATIVE_INFINITY;

  constructor(
    private readonly env: Env,
    readonly limits: PreAuthLimits,
    /** Names the port in log lines: "target", "nbd", "management API". */
    private readonly what: string,
  ) {
    if (!Number.isInteger(limits.max_unauthenticated) || limits.max_unauthenticated < 1) {
      throw new Error(`max_unauthenticated must be a positive integer, got ${limits.max_unauthenticated}`);
    }
    if (!(limits.auth_timeout_ms > 0)) throw new Error(`auth_timeout_ms must be positive, got ${limits.auth_timeout_ms}`);
  }

  /** Connections admitted and not authenticated or closed yet. */
  get unauthenticated(): number {
    return this.waiting;
  }

  /**
   * A new connection from `peer`. Null when the cap is reached: the caller closes it at once,
   * having read nothing (logged here). Otherwise `expire` runs if the deadline passes first.
   */
  admit(peer: string, expire: (why: string) => void): PreAuthTicket | null {
    if (this.waiting >= this.limits.max_unauthenticated) {
      this.refused(peer);
      return null;
    }
    this.waiting++;
    let timer: TimerHandle | null = null;
    let done = false;
    const release = () => {
      if (done) return;
      done = true;
      this.waiting--;
      if (this.waiting < 0) throw new Error(`invariant: ${this.what} pre-auth count went negative`);
      timer?.cancel();
      timer = null;
    };
    const timeout_ms = this.limits.auth_timeout_ms;
    timer = this.env.timers.after(timeout_ms, () => {
      timer = null;
      if (done) return;
      release();
      expire(`not authenticated within ${timeout_ms} ms`);
    });
    return { authenticated: release, closed: release };
  }

  private refused(peer: string): void {
    this.refusedSinceLog++;
    const now = this.env.clock.now_ms();
    // A clock that jumped back counts as time passed: better one line too many than none.
    if (now - this.lastRefusalLog_ms < REFUSAL_LOG_INTERVAL_MS && now >= this.lastRefusalLog_ms) return;
    this.env.log.warn("refusing connection: too many unauthenticated connections", {
      port: this.what,
      peer,
      limit: this.limits.max_unauthenticated,
      refused: this.refusedSinceLog,
    });
    this.refusedSinceLog = 0;
    this.lastRefusalLog_ms = now;
  }
}

/**
 * A freshly accepted connection (a Conn, or a frame link) through the gate: `make` builds its handler with its ticket, and
 * the deadline calls the handler's expire(). Null when the gate refused it: it is closed then,
 * before a byte was read.
 */
export function admitConnection<T extends { expire(why: string): void }>(
  gate: PreAuthGate,
  conn: { readonly remote: string; close(): void },
  make: (ticket: PreAuthTicket) => T,
): T | null {
  let handler: T | null = null;
  const ticket = gate.admit(conn.remote, (why) => handler?.expire(why));
  if (ticket === null) {
    conn.close();
    return null;
  }
  handler = make(ticket);
  return handler;
}
