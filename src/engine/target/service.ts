/**
 * The target: serves the extents of its local drives to whoever completes HELLO. Blind to volumes.
 * Sans-I/O: it is handed connections (real sockets or simulated links) through handle() and
 * reaches the world only through Env and the drives it is given. The CLI wires
 * env.net.listen(address, (c) => service.handle(c)), and handleLink() for frame links that are
 * not byte streams (the in-process pipe, RDMA).
 */
import type { FormattedDrive } from "../drive/formatted-api.ts";
import type { Env, TimerHandle } from "../env.ts";
import { ByteBudget } from "../limits/byte-budget.ts";
import { admitConnection, PreAuthGate, type PreAuthLimits } from "../limits/preauth.ts";
import type { Conn } from "../net/conn.ts";
import type { FrameLink } from "../net/frame-link.ts";
import { streamLink } from "../net/stream-link.ts";
import type { TargetInfo } from "../wire/control.ts";
import { serverKeys } from "../wire/cluster-key.ts";
import { MAX_PAYLOAD_BYTES } from "../wire/header.ts";
import type { HelloRequest } from "../wire/control.ts";
import { type ConnectionLimits, TargetConnection } from "./connection.ts";
import { DriveTable, type ServedDrive } from "./drive-table.ts";
import { flushDrive, type TargetContext } from "./execute.ts";
import { trimBuffers } from "./reply.ts";

/** Reported in HELLO so a requester can tell which implementation it talks to. */
export const TARGET_VERSION = "nvmesh-target/1";

export const DEFAULT_MAX_INFLIGHT_PER_CONN = 256;
/**
 * LOCKs per connection that may wait for their units without holding an in-flight slot (a
 * session sends at most this many LOCKs at once by default: DEFAULT_SESSION_MAX_INFLIGHT_LOCKS).
 */
export const MAX_PARKED_LOCKS_PER_CONN = 1024;

/**
 * Payload bytes one connection's executing requests may hold (one larger request runs alone). The
 * same as a session's own bound (DEFAULT_SESSION_MAX_INFLIGHT_BYTES, tested equal), so a
 * well-behaved requester never meets it and only one that ignores it is slowed down.
 */
export const DEFAULT_CONN_INFLIGHT_BYTES = 64 * 1024 * 1024;

/**
 * Payload bytes in flight over all of a target's connections (WRITE data received, READ answers
 * allocated) before every connection that wants more stops reading until some is given back.
 */
export const DEFAULT_TARGET_PAYLOAD_BUDGET_BYTES = 256 * 1024 * 1024;

/**
 * Strangers: connections that have not passed HELLO (and AUTH) yet. A reconnecting cluster of a
 * few hundred clients fits; a flood is refused beyond it, authenticated sessions untouched.
 */
export const DEFAULT_TARGET_PREAUTH: PreAuthLimits = { max_unauthenticated: 256, auth_timeout_ms: 10_000 };

export interface TargetServiceOptions {
  name: string;
  drives: FormattedDrive[];
  /** Requests executing at once per connection; more are queued up to a hard cap. */
  max_inflight_per_conn?: number;
  /**
   * Refuse data-path requests of role "client" connections whose client is not registered on
   * the drive by FENCE, or whose generation is below its min_generation (target/fence.ts).
   * Off by default for now: turned on when the TOMA registers clients (the TOMA and client side
   * of mirroring is being built); this option then goes away and fencing is always on.
   */
  fencing?: boolean;
  /** Period of the target's own flushes of drives with write-intent bits (WRITEBACK_MS). */
  writeback_ms?: number;
  /**
   * The cluster's server key: every requester must prove it holds it or the client key derived
   * from it (HELLO, AUTH), and what it may do follows from which (capability.ts). None: anyone
   * may do anything its HELLO claims (--insecure, labs only).
   */
  cluster_key?: Uint8Array | null;
  /** Payload bytes in flight over all connections (DEFAULT_TARGET_PAYLOAD_BUDGET_BYTES). */
  payload_budget_bytes?: number;
  /** Connections that have not authenticated yet: how many, for how long (DEFAULT_TARGET_PREAUTH). */
  preauth?: Partial<PreAuthLimits>;
}

/**
 * How often a drive with write-intent bits waiting for quiet flushes is flushed by the target
 * itself. Clients need not flush (fio without fsync, an idle file system); without this, the bits
 * of every region a mirror ever wrote would stay set, and a leg's return would copy all of them.
 * It also bounds how long acknowledged mirror writes sit in a volatile cache.
 */
export const WRITEBACK_MS = 1000;

export class TargetService {
  private readonly drives = new DriveTable();
  private readonly conns = new Set<TargetConnection>();
  /** The live connection of each client and TOMA, by role and name (see Supersede). */
  private readonly byRequester = new Map<string, { conn: TargetConnection; quiet: Promise<void> | null }>();
  private readonly ctx: TargetContext;
  private readonly limits: ConnectionLimits;
  private readonly budget: ByteBudget;
  private readonly gate: PreAuthGate;
  private readonly writeback: TimerHandle;
  /** TargetInfo.serving: random per start of this service. */
  readonly serving: string;
  /** Where this target also listens on RDMA, told to requesters in HELLO (setRdma). */
  private rdma: TargetInfo["rdma"];
  /** Drives being flushed by the writeback now. */
  private readonly flushing = new Set<ServedDrive>();

  constructor(
    private readonly env: Env,
    private readonly opts: TargetServiceOptions,
  ) {
    for (const d of opts.drives) this.drives.add(d, env.random.u32());
    this.serving = [env.random.u32(), env.random.u32()].map((n) => n.toString(16).padStart(8, "0")).join("");
    const max_inflight = opts.max_inflight_per_conn ?? DEFAULT_MAX_INFLIGHT_PER_CONN;
    if (!Number.isInteger(max_inflight) || max_inflight < 1) {
      throw new Error(`max_inflight_per_conn must be a positive integer, got ${max_inflight}`);
    }
    this.limits = {
      max_inflight,
      max_inflight_bytes: DEFAULT_CONN_INFLIGHT_BYTES,
      max_parked_locks: MAX_PARKED_LOCKS_PER_CONN,
      // The connection is paused while anything is queued: only what was read before the pause
      // lands here (a socket read or two). These caps stop a transport that does not pause.
      max_queued_frames: Math.max(4096, max_inflight * 16),
      max_queued_bytes: Math.max(128 * 1024 * 1024, 4 * MAX_PAYLOAD_BYTES),
    };
    this.budget = new ByteBudget(opts.payload_budget_bytes ?? DEFAULT_TARGET_PAYLOAD_BUDGET_BYTES);
    this.gate = new PreAuthGate(env, { ...DEFAULT_TARGET_PREAUTH, ...opts.preauth }, "target");
    const key = opts.cluster_key ?? null;
    this.ctx = {
      drives: this.drives,
      log: env.log,
      fencing: opts.fencing ?? false,
      auth: key === null ? null : { keys: serverKeys(key), fill: (b) => env.random.fill(b) },
      info: () => this.info(),
    };
    this.writeback = env.timers.every(opts.writeback_ms ?? WRITEBACK_MS, () => this.writeBack());
  }

  private writeBack(): void {
    trimBuffers(); // the same tick: buffers kept after a burst are let go once it is over
    for (const d of this.drives.all()) {
      if (!d.dirty.awaitingFlush || this.flushing.has(d)) continue;
      this.flushing.add(d);
      flushDrive(d)
        .catch((e) => this.env.log.warn("writeback flush failed", { drive: d.drive.info.drive_uuid, error: String(e) }))
        .finally(() => this.flushing.delete(d));
    }
  }

  /** Takes ownership of a freshly accepted byte-stream connection (TCP, unix, simulated). */
  handle(conn: Conn): void {
    this.handleLink(streamLink(conn));
  }

  /** Takes ownership of a freshly accepted frame link. */
  handleLink(link: FrameLink): void {
    const c = admitConnection(
      this.gate,
      link,
      (ticket) =>
        new TargetConnection(
          this.ctx,
          link,
          this.limits,
          this.budget,
          ticket,
          (ended) => this.conns.delete(ended),
          (hello, by) => this.supersede(hello, by),
        ),
    );
    if (c !== null) this.conns.add(c);
  }

  /** Connections that have not authenticated yet (status and tests). */
  get unauthenticatedCount(): number {
    return this.gate.unauthenticated;
  }

  /** Payload bytes held by requests in flight over all connections (status and tests). */
  get payloadBytesInFlight(): number {
    return this.budget.used;
  }

  /**
   * Clients and TOMAs have one live connection each here: a new HELLO closes the older one and
   * waits for its requests to finish. Admin connections (CLI commands) never write data and may
   * be many at once.
   */
  private supersede(hello: HelloRequest, by: TargetConnection): Promise<void> | null {
    if (hello.role === "admin") return null;
    const key = `${hello.role}:${hello.name}`;
    const older = this.byRequester.get(key);
    // Waits for the whole line of predecessors: the one just superseded may itself still be
    // waiting for an older one.
    const quiet = older ? Promise.all([older.quiet, older.conn.drained()]).then(() => {}) : null;
    this.byRequester.set(key, { conn: by, quiet });
    Promise.all([quiet, by.drained()]).then(() => {
      if (this.byRequester.get(key)?.conn === by) this.byRequester.delete(key);
    });
    if (older) {
      this.env.log.info("connection superseded by a new one of the same requester", {
        requester: key,
        old: older.conn.remote,
        new: by.remote,
      });
      older.conn.close();
    }
    return quiet;
  }

  /** Hot-plug: serves a drive from now on. Throws if a drive with its uuid is already served. */
  addDrive(drive: FormattedDrive): void {
    this.drives.add(drive, this.env.random.u32());
    this.env.log.info("drive added", { drive: drive.info.drive_uuid, path: drive.info.path });
  }

  /**
   * Hot-unplug: new requests for the drive get NO_SUCH_DRIVE; requests already running finish.
   * Returns the drive (the caller closes it) or undefined if it was not served.
   */
  removeDrive(drive_uuid: string): FormattedDrive | undefined {
    const d = this.drives.remove(drive_uuid);
    if (d) this.env.log.info("drive removed", { drive: drive_uuid });
    return d;
  }

  info(): TargetInfo {
    const info: TargetInfo = { target_name: this.opts.name, version: TARGET_VERSION, drives: this.drives.infos(), serving: this.serving };
    if (this.rdma !== undefined) info.rdma = this.rdma;
    return info;
  }

  /** Offers RDMA on `port` (and `host`, or null: the address a requester reached us by). */
  setRdma(offer: { host: string | null; port: number }): void {
    this.rdma = offer;
  }

  /** Connections currently open (for status output and tests). */
  get connectionCount(): number {
    return this.conns.size;
  }

  /** Open connections by transport kind (status output). */
  connectionsByTransport(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const c of this.conns) out[c.transport.kind] = (out[c.transport.kind] ?? 0) + 1;
    return out;
  }

  /** Closes every connection (shutdown). Drives are the caller's to close. */
  closeAll(): void {
    this.writeback.cancel();
    for (const c of [...this.conns]) c.close();
  }
}
