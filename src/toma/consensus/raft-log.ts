/**
 * One node's log: a snapshot (everything up to its index, compacted), the entries after it, and
 * three marks: `committed` (known on a majority), `applied` (handed to the application) and
 * `stable` (durable on this node's drives). The whole log lives in memory: the cluster state is
 * small and compacted often, and the hard-state record holds the same snapshot and tail.
 *
 * Invariants (asserted): entries are contiguous after the snapshot; terms never decrease along the
 * log; snapshot.index ≤ applied ≤ committed ≤ last index; stable ≤ last index.
 */
import { assert } from "../../engine/assert.ts";
import type { Entry, Snapshot } from "./types.ts";

/** A peer asked for something Raft forbids (e.g. overwrite a committed entry): drop its message. */
export class ProtocolViolation extends Error {}

export class RaftLog {
  snapshot: Snapshot;
  entries: Entry[];
  committed: number;
  applied: number;
  stable: number;

  constructor(snapshot: Snapshot, entries: readonly Entry[], committed: number) {
    this.snapshot = snapshot;
    this.entries = [...entries];
    this.committed = committed;
    this.applied = snapshot.index;
    this.stable = this.lastIndex();
    this.check();
  }

  /** Checks the whole log: at construction (the log came from a drive or a peer). */
  check(): void {
    let prev = { index: this.snapshot.index, term: this.snapshot.term };
    for (const e of this.entries) {
      assert(e.index === prev.index + 1, () => `log not contiguous: ${e.index} after ${prev.index}`);
      assert(e.term >= prev.term, () => `log term goes back at ${e.index}: ${e.term} after ${prev.term}`);
      prev = e;
    }
    this.checkMarks();
  }

  /** The marks' order, after every change (the entries' order is kept by append and maybeAppend). */
  checkMarks(): void {
    assert(
      this.snapshot.index <= this.applied && this.applied <= this.committed && this.committed <= this.lastIndex(),
      () => `log marks out of order: snapshot ${this.snapshot.index}, applied ${this.applied}, committed ${this.committed}, last ${this.lastIndex()}`,
    );
    assert(this.stable <= this.lastIndex(), "stable beyond the last index");
  }

  firstIndex(): number {
    return this.snapshot.index + 1;
  }

  lastIndex(): number {
    return this.snapshot.index + this.entries.length;
  }

  lastTerm(): number {
    return this.term(this.lastIndex())!;
  }

  /** The term of the entry at `index`; undefined if compacted away (below the snapshot) or beyond. */
  term(index: number): number | undefined {
    if (index === this.snapshot.index) return this.snapshot.term;
    return this.entry(index)?.term;
  }

  entry(index: number): Entry | undefined {
    if (index <= this.snapshot.index || index > this.lastIndex()) return undefined;
    return this.entries[index - this.snapshot.index - 1];
  }

  matchTerm(index: number, term: number): boolean {
    return this.term(index) === term;
  }

  /** Raft's vote rule: a candidate's log is at least as up to date as ours (last term, then index). */
  isUpToDate(last_index: number, last_term: number): boolean {
    const my_term = this.lastTerm();
    return last_term > my_term || (last_term === my_term && last_index >= this.lastIndex());
  }

  /** Entries [lo, hi), at most `max` of them. */
  slice(lo: number, hi: number, max = Number.MAX_SAFE_INTEGER): Entry[] {
    assert(lo > this.snapshot.index, () => `slice from ${lo} reaches into the snapshot at ${this.snapshot.index}`);
    const from = lo - this.snapshot.index - 1;
    const to = Math.min(hi - this.snapshot.index - 1, from + max);
    return this.entries.slice(from, Math.max(from, to));
  }

  /** Appends entries of the leader's own making (index = last + 1, term ≥ last term). */
  append(entries: readonly Entry[]): void {
    for (const e of entries) {
      assert(e.index === this.lastIndex() + 1 && e.term >= this.lastTerm(), "leader append out of order");
      this.entries.push(e);
    }
  }

  /**
   * A follower's append: if our log holds (prev_index, prev_term), make the entries after it equal
   * to `entries` (truncating a conflicting suffix, never at or below the commit) and commit up to
   * min(commit, the last new index). Returns the last new index, or null when prev does not match.
   */
  maybeAppend(prev_index: number, prev_term: number, commit: number, entries: readonly Entry[]): number | null {
    if (!this.matchTerm(prev_index, prev_term)) return null;
    // Check everything before changing anything: a refused append leaves the log as it was.
    let expect = prev_index + 1;
    let term = prev_term;
    for (const e of entries) {
      if (e.index !== expect++) throw new ProtocolViolation(`append entries not contiguous after ${prev_index}`);
      if (e.term < term) throw new ProtocolViolation(`append entries' terms go back at ${e.index}`);
      term = e.term;
    }
    const last_new = prev_index + entries.length;
    const conflict = entries.find((e) => !this.matchTerm(e.index, e.term));
    if (conflict) {
      if (conflict.index <= this.committed) {
        throw new ProtocolViolation(`append would overwrite committed entry ${conflict.index} (committed ${this.committed})`);
      }
      this.entries.length = Math.min(this.entries.length, conflict.index - this.snapshot.index - 1);
      this.stable = Math.min(this.stable, conflict.index - 1);
      for (const e of entries) if (e.index >= conflict.index) this.entries.push(e);
    }
    this.commitTo(Math.min(commit, last_new));
    return last_new;
  }

  /**
   * The largest index ≤ `index` whose term is ≤ `term` (the snapshot index at the lowest): where
   * a log with `term` at `index` can possibly match ours. Used on both sides of a rejected append.
   */
  findConflictByTerm(index: number, term: number): number {
    let i = Math.min(index, this.lastIndex());
    while (i > this.snapshot.index && this.term(i)! > term) i--;
    return Math.max(i, this.snapshot.index);
  }

  commitTo(index: number): void {
    if (index <= this.committed) return;
    if (index > this.lastIndex()) {
      throw new ProtocolViolation(`commit ${index} beyond our last index ${this.lastIndex()}`);
    }
    this.committed = index;
  }

  /** Replaces the whole log by a snapshot received from the leader. */
  restore(s: Snapshot): void {
    assert(s.index > this.committed, "restoring a snapshot that is not beyond the commit");
    this.snapshot = s;
    this.entries = [];
    this.committed = s.index;
    this.applied = s.index;
    this.stable = s.index;
  }

  /** Drops entries up to `index`, which the application has applied and captured in `s`. */
  compact(s: Snapshot): void {
    assert(s.index > this.snapshot.index && s.index <= this.applied, () => `cannot compact to ${s.index}`);
    assert(s.term === this.term(s.index), "snapshot term differs from the log's");
    this.entries = this.entries.slice(s.index - this.snapshot.index);
    this.snapshot = s;
  }

  /** Committed entries not yet handed to the application (all of them are in this log). */
  unapplied(): Entry[] {
    if (this.committed <= this.applied) return [];
    return this.slice(this.applied + 1, this.committed + 1);
  }
}
