/**
 * What the operations that run on the leader alone (membership changes, volume and drive
 * commands) share: the refusal they answer with, and the check that this TOMA leads and may
 * compute from its applied state (it applied an entry of its own term, so that state holds every
 * earlier commit). A follower answers 421 naming the leader's management address; the CLI sends
 * the request there.
 */
import { ProposalError, type TomaNode } from "./node.ts";

/** A refusal with the HTTP status the management API answers it with. */
export class LeaderOpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    /** 421: the leader's management address, where to send the request instead. */
    readonly leader: string | null = null,
  ) {
    super(message);
  }
}

/** 421 naming the leader, or 503 when none is known. */
export function notLeader(node: TomaNode): LeaderOpError {
  const lead = node.leader();
  if (!lead || lead.address === "") return new LeaderOpError(503, "this TOMA is not the leader and no leader is known now (an election may be under way); retry in a few seconds");
  return new LeaderOpError(421, `this TOMA is not the leader; the leader is at ${lead.address}`, lead.address);
}

/** Throws unless this TOMA runs, leads, and applied an entry of its own term. */
export function leaderOnly(node: TomaNode): void {
  const v = node.view();
  if (v.phase !== "running") throw new LeaderOpError(503, `this TOMA is not running in a cluster (${v.phase}: ${v.reason ?? ""})`);
  if (v.role !== "leader") throw notLeader(node);
  if (!v.leader_ready) throw new LeaderOpError(503, "this TOMA was just elected and has not applied an entry of its term yet; retry in a moment");
}

/** A failed proposal as the management API answers it (`what`: the change, for the message). */
export function proposalFailure(node: TomaNode, what: string, e: unknown): LeaderOpError {
  if (!(e instanceof ProposalError)) throw e;
  if (e.code === "not_leader") return notLeader(node);
  const status = e.code === "refused" || e.code === "overwritten" ? 409 : 503;
  return new LeaderOpError(status, `${what}: ${e.message}`, e.leader?.address || null);
}
