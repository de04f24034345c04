/**
 * The durability half of the NBD promise for a mirrored volume (cache-watch.ts does it for a
 * drive): a successful FLUSH means every write completed before it is on stable media.
 *
 * A mirror write is on stable media once *one* leg that acknowledged it has flushed it without
 * losing it. Each leg's answer carries its drive's cache epoch, which changes when the drive's
 * volatile cache was lost (power, unplug) and when a TOMA copied into it from a leg that had lost
 * its own (LOSSY_COPY). So a write acknowledged by legs {(drive, epoch)} survives a flush if one of
 * those drives is still written (not DEAD) and answers that flush with the same epoch. If none
 * does, the write may be gone: the flush fails with EIO, as for a single drive, and so does every
 * flush invoked before that failure was reported (they promised the same thing). A written leg
 * that answers with another epoch may have lost it and could serve a read of the old data: the
 * flush takes it out first (`staleDrives`, mirror-io.ts).
 *
 * Writes are kept as runs of consecutive writes with the same acknowledgements (usually one run).
 */
export interface MirrorFlushMark {
  readonly seq: number;
  readonly no: number;
}

interface Run {
  acks: [string, number][];
  /** Last write number of the run; the run holds (previous run's last, last]. */
  last: number;
}

interface Doubt {
  /** How many flushes had been invoked when a failed flush reported it; Infinity until then. */
  reportedAt: number;
}

export class MirrorWatch {
  private seq = 0;
  private flushedUpTo = 0;
  private runs: Run[] = [];
  private doubts: Doubt[] = [];
  /** The epoch each drive answered with last. */
  private readonly latest = new Map<string, number>();

  /** An answer of `drive` carried `epoch` (every write and flush answer does). */
  seen(drive: string, epoch: number): void {
    this.latest.set(drive, epoch);
  }

  /** Whether a drive of these acknowledgements has answered under another epoch since. */
  outdated(acks: [string, number][]): boolean {
    return acks.some(([d, e]) => (this.latest.get(d) ?? e) !== e);
  }

  /** A write (not FUA) completed, acknowledged by these (drive, cache epoch) pairs. */
  acked(acks: [string, number][]): void {
    this.seq++;
    const tail = this.runs[this.runs.length - 1];
    if (tail && sameAcks(tail.acks, acks)) tail.last = this.seq;
    else this.runs.push({ acks, last: this.seq });
  }

  /** Writes up to `m` are given up on: every flush invoked before the report fails (see reported). */
  lose(m: MirrorFlushMark): void {
    this.flushed(m, new Map());
  }

  mark(no: number): MirrorFlushMark {
    return { seq: this.seq, no };
  }

  /**
   * Written drives that answered the flush marked `m` with another epoch than the one they
   * acknowledged a covered write under: they may have lost it and must not serve reads any more.
   */
  staleDrives(m: MirrorFlushMark, epochs: Map<string, number>): string[] {
    const out = new Set<string>();
    let prev = this.flushedUpTo;
    for (const r of this.runs) {
      if (prev >= m.seq) break;
      for (const [d, e] of r.acks) if (epochs.has(d) && epochs.get(d) !== e) out.add(d);
      prev = r.last;
    }
    return [...out];
  }

  /**
   * The flush marked `m` got these epochs from the drives it flushed (written legs only). Returns
   * whether writes it covers may be gone (not yet reported by a failed flush invoked before it).
   */
  flushed(m: MirrorFlushMark, epochs: Map<string, number>): boolean {
    if (m.seq > this.flushedUpTo) {
      let prev = this.flushedUpTo;
      for (const r of this.runs) {
        if (prev >= m.seq) break;
        if (!r.acks.some(([d, e]) => epochs.get(d) === e)) {
          this.doubts.push({ reportedAt: Infinity });
          break;
        }
        prev = r.last;
      }
      this.runs = this.runs.filter((r) => r.last > m.seq);
      this.flushedUpTo = m.seq;
    }
    return this.doubts.some((d) => m.no <= d.reportedAt);
  }

  /** A failed flush was returned when `invoked` flushes had been invoked. */
  reported(invoked: number): void {
    for (const d of this.doubts) if (d.reportedAt === Infinity) d.reportedAt = invoked;
    this.doubts = this.doubts.filter((d) => d.reportedAt === Infinity || d.reportedAt >= invoked);
  }
}

/** Same legs under the same epochs, in the same order (the common case: every write of a run). */
function sameAcks(a: [string, number][], b: [string, number][]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i]![0] !== b[i]![0] || a[i]![1] !== b[i]![1]) return false;
  return true;
}
