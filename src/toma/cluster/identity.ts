/**
 * What a TOMA tells its peers about itself before and outside Raft (`GET /v1/raft/identity`):
 * who it is, which peer list it was given, and whether it is blank or a member of a cluster. The
 * bootstrap decision (consensus/bootstrap.ts) is computed from these answers; every answer is
 * validated whole before it is used.
 */
import * as v from "valibot";
import { IncarnationSchema, TomaIdSchema } from "../consensus/hard-state-record.ts";
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
  /** A member's consensus state as it sees it (what its peers show as their view of it). */
  raft: v.optional(
    v.strictObject({
      role: v.picklist(["follower", "pre_candidate", "candidate", "leader", "learner", "outside"]),
      term: Count,
      leader: v.nullable(NodeIdSchema),
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
