/**
 * Buffers of the few sizes a data path keeps using (a 4 KiB read reply, a 128 KiB one), handed
 * back once their bytes have been sent or copied. Allocating them was the top cost in the CPU
 * profiles: a fresh 128 KiB Uint8Array costs several microseconds (zeroing, and the GC pressure
 * of external memory), more than the copy it feeds.
 *
 * A buffer from take() has exactly the asked length and unspecified contents. Only give back a
 * buffer nothing else still references; when in doubt, drop it (the GC takes it, as before).
 */
export class BufferPool {
  private readonly free = new Map<number, Uint8Array[]>();
  private bytes = 0;

  constructor(
    /** Bytes kept at most, over all sizes. */
    private readonly max_bytes = 32 * 1024 * 1024,
    /** Buffers smaller than this are not worth pooling. */
    private readonly min_length = 1024,
    /** Distinct sizes kept at most. */
    private readonly max_sizes = 16,
  ) {}

  take(length: number): Uint8Array {
    const list = this.free.get(length);
    const b = list?.pop();
    if (b === undefined) return new Uint8Array(length);
    this.bytes -= length;
    return b;
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
