/**
 * Buffers of the few sizes a data path keeps using (a 4 KiB read reply, a 128 KiB one), handed
 * back once their bytes have been sent or copied. Allocating them was the top cost in the CPU
 * profiles: a fresh 128 KiB Uint8Array costs several microseconds (zeroing, and the GC pressure
 * of external memory), more than the copy it feeds.
 *
 * A buffer from take() has exactly the asked length and unspecified contents. Only give back a
 * buffer nothing else still references; when in doubt, drop it (the GC takes it, as before).
 *
 * A pool does not keep a burst's memory for ever: its owner calls trim() periodically, and a pool
 * nobody took from since the previous trim() lets go of everything it holds.
 */
export class BufferPool {
  private readonly free = new Map<number, Uint8Array[]>();
  private bytes = 0;
  private takenSinceTrim = false;

  constructor(
    /** Bytes kept at most, over all sizes. */
    private readonly max_bytes = 32 * 1024 * 1024,
    /** Buffers smaller than this are not worth pooling. */
    private readonly min_length = 1024,
    /** Distinct sizes kept at most. */
    private readonly max_sizes = 16,
  ) {}

  take(length: number): Uint8Array {
    this.takenSinceTrim = true;
    const list = this.free.get(length);
    const b = list?.pop();
    if (b === undefined) return new Uint8Array(length);
    this.bytes -= length;
    return b;
  }

  /** Bytes held for reuse now. */
  get held_bytes(): number {
    return this.bytes;
  }

  /** Lets go of every buffer if none was taken since the previous trim (the burst is over). */
  trim(): void {
    if (!this.takenSinceTrim) {
      this.free.clear();
      this.bytes = 0;
    }
    this.takenSinceTrim = false;
  }

  give(b: Uint8Array): void {
    const n = b.length;
    if (n < this.min_length || this.bytes + n > this.max_bytes) return;
    let list = this.free.get(n);
    if (list === undefined) {
      if (this.free.size >= this.max_sizes) return;
      list = [];
      this.free.set(n, list);
    }
    list.push(b);
    this.bytes += n;
  }
}
