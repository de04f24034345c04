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
/** What a flush covers: the writes completed before it was invoked. */
export interface FlushMark {
  readonly seq: number;
}

interface Run {
  epoch: number;
  /** The last write number of this run of writes acknowledged under `epoch`. */
  last: number;
}

export class CacheWatch {
  /** Completed volatile writes so far (numbered; nothing per write is kept). */
  private seq = 0;
  /** Writes numbered up to here were covered by a flush (successful or reported). */
  private flushedUpTo = 0;
  /** Unflushed writes as runs of the same epoch: one entry until an epoch changes. */
  private runs: Run[] = [];

  /** A write (not FUA) completed, with data acknowledged on this drive under `epoch`. */
  acked(epoch: number): void {
    this.seq++;
    const tail = this.runs[this.runs.length - 1];
    if (tail && tail.epoch === epoch) tail.last = this.seq;
    else this.runs.push({ epoch, last: this.seq });
  }

  /** Taken when a flush is invoked: it covers the writes completed so far. */
  mark(): FlushMark {
    return { seq: this.seq };
  }

  /**
   * The flush invoked at `m` succeeded under `epoch`. Returns why the writes it covers may not be
   * durable after all, or null. Either way they count as reported from now on.
   */
  flushed(m: FlushMark, epoch: number): string | null {
    if (m.seq <= this.flushedUpTo) return null;
    // Run i holds writes (runs[i-1].last, runs[i].last]; every run has writes above flushedUpTo.
    let lost = false;
    let prev = this.flushedUpTo;
    for (const r of this.runs) {
      if (prev >= m.seq) break;
      if (r.epoch !== epoch) lost = true;
      prev = r.last;
    }
    this.runs = this.runs.filter((r) => r.last > m.seq);
    this.flushedUpTo = m.seq;
    return lost ? "the drive's cache was lost (power loss or unplug) after it acknowledged writes that were not yet flushed; they may be gone" : null;
  }
}
