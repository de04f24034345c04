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
/** What a flush covers: the writes completed before it was invoked (`no`: its invocation order). */
export interface FlushMark {
  readonly seq: number;
  readonly no: number;
}

interface Run {
  epoch: number;
  /** The last write number of this run of writes acknowledged under `epoch`. */
  last: number;
}

interface Doubt {
  /** Writes numbered in [from, upTo] may be gone. */
  from: number;
  upTo: number;
  /** How many flushes had been invoked when a failed flush reported it; Infinity until then. */
  reportedAt: number;
}

export class CacheWatch {
  /** Completed volatile writes so far (numbered; nothing per write is kept). */
  private seq = 0;
  /** Writes numbered up to here were covered by a flush that reached this drive. */
  private flushedUpTo = 0;
  /** Unflushed writes as runs of the same epoch: one entry until an epoch changes. */
  private runs: Run[] = [];
  /** Losses found; each fails every flush covering it that was invoked before it was reported. */
  private doubts: Doubt[] = [];

  /** The epoch the drive answered with last (every write and flush answer carries one). */
  private latest: number | null = null;

  /** An answer of the drive carried `epoch`. */
  seen(epoch: number): void {
    this.latest = epoch;
  }

  /**
   * Whether the drive has answered under another epoch since it acknowledged a part of a write
   * under `epoch`: that part may be gone, and the write, not yet acknowledged to the caller, is
   * written again rather than counted (a flush would otherwise report a loss that a write still
   * in our hands can simply repair).
   */
  outdated(epoch: number): boolean {
    return this.latest !== null && this.latest !== epoch;
  }

  /** A write (not FUA) completed, with data acknowledged on this drive under `epoch`. */
  acked(epoch: number): void {
    this.seq++;
    const tail = this.runs[this.runs.length - 1];
    if (tail && tail.epoch === epoch) tail.last = this.seq;
    else this.runs.push({ epoch, last: this.seq });
  }

  /** Taken when flush number `no` of the volume is invoked: it covers the writes completed so far. */
  mark(no: number): FlushMark {
    return { seq: this.seq, no };
  }

  /**
   * The flush marked `m` reached the drive and succeeded under `epoch`. Returns whether writes it
   * covers may be gone: acknowledged under another epoch, and not yet reported to the caller by a
   * failed flush that completed before this one was invoked (two flushes in flight both fail).
   */
  flushed(m: FlushMark, epoch: number): boolean {
    if (m.seq > this.flushedUpTo) {
      // Run i holds writes (runs[i-1].last, runs[i].last]; every run has writes above flushedUpTo.
      let prev = this.flushedUpTo;
      for (const r of this.runs) {
        if (prev >= m.seq) break;
        if (r.epoch !== epoch) {
          this.doubts.push({ from: this.flushedUpTo + 1, upTo: m.seq, reportedAt: Infinity });
          break;
        }
        prev = r.last;
      }
      this.runs = this.runs.filter((r) => r.last > m.seq);
      this.flushedUpTo = m.seq;
    }
    return this.doubts.some((d) => d.from <= m.seq && m.no <= d.reportedAt);
  }

  /** A failed flush returned to the caller when `invoked` flushes had been invoked: losses reported. */
  reported(invoked: number): void {
    for (const d of this.doubts) if (d.reportedAt === Infinity) d.reportedAt = invoked;
    // A doubt reported before every flush still to come was invoked can fail none of them.
    this.doubts = this.doubts.filter((d) => d.reportedAt === Infinity || d.reportedAt >= invoked);
  }
}

export const LOST_WRITES =
  "the drive's cache was lost (power loss or unplug) after it acknowledged writes that were not yet flushed; they may be gone";
