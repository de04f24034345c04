/**
 * When a new cluster forms, and with which configuration: a pure decision from what the configured
 * peers answered. A cluster forms only when every configured peer answered and every one is blank;
 * the first configuration is the peer list (all voters), the cluster uuid the smallest of the
 * peers' random proposals, so every founder computes the same cluster from the same answers.
 * docs/toma-cluster.md, "Bootstrap".
 */
import { isVoter, votersConfig } from "./config.ts";
import { nodeId } from "./membership.ts";
import type { Config } from "./types.ts";

export interface PeerAnswer {
  toma_id: string;
  incarnation: string;
  address: string;
  /** A random uuid this TOMA proposes for a new cluster (fixed for the life of the process). */
  proposal_uuid: string;
  /** blank: no hard-state record and no cluster state on any of its drives. */
  status: { kind: "blank" } | { kind: "member"; cluster_uuid: string; config: Config };
}

export type BootstrapDecision =
  | { kind: "wait"; reason: string }
  /** Every peer is blank: found the cluster (write the first record, then talk). */
  | { kind: "form"; cluster_uuid: string; config: Config }
  /** A peer already founded it with my current node id: found it the same way. */
  | { kind: "adopt"; cluster_uuid: string; config: Config }
  /** A cluster exists without my current node id: join it as a learner (a new node). */
  | { kind: "join"; cluster_uuid: string };

/**
 * `me` is this TOMA (blank: it found no record of its own); `peers` the configured toma ids,
 * this one included; `answers` the latest answer of each peer that answered.
 */
export function bootstrapDecision(me: PeerAnswer, peers: readonly string[], answers: readonly PeerAnswer[]): BootstrapDecision {
  const all = new Map(answers.map((a) => [a.toma_id, a]));
  all.set(me.toma_id, me);
  const members = [...all.values()].filter((a) => a.status.kind === "member");
  const clusters = new Set(members.map((a) => (a.status as { cluster_uuid: string }).cluster_uuid));
  if (clusters.size > 1) return { kind: "wait", reason: `peers belong to different clusters: ${[...clusters].sort().join(", ")}` };
  if (clusters.size === 1) {
    const founder = members[0]!.status as { cluster_uuid: string; config: Config };
    const mine = nodeId(me.toma_id, me.incarnation);
    // This process has written and sent nothing as `mine` yet, so it may still become that node.
    if (me.status.kind === "blank" && isVoter(founder.config, mine)) {
      return { kind: "adopt", cluster_uuid: founder.cluster_uuid, config: founder.config };
    }
    return { kind: "join", cluster_uuid: founder.cluster_uuid };
  }
  const missing = peers.filter((p) => !all.has(p));
  if (missing.length > 0) return { kind: "wait", reason: `waiting for ${missing.join(", ")} to answer` };
  const strangers = [...all.keys()].filter((id) => !peers.includes(id));
  if (strangers.length > 0) return { kind: "wait", reason: `answers from unconfigured TOMAs ${strangers.join(", ")}` };
  const founders = peers.map((p) => all.get(p)!);
  const config = votersConfig(
    founders.map((a) => nodeId(a.toma_id, a.incarnation)),
    (id) => founders.find((a) => nodeId(a.toma_id, a.incarnation) === id)!.address,
  );
  const cluster_uuid = founders.map((a) => a.proposal_uuid).sort()[0]!;
  return { kind: "form", cluster_uuid, config };
}
