/**
 * The transmission phase of one connection: decodes requests, runs them against the export's
 * DriveStore concurrently, and answers each with a simple reply as soon as it completes, so replies
 * leave in completion order, not request order.
 *
 * Backpressure: feed() stops consuming bytes (and `paused` is true) while this connection has
 * `max_inflight_requests` requests or `max_inflight_bytes` of payload in flight, or while the
 * server-wide byte budget has no room for the next payload; the session then pauses the socket
 * (TCP pushes back on the client) and feeds again on resume(). Nothing is dropped, nobody is
 * disconnected for sending fast.
 *
 * Memory is taken as bytes arrive, never as a header announces them: a WRITE's data is received
 * into buffers of at most STREAM_PIECE_BYTES, each reserved against the budget when its first
 * byte is there and written to the store as soon as it is full; the reply goes once every piece
 * is written. So a client that announces a 32 MiB WRITE and stalls holds at most the piece it is
 * filling, and a stream of large WRITEs never needs more than a piece per connection to move.
 */
import type { Logger } from "../env.ts";
import type { ByteBudget } from "../limits/byte-budget.ts";
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
import type { BufferPool } from "../wire/buffer-pool.ts";
import { giveWithRoom, takeWithRoom } from "../wire/headroom.ts";

/**
 * WRITEs above this are received and written in pieces of this size, cut at multiples of it in
 * the export (so no block is ever split between two pieces); smaller ones arrive in one buffer.
 */
export const STREAM_PIECE_BYTES = 1024 * 1024;

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
  /**
   * Queues bytes and calls give(bytes) once nothing references them any more: at once when
   * copied, once written when kept by reference, never if the connection ends first
   * (SendBatcher.pushOwned).
   */
  sendOwned(bytes: Uint8Array, give: (b: Uint8Array) => void): void;
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

/** A WRITE whose data is being received. */
interface IncomingWrite {
  req: NbdRequest;
  /** Bytes of data received so far. */
  received: number;
  /** The piece being filled, and how much of it. */
  piece: Uint8Array | null;
  filled: number;
  /** Pieces written to the store and not finished yet. */
  writing: number;
  /** The first error of a piece, or NBD_OK. */
  error: number;
}

export class Transmission {
  private readonly header = new Gather();
  private readonly headerBytes = new Uint8Array(REQUEST_HEADER_BYTES);
  /** The WRITE whose data is being received, if any. */
  private write: IncomingWrite | null = null;
  /** Data bytes still to skip: a WRITE refused before its data was read (the stream must stay in step). */
  private discard = 0;
  /** A READ decoded but waiting for room (this connection's bound or the server's budget). */
  private waitingRead: NbdRequest | null = null;
  private inflightRequests = 0;
  private inflightBytes = 0;
  /** Memory waited for: room on this connection, or the budget (a grant will come). */
  private wants: "nothing" | "room" | "budget" = "nothing";
  /** Bytes the budget granted for the reservation being waited for. */
  private granted = 0;
  private wantedBytes = 0;
  private readonly onGrant = () => {
    // Stopped while the grant travelled (a cancel came too late): no request will use it.
    if (this.stopping) return this.budget.give(this.wantedBytes);
    this.granted = this.wantedBytes;
    this.wants = "nothing";
    this.proceed();
  };
  /** DISC received, export removed or server stopping: no new requests, close once idle. */
  private stopping = false;
  private stopReason = "";
  private closed = false;
  constructor(
    private readonly exp: NbdExport,
    private readonly hooks: TransmissionHooks,
    private readonly limits: TransmissionLimits,
    private readonly budget: ByteBudget,
    /** READ reply and WRITE data buffers, reused once nothing references them; the server's. */
    private readonly pool: BufferPool,
    private readonly log: Logger,
  ) {
    this.header.start(this.headerBytes);
  }

  /** Where a sent READ reply buffer goes once nothing references it. */
  private readonly giveBack = (b: Uint8Array): void => this.pool.give(b);

  get inflight(): number {
    return this.inflightRequests;
  }

  /** Payload bytes this connection holds now (WRITE pieces, READ replies). */
  get inflight_bytes(): number {
    return this.inflightBytes;
  }

  /** True while feed() will not consume: an in-flight bound is reached, or memory is waited for. */
  get paused(): boolean {
    if (this.stopping) return false; // stopping consumes and discards
    if (this.wants !== "nothing") return true;
    if (this.write !== null || this.discard > 0) return false; // data of a request already counted
    return this.inflightRequests >= this.limits.max_inflight_requests || this.waitingRead !== null;
  }

  /**
   * Stops taking requests; closes the connection once the requests in flight have been answered.
   * Used for NBD_CMD_DISC, export removal and server shutdown.
   */
  stop(reason: string): void {
    if (this.stopping) return;
    this.stopping = true;
    this.stopReason = reason;
    this.dropWaits();
    if (this.inflightRequests === 0) this.becameIdle();
  }

  /** The connection is gone: requests in flight still complete (the store needs that) but send nothing. */
  abandon(): void {
    const wasStopping = this.stopping;
    this.closed = true;
    this.stopping = true;
    this.dropWaits();
    if (!wasStopping && this.inflightRequests === 0) this.hooks.idle();
  }

  /**
   * No request will be started any more: a wait for memory is withdrawn, memory granted and not
   * used is given back, and a WRITE still being received is failed (its pieces already written
   * finish on their own).
   */
  private dropWaits(): void {
    // A grant already on its way (cancel too late) is given back by onGrant: stopping is set.
    if (this.wants === "budget") this.budget.cancel(this.onGrant);
    this.wants = "nothing";
    if (this.granted > 0) {
      this.budget.give(this.granted);
      this.granted = 0;
    }
    if (this.waitingRead !== null) {
      this.waitingRead = null;
      this.inflightRequests--;
    }
    const w = this.write;
    if (w !== null) {
      this.write = null;
      if (w.piece !== null) this.release(w.piece.length);
      w.piece = null;
      if (w.writing === 0) this.inflightRequests--; // else the last piece to finish ends it
      else w.error = NBD_EIO;
      w.received = -1; // never complete: no reply is owed on a connection that ends
    }
  }

  /** Consumes bytes from src[pos..] until paused; returns the number of bytes consumed. */
  feed(src: Uint8Array, pos: number): number {
    const start = pos;
    while (pos < src.length) {
      if (this.stopping) return src.length - start; // nothing after a stop is executed
      if (this.discard > 0) {
        const n = Math.min(this.discard, src.length - pos);
        this.discard -= n;
        pos += n;
        continue;
      }
      if (this.write !== null) {
        const w = this.write;
        if (w.piece === null && !this.startPiece(w)) break;
        const piece = w.piece!;
        const n = Math.min(piece.length - w.filled, src.length - pos);
        piece.set(src.subarray(pos, pos + n), w.filled);
        w.filled += n;
        w.received += n;
        pos += n;
        if (w.filled === piece.length) this.writePiece(w);
        continue;
      }
      if (this.waitingRead !== null) {
        if (!this.startRead(this.waitingRead)) break;
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
      this.decoded(decoded);
    }
    return pos - start;
  }

  private decoded(req: NbdRequest): void {
    if (req.type === NBD_CMD_WRITE && req.length > MAX_PAYLOAD_BYTES) {
      // We will neither read nor allocate it: the stream cannot be kept in step cheaply.
      return this.protocolError(`write payload of ${req.length} bytes exceeds ${MAX_PAYLOAD_BYTES}`);
    }
    const error = this.check(req);
    if (error !== NBD_OK) {
      // A refused WRITE's data is still consumed, so the stream stays in step; it is never kept.
      if (req.type === NBD_CMD_WRITE) this.discard = req.length;
      return this.reply(req, error);
    }
    if (req.type === NBD_CMD_DISC) return this.stop("client disconnected");
    this.inflightRequests++;
    if (req.type === NBD_CMD_WRITE && req.length > 0) {
      this.write = { req, received: 0, piece: null, filled: 0, writing: 0, error: NBD_OK };
      return;
    }
    if (req.type === NBD_CMD_READ && req.length > 0) {
      if (!this.startRead(req)) this.waitingRead = req;
      return;
    }
    void this.execute(req).then(() => this.completed(0));
  }

  /**
   * Takes n bytes for this connection: room under its own bound (one larger request goes alone)
   * and in the server's budget. False when it must wait; feed() is called again once it may.
   */
  private reserve(n: number): boolean {
    // Already queued at the budget for exactly this reservation: asking again would queue twice.
    if (this.wants === "budget") return false;
    if (this.granted > 0) {
      // The grant is for exactly the reservation that waited, which is the one asked again.
      if (this.granted !== n) throw new Error(`invariant: granted ${this.granted} bytes for a reservation of ${n}`);
      this.granted = 0;
      this.inflightBytes += n;
      return true;
    }
    if (this.inflightBytes > 0 && this.inflightBytes + n > this.limits.max_inflight_bytes) {
      this.wants = "room";
      return false;
    }
    if (!this.budget.take(n, this.onGrant)) {
      this.wants = "budget";
      this.wantedBytes = n;
      return false;
    }
    this.inflightBytes += n;
    return true;
  }

  private release(n: number): void {
    this.inflightBytes -= n;
    this.budget.give(n);
    if (this.inflightBytes < 0) throw new Error(`invariant: nbd connection holds ${this.inflightBytes} bytes`);
  }

  /** The length of the next piece of w: the whole WRITE when small, else up to the next boundary. */
  private static pieceLength(w: IncomingWrite): number {
    const left = w.req.length - w.received;
    if (w.req.length <= STREAM_PIECE_BYTES) return left;
    const at = w.req.offset + w.received;
    return Math.min(left, STREAM_PIECE_BYTES - (at % STREAM_PIECE_BYTES));
  }

  private startPiece(w: IncomingWrite): boolean {
    const n = Transmission.pieceLength(w);
    if (!this.reserve(n)) return false;
    // Room for the data path's frame header in front: a large piece then leaves for a target in
    // one socket write (wire/headroom.ts).
    w.piece = takeWithRoom(this.pool, n);
    w.filled = 0;
    return true;
  }

  /** A full piece goes to the store now; the reply waits for the last one. */
  private writePiece(w: IncomingWrite): void {
    const piece = w.piece!;
    const offset = w.req.offset + w.received - piece.length;
    w.piece = null;
    w.filled = 0;
    w.writing++;
    const last = w.received === w.req.length;
    if (last) this.write = null;
    const fua = (w.req.flags & NBD_CMD_FLAG_FUA) !== 0;
    this.exp.store.write(offset, piece, fua).then(
      () => {
        // Written: the store holds no reference any more, so the buffer is free. After a failure,
        // parts may still wait in a session queue, so it is left to the GC.
        if (piece.length < COPY_LIMIT_BYTES || this.hooks.sendCopies) giveWithRoom(this.pool, piece);
        this.pieceDone(w, piece.length, NBD_OK);
      },
      (err: unknown) => {
        this.log.warn("nbd store I/O failed", { type: w.req.type, offset, length: piece.length, error: err instanceof Error ? err.message : String(err) });
        this.pieceDone(w, piece.length, NBD_EIO);
      },
    );
  }

  private pieceDone(w: IncomingWrite, bytes: number, error: number): void {
    w.writing--;
    if (w.error === NBD_OK) w.error = error;
    this.release(bytes);
    if (w.writing > 0 || w.received !== w.req.length) {
      // Still receiving (or given up on: received is -1 and the last piece ends the request).
      if (w.received === -1 && w.writing === 0) this.completed(0);
      else this.wakeIfRoom();
      return;
    }
    this.reply(w.req, w.error);
    this.completed(0);
  }

  /** Starts a READ whose reply buffer fits now; false if it must wait. */
  private startRead(req: NbdRequest): boolean {
    const n = req.length; // payload bytes: the reply's 16-byte header is not counted

    if (!this.reserve(n)) return false;
    this.waitingRead = null;
    void this.execute(req).then(() => this.completed(n));
    return true;
  }

  private protocolError(reason: string): void {
    this.stopping = true;
    this.closed = true;
    this.dropWaits();
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

  /** Runs one request that carries no data to receive, and sends its reply. Never rejects. */
  private async execute(req: NbdRequest): Promise<void> {
    const store = this.exp.store;
    const fua = (req.flags & NBD_CMD_FLAG_FUA) !== 0;
    try {
      switch (req.type) {
        case NBD_CMD_READ: {
          // Header and data in one buffer: the store reads straight into the bytes we send. The
          // buffer goes back to the pool once nothing references it (copied, or written when
          // the socket keeps a large one by reference), and only after a read that succeeded:
          // a failed multi-segment read may still have parts landing in it.
          const n = SIMPLE_REPLY_BYTES + req.length;
          const out = this.pool.take(n);
          if (req.length > 0) await store.read(req.offset, out.subarray(SIMPLE_REPLY_BYTES));
          encodeSimpleReply(out, NBD_OK, req);
          if (this.closed) return;
          this.hooks.sendOwned(out, this.giveBack);
          return;
        }
        case NBD_CMD_WRITE:
          break; // a zero-length WRITE: nothing to write (data is received by feed())
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

  /** A request finished; `bytes` of its memory are given back (a READ's reply buffer). */
  private completed(bytes: number): void {
    this.inflightRequests--;
    if (bytes > 0) this.release(bytes);
    if (this.inflightRequests < 0) throw new Error(`invariant: nbd connection has ${this.inflightRequests} requests in flight`);
    if (this.stopping) {
      if (this.inflightRequests === 0) this.becameIdle();
      return;
    }
    this.wakeIfRoom();
  }

  /** Something was given back: feed() may consume again if it stopped for room or a request slot. */
  private wakeIfRoom(): void {
    if (this.stopping) return;
    if (this.wants === "room") this.wants = "nothing";
    if (this.wants === "nothing") this.proceed();
  }

  /**
   * Room or memory may be there now: a READ that waited for it starts (it needs no more bytes),
   * then the session feeds what it kept.
   */
  private proceed(): void {
    if (this.waitingRead !== null && !this.startRead(this.waitingRead)) return;
    this.hooks.resume();
  }
}
