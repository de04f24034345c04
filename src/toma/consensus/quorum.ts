/**
 * Majority arithmetic, in one place: what a majority of voters has reached, how an election
 * stands, and when a write sent to several drives is decided. Both the commit index and the
 * confirmed read round are "the largest value that a majority of voters has reached"
 * (quorumValue); an election and a single TOMA's commit (awaitQuorum) are decided by voteResult.
 */
import { plantedBugs } from "../../engine/planted-bugs.ts";
import { assert } from "../../engine/assert.ts";
import { majority } from "../cluster-state.ts";
import type { NodeId } from "./types.ts";

/**
 * The largest value v such that a majority of `voters` have valueOf(id) ≥ v (0 without voters).
 * The commit rule: with valueOf = match index, everything up to the result is on a majority.
 */
export function quorumValue(voters: readonly NodeId[], valueOf: (id: NodeId) => number): number {
  if (voters.length === 0) return 0;
  const values = voters.map(valueOf).sort((a, b) => b - a);
  // The planted bug counts half of the voters as enough: a leader of three commits alone.
  const need = plantedBugs.raft_commit_without_majority ? Math.max(1, Math.floor(voters.length / 2)) : majority(voters.length);
  assert(need >= 1 && need <= values.length, "quorum size out of range");
  return values[need - 1]!;
}

export type VoteResult = "won" | "lost" | "pending";

/** An election's state from the answers so far (true = granted); non-voters' answers do not count. */
export function voteResult(voters: readonly NodeId[], votes: ReadonlyMap<NodeId, boolean>): VoteResult {
  let granted = 0;
  let missing = 0;
  for (const id of voters) {
    const vote = votes.get(id);
    if (vote === undefined) missing++;
    else if (vote) granted++;
  }
  const need = majority(voters.length);
  if (granted >= need) return "won";
  if (granted + missing >= need) return "pending";
  return "lost";
}

export interface QuorumOutcome {
  /** Every non-empty list won (a majority of it acknowledged). */
  ok: boolean;
  /** Who had acknowledged when the outcome was decided. */
  acks: Set<string>;
  /** Who had failed when it was decided: refused, timed out, or not sent to at all. */
  failed: Set<string>;
  /** Writes still unanswered when it was decided (they go on: stragglers). */
  pending: number;
}

/**
 * Decides a write sent to several drives as soon as the answers so far decide it (voteResult of
 * each list): committed once a majority of every list acknowledged, refused once some list can
 * no longer get one; the writes unanswered then are not waited for. `writes`: who was sent the
 * write → resolves true on an acknowledgement, false or a rejection on a failure; a member of a
 * list with no write counts as failed. An empty list (a cluster without drives yet) needs nothing.
 */
export function awaitQuorum(writes: ReadonlyMap<string, Promise<boolean>>, lists: readonly (readonly string[])[]): Promise<QuorumOutcome> {
  const answers = new Map<string, boolean>();
  for (const list of lists) for (const u of list) if (!writes.has(u)) answers.set(u, false);
  const voting = lists.filter((list) => list.length > 0);
  let pending = writes.size;
  return new Promise((resolve) => {
    let decided = false;
    const decide = () => {
      if (decided) return;
      const results = voting.map((list) => voteResult(list, answers));
      const lost = results.includes("lost");
      if (!lost && !results.every((r) => r === "won")) return;
      decided = true;
      const who = (ok: boolean) => new Set([...answers].flatMap(([u, a]) => (a === ok ? [u] : [])));
      resolve({ ok: !lost, acks: who(true), failed: who(false), pending });
    };
    for (const [u, w] of writes) {
      const settle = (ok: boolean) => {
        pending--;
        answers.set(u, ok);
        decide();
      };
      w.then(settle, () => settle(false));
    }
    // Already decided by who was not sent the write (or nothing to wait for).
    decide();
  });
}
