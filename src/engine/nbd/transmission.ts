/**
 * The transmission phase of one connection: decodes requests, runs them against the export's
 * DriveStore concurrently, and answers each with a simple reply as soon as it completes, so replies
 * leave in completion order, not request order.
 *
 * Backpressure: the Conn contract has no way to stop the socket reading, so when the in-flight
 * bound is reached this object stops *consuming* bytes (feed() returns early and `paused` is true)
 * and the session keeps the rest until resume(). Nothing is dropped.
 */
import type { Logger } from "../env.ts";
import {
  MAX_PAYLOAD_BYTES,
  NBD_CMD_DISC,
  NBD_CMD_FLAG_FUA,
  NBD_CMD_FLAG_NO_HOLE,
  NBD_CMD_FLUSH,
  NBD_CMD_READ,
  NBD_CMD_TRIM,
  NBD_CMD_WRITE,
  NBD_CMD_WRITE_ZEROES,
  NBD_EINVAL,
  NBD_EIO,
  NBD_ENOSPC,
  NBD_EPERM,
  NBD_OK,
  REQUEST_HEADER_BYTES,
  SIMPLE_REPLY_BYTES,
} from "./constants.ts";
import type { NbdExport } from "./exports.ts";
import { Gather } from "./gather.ts";
import { decodeRequestHeader, encodeSimpleReply, type NbdRequest } from "./request.ts";
import { COPY_LIMIT_BYTES } from "../wire/send-batcher.ts";
import { BufferPool } from "../wire/buffer-pool.ts";

export interface TransmissionLimits {
  /** Requests executing at once on one connection; decoding pauses at this bound. */
  max_inflight_requests: number;
  /** READ + WRITE payload bytes held by executing requests; decoding pauses at this bound. */
  max_inflight_bytes: number;
}

export interface TransmissionHooks {
  /** Queues bytes; those below COPY_LIMIT_BYTES are copied before it returns (SendBatcher.push). */
  send(bytes: Uint8Array): void;
  /** True when send() is done with bytes of any size when it returns (SendBatcher.copies). */
  readonly sendCopies: boolean;
  /** In-flight work dropped below the bounds: feed() will consume again. */
  resume(): void;
  /**
   * The connection must end: a protocol violation, or a stop whose in-flight work is answered.
   * Called at most once.
   */
  close(reason: string, misbehaved: boolean): void;
  /** Stopped or abandoned, and no request is executing any more: the store is no longer used. */
  idle(): void;
}

/** Shared source of zeroes for NBD_CMD_FLAG_NO_HOLE; never written to. */
const ZERO_CHUNK = new Uint8Array(1024 * 1024);

export class Transmission {
  private readonly header = new Gather();
  private readonly headerBytes = new Uint8Array(REQUEST_HEADER_BYTES);
  private readonly payload = new Gather();
  /** The WRITE whose payload is being collected, if any. */
  private pendingWrite: NbdRequest | null = null;
  private inflightRequests = 0;
  private inflightBytes = 0;
  /** DISC received, export removed or server stopping: no new requests, close once idle. */
  private stopping = false;
  private stopReason = "";
  private closed = false;
  /** READ reply and WRITE payload buffers, reused once nothing references them any more. */
  private readonly pool = new BufferPool(8 * 1024 * 1024);

  constructor(
    private readonly exp: NbdExport,
    private readonly hooks: TransmissionHooks,
    private readonly limits: TransmissionLimits,
    private readonly log: Logger,
  ) {
    this.header.start(this.headerBytes);
  }

  get inflight(): number {
    return this.inflightRequests;
  }

  /** True while feed() will not consume: the in-flight bounds are reached. */
  get paused(): boolean {
    if (this.stopping) return false; // stopping consumes and discards
    return (
      this.inflightRequests >= this.limits.max_inflight_requests ||
      this.inflightBytes >= this.limits.max_inflight_bytes
    );
  }

  /**
   * Stops taking requests; closes the connection once the requests in flight have been answered.
   * Used for NBD_CMD_DISC, export removal and server shutdown.
   */
  stop(reason: string): void {
    if (this.stopping) return;
    this.stopping = true;
    this.stopReason = reason;
    if (this.inflightRequests === 0) this.becameIdle();
  }

  /** The connection is gone: requests in flight still complete (the store needs that) but send nothing. */
  abandon(): void {
    const wasStopping = this.stopping;
    this.closed = true;
    this.stopping = true;
    if (!wasStopping && this.inflightRequests === 0) this.hooks.idle();
  }

  /** Consumes bytes from src[pos..] until paused; returns the number of bytes consumed. */
  feed(src: Uint8Array, pos: number): number {
    const start = pos;
    while (pos < src.length) {
      if (this.stopping) return src.length - start; // nothing after a stop is executed
      if (this.pendingWrite) {
        pos += this.payload.take(src, pos);
        if (!this.payload.done) break;
        const req = this.pendingWrite;
        this.pendingWrite = null;
        this.dispatch(req, this.payload.bytes);
        continue;
      }
      if (this.paused) break;
      let decoded: NbdRequest | string;
      if (!this.header.started && src.length - pos >= REQUEST_HEADER_BYTES) {
        decoded = decodeRequestHeader(src, pos); // in place: the common case copies nothing
        pos += REQUEST_HEADER_BYTES;
      } else {
        pos += this.header.take(src, pos);
        if (!this.header.done) break;
        decoded = decodeRequestHeader(this.headerBytes, 0);
        this.header.start(this.headerBytes);
      }
      if (typeof decoded === "string") {
        this.protocolError(decoded);
        return src.length - start;
      }
      if (decoded.type === NBD_CMD_WRITE && decoded.length > 0) {
        // The payload must be read whatever the request's validity, or the stream loses sync.
        if (decoded.length > MAX_PAYLOAD_BYTES) {
          this.protocolError(`write payload of ${decoded.length} bytes exceeds ${MAX_PAYLOAD_BYTES}`);
          return src.length - start;
        }
        this.pendingWrite = decoded;
        // The one copy of a write's data: socket chunk → this buffer, then handed to the store.
        this.payload.start(this.pool.take(decoded.length));
        continue;
      }
      this.dispatch(decoded, null);
    }
    return pos - start;
  }

  private protocolError(reason: string): void {
    this.stopping = true;
    this.closed = true;
    this.hooks.close(reason, true);
    if (this.inflightRequests === 0) this.hooks.idle();
  }

  private becameIdle(): void {
    if (!this.closed) {
      this.closed = true;
      this.hooks.close(this.stopReason, false);
    }
    this.hooks.idle();
  }

  /** The NBD error for a request that must not reach the store, or NBD_OK. */
  private check(req: NbdRequest): number {
    const size = this.exp.store.size_bytes;
    const writes = req.type === NBD_CMD_WRITE || req.type === NBD_CMD_TRIM || req.type === NBD_CMD_WRITE_ZEROES;
    switch (req.type) {
      case NBD_CMD_READ:
      case NBD_CMD_WRITE:
      case NBD_CMD_TRIM:
      case NBD_CMD_FLUSH:
      case NBD_CMD_DISC:
        if ((req.flags & ~NBD_CMD_FLAG_FUA) !== 0) return NBD_EINVAL;
        break;
      case NBD_CMD_WRITE_ZEROES:
        if ((req.flags & ~(NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_NO_HOLE)) !== 0) return NBD_EINVAL;
        break;
      default:
        return NBD_EINVAL; // CACHE, BLOCK_STATUS, RESIZE...: not advertised
    }
    if (writes && this.exp.read_only) return NBD_EPERM;
    if (req.type === NBD_CMD_READ && req.length > MAX_PAYLOAD_BYTES) return NBD_EINVAL;
    if (req.type === NBD_CMD_FLUSH || req.type === NBD_CMD_DISC) return NBD_OK;
    if (req.offset > size || req.length > size - req.offset) {
      // The spec's choice: ENOSPC for writing past the end, EINVAL for reading or trimming there.
      return req.type === NBD_CMD_WRITE || req.type === NBD_CMD_WRITE_ZEROES ? NBD_ENOSPC : NBD_EINVAL;
    }
    return NBD_OK;
  }

  private dispatch(req: NbdRequest, payload: Uint8Array | null): void {
    const error = this.check(req);
    if (error !== NBD_OK) return this.reply(req, error);
    if (req.type === NBD_CMD_DISC) return this.stop("client disconnected");
    const cost = req.type === NBD_CMD_READ || req.type === NBD_CMD_WRITE ? req.length : 0;
    this.inflightRequests++;
    this.inflightBytes += cost;
    void this.execute(req, payload).then(() => this.completed(cost));
  }

  /** Runs one request and sends its reply. Never rejects. */
  private async execute(req: NbdRequest, payload: Uint8Array | null): Promise<void> {
    const store = this.exp.store;
    const fua = (req.flags & NBD_CMD_FLAG_FUA) !== 0;
    try {
      switch (req.type) {
        case NBD_CMD_READ: {
          // Header and data in one buffer: the store reads straight into the bytes we send. The
          // buffer goes back to the pool once send() has copied it (always when small, and for
          // any size on a copying socket), and only after a read that succeeded: a failed
          // multi-segment read may still have parts landing in it.
          const n = SIMPLE_REPLY_BYTES + req.length;
          const out = this.pool.take(n);
          if (req.length > 0) await store.read(req.offset, out.subarray(SIMPLE_REPLY_BYTES));
          encodeSimpleReply(out, NBD_OK, req);
          if (this.closed) return;
          this.hooks.send(out);
          if (n < COPY_LIMIT_BYTES || this.hooks.sendCopies) this.pool.give(out);
          return;
        }
        case NBD_CMD_WRITE:
          if (payload) {
            await store.write(req.offset, payload, fua);
            // Written: every part of it was sent (or copied), so the buffer is free. After a
            // failure, parts may still wait in a session queue, so it is left to the GC.
            if (payload.length < COPY_LIMIT_BYTES || this.hooks.sendCopies) this.pool.give(payload);
          }
          break;
        case NBD_CMD_FLUSH:
          await store.flush();
          break;
        case NBD_CMD_TRIM:
          if (req.length > 0) await store.trim(req.offset, req.length);
          if (fua) await store.flush(); // trim has no FUA of its own
          break;
        case NBD_CMD_WRITE_ZEROES:
          if (req.length === 0) break;
          if ((req.flags & NBD_CMD_FLAG_NO_HOLE) !== 0) await this.writeZeroBytes(req.offset, req.length, fua);
          else await store.writeZeroes(req.offset, req.length, fua);
          break;
      }
      this.reply(req, NBD_OK);
    } catch (err) {
      this.log.warn("nbd store I/O failed", {
        type: req.type,
        offset: req.offset,
        length: req.length,
        error: err instanceof Error ? err.message : String(err),
      });
      this.reply(req, NBD_EIO);
    }
  }

  /** NO_HOLE asks for allocated zeroes, so write real zero bytes instead of punching a hole. */
  private async writeZeroBytes(offset: number, length: number, fua: boolean): Promise<void> {
    const end = offset + length;
    for (let at = offset; at < end; at += ZERO_CHUNK.length) {
      const n = Math.min(ZERO_CHUNK.length, end - at);
      await this.exp.store.write(at, ZERO_CHUNK.subarray(0, n), fua);
    }
  }

  private reply(req: NbdRequest, error: number): void {
    if (this.closed) return;
    const b = new Uint8Array(SIMPLE_REPLY_BYTES);
    encodeSimpleReply(b, error, req);
    this.hooks.send(b);
  }

  private completed(cost: number): void {
    const wasPaused = this.paused;
    this.inflightRequests--;
    this.inflightBytes -= cost;
    if (this.stopping) {
      if (this.inflightRequests === 0) this.becameIdle();
      return;
    }
    if (wasPaused && !this.paused) this.hooks.resume();
  }
}
