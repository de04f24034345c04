/**
 * The leader's view of one follower (etcd's Progress): how much of its log matches ours, what to
 * send next, and how:
 *   probe      one append per heartbeat until one is accepted (after a rejection or a restart);
 *   replicate  appends pipelined, at most `max_inflight` unanswered;
 *   snapshot   a snapshot is being sent, one chunk at a time, each after the answer to the one
 *              before it; nothing else until its last chunk is answered, or until an election
 *              timeout of ticks passes without an answer (a chunk or its answer was lost): then
 *              probe, and the next snapshot starts from its first chunk.
 */
import { assert } from "../../engine/assert.ts";
import type { Snapshot } from "./types.ts";

export type ProgressState = "probe" | "replicate" | "snapshot";

export class Progress {
  /** Highest index known to match the leader's log. */
  match = 0;
  /** Next index to send. */
  next: number;
  state: ProgressState = "probe";
  /** Probe: an append was sent and not answered; wait for a heartbeat answer before the next. */
  probe_sent = false;
  /** Snapshot: the index of the snapshot sent, and ticks spent waiting for an answer to a chunk. */
  pending_snapshot = 0;
  snapshot_ticks = 0;
  /**
   * Snapshot: the one being sent (kept, so that a compaction meanwhile cannot mix two snapshots'
   * bytes), and the chunk in flight [chunk_offset, chunk_end).
   */
  sending: Snapshot | null = null;
  chunk_offset = 0;
  chunk_end = 0;
  /** Replicate: the last index of each append in flight, oldest first. */
  inflight: number[] = [];
  /** Heard from since the last CheckQuorum. */
  recent_active = false;
  /** Highest read round this follower answered (raft.ts readIndex). */
  read_round = 0;

  constructor(next: number) {
    assert(next >= 1, "next index below 1");
    this.next = next;
  }

  becomeProbe(): void {
    const from_snapshot = this.state === "snapshot";
    this.state = "probe";
    this.next = from_snapshot ? Math.max(this.match + 1, this.pending_snapshot + 1) : this.match + 1;
    this.probe_sent = false;
    this.pending_snapshot = 0;
    this.sending = null;
    this.inflight = [];
  }

  becomeReplicate(): void {
    this.state = "replicate";
    this.next = this.match + 1;
    this.pending_snapshot = 0;
    this.sending = null;
    this.inflight = [];
  }

  becomeSnapshot(s: Snapshot): void {
    this.state = "snapshot";
    this.pending_snapshot = s.index;
    this.sending = s;
    this.snapshot_ticks = 0;
    this.chunk_offset = 0;
    this.chunk_end = 0;
    this.inflight = [];
  }

  /** The chunk [offset, end) of the snapshot being sent went out. */
  chunkSent(offset: number, end: number): void {
    assert(this.state === "snapshot" && this.sending !== null && offset <= end && end <= this.sending.data.length, "bad snapshot chunk");
    this.chunk_offset = offset;
    this.chunk_end = end;
    this.snapshot_ticks = 0;
  }

  /** An append up to `index` was accepted. Returns whether anything advanced. */
  maybeUpdate(index: number): boolean {
    const updated = index > this.match;
    if (updated) {
      this.match = index;
      this.probe_sent = false;
    }
    this.next = Math.max(this.next, index + 1);
    while (this.inflight.length > 0 && this.inflight[0]! <= index) this.inflight.shift();
    return updated;
  }

  /**
   * An append after `rejected` was refused; `match_hint` is the highest index that may match.
   * Returns false for a stale rejection (an answer to an append we have already moved past).
   */
  maybeDecrTo(rejected: number, match_hint: number): boolean {
    if (this.state === "replicate") {
      if (rejected <= this.match) return false;
      this.next = this.match + 1;
      return true;
    }
    if (this.next - 1 !== rejected) return false;
    this.next = Math.max(Math.min(rejected, match_hint + 1), this.match + 1);
    this.probe_sent = false;
    return true;
  }

  isPaused(max_inflight: number): boolean {
    switch (this.state) {
      case "probe":
        return this.probe_sent;
      case "replicate":
        return this.inflight.length >= max_inflight;
      case "snapshot":
        return true;
    }
  }

  /** An append ending at `last` (or carrying nothing, last = next - 1) went out. */
  sent(last: number): void {
    if (this.state === "replicate") {
      if (last >= this.next) {
        this.next = last + 1;
        this.inflight.push(last);
      }
    } else if (this.state === "probe") {
      this.probe_sent = true;
    }
  }
}
