/**
 * What a normal log entry carries for the TOMA, and how a committed entry changes the cluster
 * state. A proposal is a cluster-state command (src/toma/cluster-state.ts, every non-deterministic
 * choice already inside it) plus the generation of the state the leader computed it from:
 *
 *   {computed_at, cmd}
 *
 * applyProposal refuses a proposal computed from any other generation, the same way on every TOMA
 * (deterministic), so a command the leader computed from a view that another command changed in
 * between can never take effect; the leader recomputes and proposes again. The state's generation
 * becomes the entry's index, so generations are Raft indexes and a volume's `topology_seq` is the
 * index of the entry that last changed it.
 *
 * Also the fence version of an entry: docs/toma-cluster.md, "Fenced at the drives".
 */
import { encode } from "cbor-x";
import * as v from "valibot";
import { assert } from "../../engine/assert.ts";
import { apply, type ClusterState, type Command, DriveRecordSchema, LegStateSchema, type RefusalCode } from "../cluster-state.ts";
import { type Decoded, parseCbor } from "../parse-cbor.ts";
import { Count, UuidSchema } from "./types.ts";

const Name = v.pipe(v.string(), v.maxLength(256));
const ColumnSchema = v.strictObject({ drive_uuid: UuidSchema, extents: v.pipe(v.array(Count), v.maxLength(1 << 20)) });

/** Every command of cluster-state.ts, as it may arrive in a log entry. */
export const CommandSchema = v.variant("kind", [
  v.strictObject({ kind: v.literal("add_drive"), drive: DriveRecordSchema }),
  v.strictObject({
    kind: v.literal("create_volume"),
    uuid: UuidSchema,
    name: Name,
    capacity_bytes: Count,
    raid_level: v.picklist(["concatenated", "0", "1", "10"]),
    stripe_width: Count,
    stripe_size_bytes: Count,
    extent_size_bytes: Count,
    columns: v.pipe(v.array(ColumnSchema), v.maxLength(4096)),
    mirrors: Count,
    debug_format: v.optional(v.boolean()),
  }),
  v.strictObject({ kind: v.literal("delete_volume"), uuid: UuidSchema, released: v.optional(v.pipe(v.array(UuidSchema), v.maxLength(4096))) }),
  v.strictObject({ kind: v.literal("release_extents"), volume_uuid: UuidSchema, drive_uuid: UuidSchema }),
  v.strictObject({ kind: v.literal("set_legs"), uuid: UuidSchema, legs: v.pipe(v.array(LegStateSchema), v.maxLength(4096)) }),
  v.strictObject({ kind: v.literal("replace_leg"), uuid: UuidSchema, column: Count, with: ColumnSchema }),
  v.strictObject({ kind: v.literal("set_cache_epoch"), drive_uuid: UuidSchema, cache_epoch: Count }),
  v.strictObject({ kind: v.literal("register_client"), id: Count, name: Name }),
  v.strictObject({ kind: v.literal("attach_client"), id: Count, volume_uuid: UuidSchema }),
  v.strictObject({ kind: v.literal("remove_client"), id: Count }),
]);

// The schema and the Command type must describe the same thing: each is assignable to the other.
type Same<A, B> = [A] extends [B] ? ([B] extends [A] ? true : false) : false;
const schemaMatchesCommand: Same<v.InferOutput<typeof CommandSchema>, Command> = true;
void schemaMatchesCommand;

/**
 * The encoded cluster state a TOMA cluster carries at most: one snapshot message to a new or
 * lagging member, with its configuration, under the transport's 44 KiB (state transfer in chunks
 * is not built). The leader refuses a command that would grow the state beyond it, and a
 * single-TOMA state beyond it is not taken over.
 */
export const MAX_STATE_BYTES = 40 * 1024;

const ProposalSchema = v.strictObject({ computed_at: Count, cmd: CommandSchema, stable: v.optional(Count) });
/**
 * `stable`: the proposer's stable generation when it computed the command (every client it knows
 * had acknowledged it); the state keeps the highest (ClusterState.stable). Never above
 * `computed_at`.
 */
export type Proposal = { computed_at: number; cmd: Command; stable?: number };

export function encodeProposal(p: Proposal): Uint8Array {
  return encode(p.stable === undefined ? { computed_at: p.computed_at, cmd: p.cmd } : { computed_at: p.computed_at, cmd: p.cmd, stable: p.stable });
}

export function decodeProposal(bytes: Uint8Array): Decoded<Proposal> {
  return parseCbor(bytes, ProposalSchema, "proposal") as Decoded<Proposal>;
}

export type Applied =
  | { kind: "noop" }
  | { kind: "applied"; state: ClusterState }
  | { kind: "refused"; code: RefusalCode | "stale" | "undecodable"; error: string };

/**
 * Applies one committed normal entry to the state. Pure and deterministic: every TOMA gets the
 * same outcome for the same entry and state. A refusal leaves the state as it was; the leader
 * that proposed it reports the refusal to whoever asked.
 */
export function applyProposal(state: ClusterState, entry: { index: number; data: Uint8Array }): Applied {
  if (entry.data.length === 0) return { kind: "noop" };
  assert(entry.index > state.generation, () => `entry ${entry.index} applied to a state of generation ${state.generation}`);
  const d = decodeProposal(entry.data);
  if (!d.ok) return { kind: "refused", code: "undecodable", error: d.error };
  const p = d.value;
  if (p.computed_at !== state.generation) {
    return {
      kind: "refused",
      code: "stale",
      error: `computed from generation ${p.computed_at}, but the state is at generation ${state.generation}`,
    };
  }
  if (p.stable !== undefined && p.stable > p.computed_at) {
    return { kind: "refused", code: "invalid", error: `stable generation ${p.stable} above the generation ${p.computed_at} it was computed from` };
  }
  const r = apply({ ...state, generation: entry.index - 1 }, p.cmd);
  if (!r.ok) return { kind: "refused", code: r.code, error: r.error };
  if (p.stable !== undefined && p.stable > r.state.stable) return { kind: "applied", state: { ...r.state, stable: p.stable } };
  return { kind: "applied", state: r.state };
}

/** Terms stay below 2^21 and indexes below 2^32, so a version fits the data path's 2^53. */
export const MAX_FENCE_TERM = 2 ** 21 - 1;
export const MAX_FENCE_INDEX = 2 ** 32 - 1;

/**
 * The version `(term << 32) | index` of the entry at (term, index): what a TOMA writes to targets
 * with everything it does on the strength of the state applied up to that entry.
 */
export function fenceVersion(term: number, index: number): number {
  assert(Number.isSafeInteger(term) && term >= 0 && term <= MAX_FENCE_TERM, () => `term ${term} beyond the fence version's range`);
  assert(Number.isSafeInteger(index) && index >= 0 && index <= MAX_FENCE_INDEX, () => `index ${index} beyond the fence version's range`);
  return term * 2 ** 32 + index;
}
