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
import { apply, type ClusterState, type Column, type Command, DriveRecordSchema, LegStateSchema, type RefusalCode } from "../cluster-state.ts";
import { expandAll, MAX_DECODED_EXTENTS, MAX_RUN_NUMBERS, toRuns } from "../../engine/layout/extent-runs.ts";
import { type Decoded, parseCbor } from "../parse-cbor.ts";
import { Count, UuidSchema } from "./types.ts";

const Name = v.pipe(v.string(), v.maxLength(256));
/**
 * A column as a log entry carries it: its extents as runs (extent-runs.ts), or, in entries written
 * before runs, as a plain list (a hard-state record on a drive may still hold such an entry).
 */
const ColumnWireSchema = v.union([
  v.strictObject({ drive_uuid: UuidSchema, runs: v.pipe(v.array(Count), v.maxLength(MAX_RUN_NUMBERS)) }),
  v.strictObject({ drive_uuid: UuidSchema, extents: v.pipe(v.array(Count), v.maxLength(1 << 20)) }),
]);
type ColumnWire = v.InferOutput<typeof ColumnWireSchema>;
/** A column as the state machine takes it. */
const ColumnSchema = v.strictObject({ drive_uuid: UuidSchema, extents: v.array(Count) });

/** Every command of cluster-state.ts, with its columns given by `column`. */
function commandSchema<C extends typeof ColumnSchema | typeof ColumnWireSchema>(column: C) {
  return v.variant("kind", [
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
    columns: v.pipe(v.array(column), v.maxLength(4096)),
    mirrors: Count,
    debug_format: v.optional(v.boolean()),
  }),
  v.strictObject({ kind: v.literal("delete_volume"), uuid: UuidSchema, released: v.optional(v.pipe(v.array(UuidSchema), v.maxLength(4096))) }),
  v.strictObject({ kind: v.literal("release_extents"), volume_uuid: UuidSchema, drive_uuid: UuidSchema }),
  v.strictObject({ kind: v.literal("set_legs"), uuid: UuidSchema, legs: v.pipe(v.array(LegStateSchema), v.maxLength(4096)) }),
  v.strictObject({ kind: v.literal("replace_leg"), uuid: UuidSchema, column: Count, with: column }),
  v.strictObject({ kind: v.literal("set_cache_epoch"), drive_uuid: UuidSchema, cache_epoch: Count }),
  v.strictObject({ kind: v.literal("register_client"), id: Count, name: Name }),
  v.strictObject({ kind: v.literal("attach_client"), id: Count, volume_uuid: UuidSchema }),
  v.strictObject({ kind: v.literal("remove_client"), id: Count }),
  v.strictObject({ kind: v.literal("expire_client"), id: Count }),
  v.strictObject({ kind: v.literal("note_stable") }),
  ]);
}
/** Every command of cluster-state.ts, as the state machine takes it. */
export const CommandSchema = commandSchema(ColumnSchema);
const CommandWireSchema = commandSchema(ColumnWireSchema);

// The schema and the Command type must describe the same thing: each is assignable to the other.
type Same<A, B> = [A] extends [B] ? ([B] extends [A] ? true : false) : false;
const schemaMatchesCommand: Same<v.InferOutput<typeof CommandSchema>, Command> = true;
void schemaMatchesCommand;

/**
 * The encoded cluster state a TOMA cluster carries at most. Each TOMA's hard-state record holds
 * the state (its snapshot) and the log tail kept before compaction (COMPACT_AFTER_ENTRIES, each
 * at most MAX_COMMAND_BYTES, cluster/volume-ops.ts) in one metadata slot of 1 MiB: 512 KiB + 65
 * × 4 KiB leave more than 200 KiB for the rest of the record and a longer tail. A new or lagging
 * member gets it in chunks (MAX_SNAPSHOT_CHUNK_BYTES), so no message bounds it. The leader refuses
 * a command that would grow the state beyond it, and a single-TOMA state beyond it is not taken
 * over.
 */
export const MAX_STATE_BYTES = 512 * 1024;

const ProposalWireSchema = v.strictObject({ computed_at: Count, cmd: CommandWireSchema, stable: v.optional(Count) });
/**
 * `stable`: the proposer's stable generation when it computed the command (every client it knows
 * had acknowledged it); the state keeps the highest (ClusterState.stable). Never above
 * `computed_at`.
 */
export type Proposal = { computed_at: number; cmd: Command; stable?: number };

/** The command with every column's extents as runs: a leg of any size takes a few bytes. */
export function encodeProposal(p: Proposal): Uint8Array {
  const wire = (c: Column) => ({ drive_uuid: c.drive_uuid, runs: toRuns(c.extents) });
  const cmd = p.cmd;
  const out = cmd.kind === "create_volume" ? { ...cmd, columns: cmd.columns.map(wire) } : cmd.kind === "replace_leg" ? { ...cmd, with: wire(cmd.with) } : cmd;
  return encode(p.stable === undefined ? { computed_at: p.computed_at, cmd: out } : { computed_at: p.computed_at, cmd: out, stable: p.stable });
}

/** Decodes a proposal, its columns given as runs or (older entries) as plain extent lists. */
export function decodeProposal(bytes: Uint8Array): Decoded<Proposal> {
  const d = parseCbor(bytes, ProposalWireSchema, "proposal");
  if (!d.ok) return d;
  const cmd = d.value.cmd;
  const stable = d.value.stable === undefined ? {} : { stable: d.value.stable };
  if (cmd.kind !== "create_volume" && cmd.kind !== "replace_leg") return { ok: true, value: { computed_at: d.value.computed_at, cmd, ...stable } };
  const wires: ColumnWire[] = cmd.kind === "create_volume" ? cmd.columns : [cmd.with];
  const cols = columnsOf(wires);
  if (!cols.ok) return { ok: false, error: `proposal: ${cols.error}` };
  const out: Command = cmd.kind === "create_volume" ? { ...cmd, columns: cols.value } : { ...cmd, with: cols.value[0]! };
  return { ok: true, value: { computed_at: d.value.computed_at, cmd: out, ...stable } };
}

/** Columns with their runs expanded, bounded in all (extent-runs.ts). */
function columnsOf(wires: ColumnWire[]): Decoded<Column[]> {
  let listed = 0;
  for (const w of wires) if ("extents" in w) listed += w.extents.length;
  const runs = wires.map((w) => ({ what: `column on drive ${w.drive_uuid}`, runs: "runs" in w ? w.runs : [] }));
  const e = expandAll(runs);
  if (!e.ok) return e;
  if (listed + e.value.reduce((n, x) => n + x.length, 0) > MAX_DECODED_EXTENTS) return { ok: false, error: `lists more than ${MAX_DECODED_EXTENTS} extents in all` };
  return { ok: true, value: wires.map((w, i) => ({ drive_uuid: w.drive_uuid, extents: "runs" in w ? e.value[i]! : [...w.extents] })) };
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
