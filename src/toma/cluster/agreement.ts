/**
 * When the members of a TOMA cluster agree on a leader, from their views (each TOMA's `cluster
 * status`, `consensus`): what the demo prints and what the end-to-end tests wait for.
 */
import type { ClusterJson } from "../api-types.ts";

export type Consensus = NonNullable<ClusterJson["consensus"]>;

/** One ready leader named by every TOMA asked, in one term. */
export interface Agreement {
  /** The leader's place in the addresses given (-1 when it is not among them). */
  index: number;
  address: string;
  term: number;
  views: Consensus[];
}

/**
 * The leader the given views agree on: every one running, exactly one of them the leader with an
 * entry of its term applied, and every one naming it in that term. Null while they do not agree.
 */
export function agreement(addresses: readonly string[], views: readonly (Consensus | null)[]): Agreement | null {
  const leaders = views.filter((v) => v?.role === "leader");
  if (!views.every((v) => v?.phase === "running") || leaders.length !== 1 || !leaders[0]!.leader_ready) return null;
  const l = leaders[0]!;
  const vs = views as Consensus[];
  if (!vs.every((v) => v.term === l.term && v.leader?.address === l.address)) return null;
  return { index: addresses.indexOf(l.address!), address: l.address!, term: l.term!, views: vs };
}
