/**
 * Coalesces the frames queued on one connection during a tick into as few conn.send() calls as
 * possible: each send is a syscall on the real runtime, and a pipelined peer issues dozens of
 * small frames per tick. Small parts are copied at once into a staging buffer kept by the batcher
 * (so the caller may reuse them as soon as push() returns, and frame headers can be encoded
 * straight into it with reserve()); large parts (data payloads) are sent as they are, because
 * copying megabytes costs more than the syscall saved.
 *
 * The flush runs on a microtask, not a timer: it adds no latency and stays deterministic under
 * the simulator.
 */
import type { Conn } from "../net/conn.ts";

/**
 * A Conn whose send() is done with the bytes when it returns (written out or copied), so the
 * caller may reuse its buffer at once. The real runtime's connections are; Conn's contract does
 * not promise it (the simulator's links keep references), so the batcher checks for the marker.
 */
export interface CopyingConn extends Conn {
  readonly send_copies: true;
  /**
   * send() that keeps a large buffer by reference instead of copying what the kernel does not
   * take at once, and calls give(bytes) once it is all written (never if the connection ends
   * first). Optional.
   */
  sendOwned?(bytes: Uint8Array, give: (b: Uint8Array) => void): boolean;
}

/** Parts at least this big are sent without copying (and kept by reference until sent). */
export const COPY_LIMIT_BYTES = 16 * 1024;
/** Staged bytes beyond this are cut into a part of their own rather than growing the buffer. */
const MAX_STAGING_BYTES = 1024 * 1024;

export class SendBatcher {
  /** Parts ready to send, in order: cut staging runs and large parts (copying mode only). */
  private parts: Uint8Array[] = [];
  /** Allocated at the first send: a connection that never answers anything holds nothing. */
  private staging = new Uint8Array(0);
  private staged = 0;
  private scheduled = false;
  private readonly flushBound = () => this.flush();
  /** The Conn copies: the staging buffer is sent as a view and reused, no allocation per flush. */
  private readonly reuse: boolean;

  constructor(private readonly conn: Conn & Partial<Pick<CopyingConn, "sendOwned">>) {
    this.reuse = (conn as Partial<CopyingConn>).send_copies === true;
  }

  /**
   * Queues bytes. Parts below COPY_LIMIT_BYTES are copied now; larger ones are kept by reference,
   * and the caller must not modify them afterwards (Conn.send's contract).
   */
  push(bytes: Uint8Array): void {
    if (bytes.length < COPY_LIMIT_BYTES) {
      const at = this.reserve(bytes.length);
      this.staging.set(bytes, at);
    } else if (this.reuse) {
      this.sendStaged(); // what was queued before goes first
      this.conn.send(bytes);
    } else {
      this.cut();
      this.parts.push(bytes);
      this.schedule();
    }
  }

  /**
   * push() for a buffer the caller gets back: give(bytes) is called once nothing here or in the
   * Conn references it any more, at once when it was copied (small parts, or a Conn that copies
   * and has no sendOwned), when written otherwise (a large part kept by reference, never if the
   * connection ends first). Without a copying Conn a large part is never given back: the
   * simulator's links keep what they are sent.
   */
  pushOwned(bytes: Uint8Array, give: (b: Uint8Array) => void): void {
    if (bytes.length >= COPY_LIMIT_BYTES && this.reuse && this.conn.sendOwned !== undefined) {
      this.sendStaged(); // what was queued before goes first
      this.conn.sendOwned(bytes, give);
      return;
    }
    this.push(bytes);
    if (bytes.length < COPY_LIMIT_BYTES || this.reuse) give(bytes);
  }

  /**
   * Makes room for n (< COPY_LIMIT_BYTES) bytes at the end of the queue and returns their offset
   * in `buffer`, which the caller fills before yielding (e.g. encodeHeader(h, b.buffer, at)).
   */
  reserve(n: number): number {
    if (this.staged + n > this.staging.length) this.grow(n);
    const at = this.staged;
    this.staged += n;
    this.schedule();
    return at;
  }

  /**
   * True when every push() is done with its bytes when it returns (the Conn copies), so the
   * caller may reuse even large parts at once; small parts are always copied.
   */
  get copies(): boolean {
    return this.reuse;
  }

  /** The staging buffer reserve() offsets point into; valid until the next push/reserve/flush. */
  get buffer(): Uint8Array {
    return this.staging;
  }

  /** Sends everything queued now. Safe to call at any time (e.g. before close). */
  flush(): void {
    this.scheduled = false;
    if (this.reuse) return this.sendStaged();
    this.cut();
    const parts = this.parts;
    if (parts.length === 0) return;
    this.parts = [];
    for (let i = 0; i < parts.length; i++) this.conn.send(parts[i]!);
  }

  private schedule(): void {
    if (!this.scheduled) {
      this.scheduled = true;
      queueMicrotask(this.flushBound);
    }
  }

  /** Copying mode: sends the staged bytes now; the staging buffer is free again afterwards. */
  private sendStaged(): void {
    if (this.staged === 0) return;
    const n = this.staged;
    this.staged = 0;
    this.conn.send(this.staging.subarray(0, n));
  }

  /** Moves the staged bytes out of the staging buffer, in order with the parts. */
  private cut(): void {
    if (this.staged === 0) return;
    if (this.reuse) return this.sendStaged();
    this.parts.push(this.staging.slice(0, this.staged)); // a copy: Conn may keep what it is given
    this.staged = 0;
  }

  private grow(n: number): void {
    if (this.staged > 0 && this.staged + n > MAX_STAGING_BYTES) {
      this.cut();
      if (n <= this.staging.length) return;
    }
    let cap = Math.max(this.staging.length, 4096); // small until a burst needs more
    while (cap < this.staged + n) cap *= 2;
    const next = new Uint8Array(cap);
    next.set(this.staging.subarray(0, this.staged));
    this.staging = next;
  }
}
