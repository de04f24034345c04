/**
 * The leader's pending linearizable reads (etcd's read_only.go, without leases). Each read gets
 * the commit index at the time it was asked and a round number; heartbeats carry the latest
 * round, followers echo it, and a read is released once a majority of voters has echoed a round
 * at or after its own: by then the leader knows it was still the leader after the read was asked,
 * so no other leader can have committed anything that the read's index misses.
 */
import type { ReadState } from "./types.ts";

export class ReadQueue {
  /** The latest round; heartbeats carry it. Never goes back, across leaderships too. */
  round = 0;
  private pending: { ctx: number; index: number; round: number }[] = [];

  /** A read asked now, at the leader's commit index; returns its round. */
  ask(ctx: number, index: number): number {
    this.round++;
    this.pending.push({ ctx, index, round: this.round });
    return this.round;
  }

  /** Reads whose round a majority confirmed, in the order they were asked. */
  release(confirmed_round: number): ReadState[] {
    const out: ReadState[] = [];
    while (this.pending.length > 0 && this.pending[0]!.round <= confirmed_round) {
      const r = this.pending.shift()!;
      out.push({ ctx: r.ctx, index: r.index });
    }
    return out;
  }

  hasPending(): boolean {
    return this.pending.length > 0;
  }

  /** No longer leader: the reads are dropped (their callers time out and ask the new leader). */
  drop(): number {
    const n = this.pending.length;
    this.pending = [];
    return n;
  }
}
