/**
 * The leader's membership policy, as a pure function: given the configuration, the identity each
 * server's TOMA announces, the operator's removals and the leader's progress, the next single
 * configuration change, or null. The core enforces one change at a time; this decides which.
 *
 * A server is known by its toma id; its node id is `toma_id#incarnation`, and a TOMA that lost its
 * hard state announces a new incarnation (docs/toma-cluster.md, "Amnesia and incarnations"). The
 * order for a replacement keeps the time with one voter fewer short:
 *   add_learner(new) → [it catches up] → remove(old) → promote(new).
 */
import { describeConfig, member, voterIds } from "./config.ts";
import type { ConfChange, Config, NodeId } from "./types.ts";

export interface Announced {
  toma_id: string;
  incarnation: string;
  address: string;
  /** A TOMA without drives cannot persist a vote: never a member of Raft until it has one. */
  has_drives: boolean;
}

export interface MembershipInput {
  /** The leader's configuration (the last in its log). */
  config: Config;
  /** The current identity of every server that should be in the cluster and is heard from. */
  announced: readonly Announced[];
  /** Toma ids the operator asked to remove from the cluster. */
  remove: readonly string[];
  /** The leader's match index per member. */
  match: (id: NodeId) => number;
  commit: number;
}

export function nodeId(toma_id: string, incarnation: string): NodeId {
  return `${toma_id}#${incarnation}`;
}

export function tomaIdOf(id: NodeId): string {
  const i = id.indexOf("#");
  return i < 0 ? id : id.slice(0, i);
}

export function nextMembershipChange(input: MembershipInput): ConfChange | null {
  const { config } = input;
  const removing = new Set(input.remove);
  // 1. The operator's removals, learners before voters; never the last voter.
  const doomed = config.members.filter((m) => removing.has(tomaIdOf(m.id)));
  doomed.sort((a, b) => Number(a.voter) - Number(b.voter));
  for (const m of doomed) if (!m.voter || voterIds(config).length > 1) return { op: "remove", node: m.id };

  const caughtUp = (id: NodeId) => input.match(id) >= input.commit;
  for (const a of input.announced) {
    if (removing.has(a.toma_id) || !a.has_drives) continue;
    const current = nodeId(a.toma_id, a.incarnation);
    const old = config.members.filter((m) => tomaIdOf(m.id) === a.toma_id && m.id !== current);
    const me = member(config, current);
    // 2. A new identity (new server, or an amnesic TOMA's new incarnation) joins as a learner.
    if (!me) return { op: "add_learner", node: current, address: a.address };
    if (me.voter || !caughtUp(current)) continue;
    // 3. Caught up: the old identity goes first (it can never answer again), then the promotion.
    const stale = old.find((m) => !m.voter) ?? old[0];
    if (stale && (!stale.voter || voterIds(config).length > 1)) return { op: "remove", node: stale.id };
    if (!stale) return { op: "promote", node: current };
  }
  return null;
}

/** What an operator should be told about a configuration (the CLI prints these). */
export function membershipWarnings(config: Config): string[] {
  const voters = voterIds(config).length;
  const out: string[] = [];
  if (voters < 3) {
    out.push(
      `${voters} voter(s) (${describeConfig(config)}): a cluster meant to survive the loss of a server needs at least 3 TOMAs; ` +
        (voters === 2 ? "with 2, both must be up" : "with 1, that server is a single point of failure"),
    );
  } else if (voters % 2 === 0) {
    out.push(`${voters} voters survive as many server losses as ${voters - 1}; an odd number is enough`);
  }
  return out;
}
