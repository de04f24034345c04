/**
 * The NBD server: serves the exports of an ExportRegistry to any number of connections.
 * Sans-I/O: the caller owns the listener and hands each accepted Conn to handle():
 *
 *   const server = new NbdServer(env, exports);
 *   const listener = await env.net.listen("unix:/run/nvmesh/vol1.sock", (c) => server.handle(c));
 */
import type { Env } from "../env.ts";
import { ByteBudget } from "../limits/byte-budget.ts";
import { admitConnection, PreAuthGate } from "../limits/preauth.ts";
import type { Conn } from "../net/conn.ts";
import { MAX_PAYLOAD_BYTES } from "./constants.ts";
import type { ExportLookup, ExportRegistry, NbdExport } from "./exports.ts";
import { NbdSession, type SessionLimits } from "./session.ts";
import { BufferPool } from "../wire/buffer-pool.ts";
import type { TimerHandle } from "../env.ts";

/** How often the server's buffer pool lets go of what an idle period did not use. */
const POOL_TRIM_MS = 5000;

export interface NbdLimits extends SessionLimits {
  /**
   * Payload bytes in flight over all connections of the server (WRITE data received and not yet
   * written, READ replies allocated and not yet sent); a connection that needs more waits, in
   * arrival order, with its socket paused.
   */
  payload_budget_bytes: number;
}

export type NbdServerOptions = Partial<NbdLimits>;

export const DEFAULT_NBD_LIMITS: NbdLimits = {
  // qemu-nbd's default handshake limit; a client finishes its handshake in milliseconds.
  handshake_timeout_ms: 10_000,
  max_handshakes: 128,
  max_option_bytes: 64 * 1024,
  max_options: 1024,
  max_inflight_requests: 128,
  max_inflight_bytes: 2 * MAX_PAYLOAD_BYTES,
  payload_budget_bytes: 4 * MAX_PAYLOAD_BYTES,
};

export class NbdServer {
  private readonly sessions = new Set<NbdSession>();
  private readonly limits: NbdLimits;
  private readonly budget: ByteBudget;
  private readonly gate: PreAuthGate;
  /** READ reply and WRITE data buffers for every connection: bounded once, not per connection. */
  private readonly pool = new BufferPool(16 * 1024 * 1024);
  private readonly trimmer: TimerHandle;
  private readonly unsubscribe: () => void;
  private closing = false;

  constructor(
    private readonly env: Env,
    private readonly exports: ExportRegistry,
    options: NbdServerOptions = {},
  ) {
    this.limits = { ...DEFAULT_NBD_LIMITS, ...options };
    if (this.limits.max_inflight_requests < 1 || this.limits.max_inflight_bytes < 1) {
      throw new Error("NBD in-flight limits must be at least 1");
    }
    this.budget = new ByteBudget(this.limits.payload_budget_bytes);
    this.trimmer = env.timers.every(POOL_TRIM_MS, () => this.pool.trim());
    this.gate = new PreAuthGate(env, { max_unauthenticated: this.limits.max_handshakes, auth_timeout_ms: this.limits.handshake_timeout_ms }, "nbd");
    // Whoever removes an export (detach() or the registry's owner directly), its connections drain.
    this.unsubscribe = exports.onRemove((name, exp) => {
      for (const s of this.sessions) if (s.exp === exp) s.stop(`export '${name}' removed`);
    });
  }

  /**
   * Serves one accepted connection until it closes. Never throws. `view`: what this connection
   * may see (its listener's exports); every export of the registry without one.
   */
  handle(conn: Conn, view: ExportLookup = this.exports): void {
    if (this.closing) {
      conn.close();
      return;
    }
    const session = admitConnection(this.gate, conn, (ticket) => new NbdSession(this.env, conn, view, this.limits, this.budget, this.pool, ticket));
    if (session === null) return; // refused (logged by the gate): too many connections in their handshake
    this.sessions.add(session);
    void session.finished.then(() => this.sessions.delete(session));
    session.start();
  }

  /** Stops every connection accepted through `view` (its listener went away): they drain and close. */
  stopView(view: ExportLookup, why: string): void {
    for (const s of this.sessions) if (s.view === view) s.stop(why);
  }

  /** Live connections, in handshake or transmission. */
  get connection_count(): number {
    return this.sessions.size;
  }

  /** Connections still in their handshake. */
  get handshake_count(): number {
    return this.gate.unauthenticated;
  }

  /** Payload bytes held by requests in flight over all connections. */
  get payload_bytes_in_flight(): number {
    return this.budget.used;
  }

  /**
   * Removes an export and resolves once every connection that served it has answered its requests
   * in flight and closed, so the caller may then close the store. Undefined if no such export.
   */
  async detach(name: string): Promise<NbdExport | undefined> {
    const exp = this.exports.remove(name);
    if (!exp) return undefined;
    await Promise.all([...this.sessions].filter((s) => s.exp === exp).map((s) => s.finished));
    return exp;
  }

  /** Stops serving: every connection drains its requests in flight and closes. */
  async close(): Promise<void> {
    this.closing = true;
    this.trimmer.cancel();
    this.unsubscribe();
    const all = [...this.sessions];
    for (const s of all) s.stop("server shutting down");
    await Promise.all(all.map((s) => s.finished));
  }
}
