/**
 * Notices when a drive may have lost writes it acknowledged: the durability half of the NBD
 * promise ("a successful FLUSH means every write completed before it is on stable media").
 *
 * Targets acknowledge ordinary writes from a volatile cache (the page cache of a buffered file, a
 * drive's write cache) and report, with every write and flush, the drive's *cache epoch*: a number
 * that changes whenever that cache may have been lost without anyone being told (the server lost
 * power, the drive was pulled and put back, possibly on another server). A target process that
 * merely restarts keeps the epoch, because the kernel's cache outlives it.
 *
 * If this client has writes acknowledged under one epoch and not yet flushed, and then sees
 * another epoch, those writes may be gone: the next FLUSH that covers them fails with EIO, once
 * (as Linux reports a lost page-cache write on the next fsync). Nothing is replayed: another client
 * may have written the same blocks since, and only the application can decide what to do.
 * Found by the simulator (a write acknowledged by one leg of a stripe, the server loses power before
 * the other legs finish, and the next flush used to succeed).
 */
export interface FlushMark {
  readonly seq: number;
  readonly epoch: number | null;
}

export class CacheWatch {
  /** Epoch of the newest acknowledged, not yet flushed write. */
  private epoch: number | null = null;
  /** Acknowledged volatile writes so far (a counter, not a list: nothing per write is kept). */
  private seq = 0;
  /** Writes numbered up to here may have been lost (the epoch changed after them). */
  private doubtfulUpTo = 0;
  /** Writes numbered up to here were covered by a flush (successful or reported). */
  private flushedUpTo = 0;

  /** A write (not FUA) was acknowledged under `epoch`. */
  acked(epoch: number): void {
    if (this.epoch !== null && epoch !== this.epoch && this.seq > this.flushedUpTo) this.doubtfulUpTo = this.seq;
    this.seq++;
    this.epoch = epoch;
  }

  /** Taken when a flush is sent: it covers the writes acknowledged so far. */
  mark(): FlushMark {
    return { seq: this.seq, epoch: this.epoch };
  }

  /**
   * The flush sent at `m` succeeded under `epoch`. Returns why the writes it covers may not be
   * durable after all, or null. Either way they count as reported from now on.
   */
  flushed(m: FlushMark, epoch: number): string | null {
    if (m.seq <= this.flushedUpTo) return null;
    let lost = this.doubtfulUpTo > this.flushedUpTo;
    if (m.epoch !== null && epoch !== m.epoch) lost = true;
    this.flushedUpTo = m.seq;
    return lost ? "the drive's cache was lost (power loss or unplug) after it acknowledged writes that were not yet flushed; they may be gone" : null;
  }
}
