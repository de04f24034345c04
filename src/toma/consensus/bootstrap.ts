/**
 * When a new cluster forms, and with which configuration: a pure decision from what the configured
 * peers answered. A cluster forms only when every configured peer answered and every one is blank;
 * the first configuration is the peer list (all voters), the cluster uuid the smallest of the
 * peers' random proposals, so every founder computes the same cluster from the same answers.
 * When the founders' drives hold a single-TOMA cluster state, the cluster takes it over
 * (single-toma-state.ts): its uuid, and that state as the first snapshot's data.
 * docs/toma-cluster.md, "Bootstrap" and "Taking over a single-TOMA cluster".
 */
import { isVoter, votersConfig } from "./config.ts";
import { nodeId } from "./membership.ts";
import { decideTakeover, type SingleTomaReport, type TakeoverDecision } from "./single-toma-state.ts";
import type { Config } from "./types.ts";

export interface PeerAnswer {
  toma_id: string;
  incarnation: string;
  address: string;
  /** A random uuid this TOMA proposes for a new cluster (fixed for the life of the process). */
  proposal_uuid: string;
  /** blank: no hard-state record and no cluster state on any of its drives. */
  status: { kind: "blank" } | { kind: "member"; cluster_uuid: string; config: Config };
  /**
   * What its own drives held at its start (single-toma-state.ts), fixed for the process; absent
   * for a member that did not start blank (it restarted from its record).
   */
  single_toma?: SingleTomaReport;
}

/** The single-TOMA state a new cluster takes over; null: none, the empty state. */
export type Takeover = Extract<TakeoverDecision, { kind: "adopt" }> | null;

export type BootstrapDecision =
  | { kind: "wait"; reason: string }
  /** Every peer is blank: found the cluster (write the first record, then talk). */
  | { kind: "form"; cluster_uuid: string; config: Config; takeover: Takeover }
  /** A peer already founded it with my current node id: found it the same way. */
  | { kind: "adopt"; cluster_uuid: string; config: Config; takeover: Takeover }
  /**
   * A peer founded it with my current node id, but the founders' reports are not all there any
   * more (one restarted): start as that node id with nothing, and take the first snapshot from
   * the leader (a voter that holds nothing never campaigns and counts towards no commit).
   */
  | { kind: "adopt_blank"; cluster_uuid: string; config: Config }
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
    // A member that adopted holding nothing (adopt_blank) answers with an empty configuration
    // until the leader's snapshot comes: the founders' configuration is the one with voters.
    const founder = (members.map((a) => a.status as { cluster_uuid: string; config: Config }).find((st) => st.config.members.some((m) => m.voter)) ??
      members[0]!.status) as { cluster_uuid: string; config: Config };
    const mine = nodeId(me.toma_id, me.incarnation);
    // This process has written and sent nothing as `mine` yet, so it may still become that node.
    if (me.status.kind === "blank" && isVoter(founder.config, mine)) {
      // The founders decided from their reports; this TOMA must take over exactly what they did.
      const t = takeoverOf(founder.config.members.filter((m) => m.voter).map((m) => m.id), all);
      if (t.kind === "unknown") return { kind: "adopt_blank", cluster_uuid: founder.cluster_uuid, config: founder.config };
      if (t.kind === "wait") return t;
      const uuid = t.takeover?.state.cluster_uuid ?? founder.cluster_uuid;
      if (uuid !== founder.cluster_uuid) return { kind: "wait", reason: `the founders' reports give cluster ${uuid}, but they founded ${founder.cluster_uuid}` };
      return { kind: "adopt", cluster_uuid: founder.cluster_uuid, config: founder.config, takeover: t.takeover };
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
  const t = takeoverOf(config.members.map((m) => m.id), all);
  if (t.kind !== "ok") return { kind: "wait", reason: t.reason };
  const cluster_uuid = t.takeover?.state.cluster_uuid ?? founders.map((a) => a.proposal_uuid).sort()[0]!;
  return { kind: "form", cluster_uuid, config, takeover: t.takeover };
}

/**
 * The takeover decided from the reports of exactly these founders (node ids). Each node id stands
 * for one report (fixed for its process), so whoever computes it from those node ids gets the
 * same answer; a founder answering under another node id, or without its report (it restarted),
 * makes it unknown.
 */
function takeoverOf(
  founders: readonly string[],
  answers: ReadonlyMap<string, PeerAnswer>,
): { kind: "ok"; takeover: Takeover } | { kind: "wait"; reason: string } | { kind: "unknown"; reason: string } {
  const reports: SingleTomaReport[] = [];
  for (const id of founders) {
    const a = [...answers.values()].find((x) => nodeId(x.toma_id, x.incarnation) === id);
    // Not answered yet (still starting, or not asked): wait for it. Answered under another node
    // id, or without its report: it restarted, and what it held is gone.
    const answeredAs = [...answers.values()].some((x) => id.startsWith(`${x.toma_id}#`));
    if (!a && !answeredAs) return { kind: "wait", reason: `waiting for founder ${id} to answer` };
    if (!a?.single_toma) return { kind: "unknown", reason: `waiting for founder ${id} to tell what its drives held at its start` };
    reports.push(a.single_toma);
  }
  const d = decideTakeover(reports);
  if (d.kind === "wait") return d;
  return { kind: "ok", takeover: d.kind === "adopt" ? d : null };
}
