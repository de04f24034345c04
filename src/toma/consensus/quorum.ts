/**
 * Majority arithmetic, in one place: what a majority of voters has reached, and how an election
 * stands. Both the commit index and the confirmed read round are "the largest value that a majority
 * of voters has reached" (quorumValue).
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
