/**
 * What a TOMA tells its peers about itself before and outside Raft (`GET /v1/raft/identity`):
 * who it is, which peer list it was given, whether it is blank or a member of a cluster, and what
 * it sees of the cluster. Every answer is validated whole before it is used; a blank TOMA's
 * bootstrap decision (consensus/bootstrap.ts) is computed from its peers' answers here.
 */
import * as v from "valibot";
import { type BootstrapDecision, bootstrapDecision, type PeerAnswer } from "../consensus/bootstrap.ts";
import { IncarnationSchema, TomaIdSchema } from "../consensus/hard-state-record.ts";
import { SingleTomaReportSchema } from "../consensus/single-toma-state.ts";
import { ConfigSchema, Count, NodeIdSchema, UuidSchema } from "../consensus/types.ts";

const Address = v.pipe(v.string(), v.minLength(1), v.maxLength(256));

export const IdentitySchema = v.strictObject({
  toma_id: TomaIdSchema,
  /** Null while the TOMA is still reading its drives (it does not know yet). */
  incarnation: v.nullable(IncarnationSchema),
  /** The random uuid it proposes should a new cluster form (fixed for the process). */
  proposal_uuid: UuidSchema,
  /** Its --peers list, sorted: founders must have been given the same one. */
  peers: v.pipe(v.array(Address), v.maxLength(64)),
  status: v.variant("kind", [
    /** Still reading its drives, or amnesic outside any cluster: cannot found nor adopt yet. */
    v.strictObject({ kind: v.literal("starting") }),
    v.strictObject({ kind: v.literal("outside"), reason: v.pipe(v.string(), v.maxLength(1024)) }),
    /** No record of any cluster on any of its drives. */
    v.strictObject({ kind: v.literal("blank") }),
    v.strictObject({ kind: v.literal("member"), cluster_uuid: UuidSchema, config: ConfigSchema }),
  ]),
  /**
   * What its own drives held when it started blank (single-TOMA states and the drives heard):
   * founders take over a single-TOMA cluster from these. Absent for a TOMA that started from its
   * own record.
   */
  single_toma: v.optional(SingleTomaReportSchema),
  /** A member's consensus state as it sees it (what its peers show as their view of it). */
  raft: v.optional(
    v.strictObject({
      role: v.picklist(["follower", "pre_candidate", "candidate", "leader", "learner", "outside"]),
      term: Count,
      leader: v.nullable(NodeIdSchema),
      /** The configuration it knows committed: how a removed member learns it is out. */
      committed_config: v.optional(ConfigSchema),
    }),
  ),
});
export type Identity = v.InferOutput<typeof IdentitySchema>;

/** Validates a peer's answer; throws an Error saying what is wrong with it. */
export function parseIdentity(raw: unknown, from: string): Identity {
  const r = v.safeParse(IdentitySchema, raw);
  if (!r.success) throw new Error(`identity answer of ${from} is invalid: ${r.issues.map((i) => i.message).join("; ")}`);
  return r.output;
}

/** One peer's answer to the identity question, by the address in --peers; null if none came. */
export interface Asked {
  address: string;
  id: Identity | null;
  error: string | null;
}

/**
 * The bootstrap decision of a blank TOMA from its peers' answers, every address in --peers asked
 * (its own included): bootstrap.ts once every peer answered, was given the same list, and is
 * blank or a member; a reason to wait otherwise. Also which address is this TOMA's own.
 */
export function decideFromAnswers(
  me: { toma_id: string; incarnation: string; peers: readonly string[] },
  answers: readonly Asked[],
): { decision: BootstrapDecision; my_address: string | null } {
  const wait = (reason: string, my_address: string | null = null) => ({ decision: { kind: "wait" as const, reason }, my_address });
  // A cluster already exists: a new server joins it (its --peers need only name itself and one
  // member that answers); the same list everywhere is needed only to found a cluster.
  const joining = joinDecision(me, answers);
  if (joining) return joining;
  const silent = answers.filter((a) => a.id === null);
  if (silent.length > 0) return wait(`waiting for ${silent.map((a) => `${a.address} (${a.error})`).join(", ")}`);
  const got = answers as readonly (Asked & { id: Identity })[];
  const mine = [...me.peers].sort().join(",");
  const other = got.find((a) => a.id.peers.join(",") !== mine);
  if (other) return wait(`${other.address} was given --peers ${other.id.peers.join(",")}, this TOMA ${mine}: give every TOMA the same list`);
  const self = got.filter((a) => a.id.toma_id === me.toma_id);
  if (self.length !== 1 || self[0]!.id.incarnation !== me.incarnation) {
    return wait(`--peers must list this TOMA's own address exactly once (found ${self.length} answers named ${me.toma_id})`);
  }
  const my_address = self[0]!.address;
  const ids = got.map((a) => a.id.toma_id);
  const twice = ids.find((x, i) => ids.indexOf(x) !== i);
  if (twice !== undefined) return wait(`two peers answer as TOMA ${twice}: give each server its own --name`, my_address);
  const waiting = got.filter((a) => a.id.status.kind === "starting" || a.id.status.kind === "outside" || a.id.incarnation === null);
  if (waiting.length > 0) return wait(`waiting for ${waiting.map((a) => `${a.address} (${a.id.status.kind})`).join(", ")}`, my_address);
  return { decision: bootstrapDecision(asPeer(self[0]!), ids, got.map(asPeer)), my_address };
}

/** Some peer answers as a member of a cluster: the decision with the peers that answered, or null. */
function joinDecision(
  me: { toma_id: string; incarnation: string; peers: readonly string[] },
  answers: readonly Asked[],
): { decision: BootstrapDecision; my_address: string | null } | null {
  const got = answers.filter((a): a is Asked & { id: Identity } => a.id !== null);
  if (!got.some((a) => a.id.toma_id !== me.toma_id && a.id.status.kind === "member")) return null;
  const self = got.filter((a) => a.id.toma_id === me.toma_id);
  if (self.length !== 1 || self[0]!.id.incarnation !== me.incarnation) {
    return { decision: { kind: "wait", reason: `--peers must list this TOMA's own address exactly once (found ${self.length} answers named ${me.toma_id})` }, my_address: null };
  }
  const my_address = self[0]!.address;
  const answered = got.filter((a) => a.id.incarnation !== null && (a.id.status.kind === "member" || a.id.status.kind === "blank"));
  return { decision: bootstrapDecision(asPeer(self[0]!), answered.map((a) => a.id.toma_id), answered.map(asPeer)), my_address };
}

function asPeer(a: Asked & { id: Identity }): PeerAnswer {
  const s = a.id.status;
  return {
    toma_id: a.id.toma_id,
    incarnation: a.id.incarnation!,
    address: a.address,
    proposal_uuid: a.id.proposal_uuid,
    status: s.kind === "member" ? { kind: "member", cluster_uuid: s.cluster_uuid, config: s.config } : { kind: "blank" },
    ...(a.id.single_toma ? { single_toma: a.id.single_toma } : {}),
  };
}
