/**
 * Every type the consensus layer shares with the wire and the drives, each defined once as a
 * valibot schema with its TypeScript type inferred from it: the message validators at the edge
 * (messages.ts) and the hard-state record on the drives (hard-state-record.ts) use the same
 * schemas, so what the core may be handed is exactly what they accept.
 */
import * as v from "valibot";

export const UuidSchema = v.pipe(v.string(), v.regex(/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/));

/** Raft terms and indexes, counts: safe non-negative integers. */
export const Count = v.pipe(v.number(), v.integer(), v.minValue(0), v.maxValue(Number.MAX_SAFE_INTEGER));

/**
 * A Raft node: `toma_id#incarnation` (membership.ts builds and splits them). The core treats it as
 * opaque; transcripts use short ids like "1" or "3b".
 */
export const NodeIdSchema = v.pipe(v.string(), v.regex(/^[A-Za-z0-9._-]{1,64}(#[0-9a-f]{1,32})?$/));
export type NodeId = v.InferOutput<typeof NodeIdSchema>;

/** Where a member's TOMA listens ("host:port"), empty when unknown (tests). */
const Address = v.pipe(v.string(), v.maxLength(256));

export const MemberSchema = v.strictObject({ id: NodeIdSchema, voter: v.boolean(), address: Address });
export type Member = v.InferOutput<typeof MemberSchema>;

/** At most this many members: everything has a limit, and a control plane of 64 TOMAs is plenty. */
export const MAX_MEMBERS = 64;

/** Members sorted by id, distinct (config.ts keeps it so; decoders check it). */
export const ConfigSchema = v.strictObject({ members: v.pipe(v.array(MemberSchema), v.maxLength(MAX_MEMBERS)) });
export type Config = v.InferOutput<typeof ConfigSchema>;

export const ConfChangeSchema = v.variant("op", [
  v.strictObject({ op: v.literal("add_learner"), node: NodeIdSchema, address: Address }),
  v.strictObject({ op: v.literal("promote"), node: NodeIdSchema }),
  v.strictObject({ op: v.literal("remove"), node: NodeIdSchema }),
]);
export type ConfChange = v.InferOutput<typeof ConfChangeSchema>;

/** Largest payload of one entry or one snapshot: a metadata slot holds 1 MiB minus its header. */
export const MAX_DATA_BYTES = 1024 * 1024;
const Bytes = v.pipe(
  v.custom<Uint8Array>((x) => x instanceof Uint8Array, "bytes expected"),
  v.maxLength(MAX_DATA_BYTES),
);

export const EntrySchema = v.variant("kind", [
  /** A cluster-state proposal (proposal.ts), or empty: the no-op a new leader appends. */
  v.strictObject({ kind: v.literal("normal"), term: Count, index: Count, data: Bytes }),
  v.strictObject({ kind: v.literal("conf"), term: Count, index: Count, change: ConfChangeSchema }),
]);
export type Entry = v.InferOutput<typeof EntrySchema>;

/** The state after applying every entry up to `index`, and the configuration in force there. */
export const SnapshotSchema = v.strictObject({ index: Count, term: Count, config: ConfigSchema, data: Bytes });
export type Snapshot = v.InferOutput<typeof SnapshotSchema>;
/** A snapshot without its data: what names it in each chunk of its transfer. */
export const SnapshotMetaSchema = v.strictObject({ index: Count, term: Count, config: ConfigSchema });

/**
 * Bytes of snapshot data per `snap` message: a snapshot (up to a slot, MAX_DATA_BYTES) goes to a
 * new or lagging member in chunks, each with its configuration (up to 64 members with their
 * addresses, about 24 KiB at most), in one request between TOMAs (44 KiB, cluster/peer-sender.ts).
 */
export const MAX_SNAPSHOT_CHUNK_BYTES = 16 * 1024;
const Chunk = v.pipe(
  v.custom<Uint8Array>((x) => x instanceof Uint8Array, "bytes expected"),
  v.maxLength(MAX_SNAPSHOT_CHUNK_BYTES),
);

/**
 * What a node must have on stable storage before it sends anything that depends on it: Raft's
 * hard state plus the log (snapshot and tail). `commit` is kept so that a restart can apply what
 * it knows to be committed before it hears a leader; it is never needed for safety.
 */
export interface DurableState {
  term: number;
  vote: NodeId | null;
  commit: number;
  snapshot: Snapshot;
  entries: Entry[];
}

const Base = { from: NodeIdSchema, to: NodeIdSchema, term: Count };

/** Entries per append message: bounds both the message and the follower's work per step. */
export const MAX_ENTRIES_PER_MSG = 64;
/**
 * Payload bytes of the entries of one append message, beyond its first entry: an append of many
 * entries must still fit one request between TOMAs (44 KiB, cluster/peer-sender.ts), or it is
 * dropped and sent again the same way for ever. A single entry above it goes alone; the
 * proposers keep every entry below it (cluster/volume-ops.ts).
 */
export const MAX_APPEND_DATA_BYTES = 32 * 1024;

export const MessageSchema = v.variant("type", [
  /** "Would you vote for me at `term`?" (term = the sender's term + 1). Changes nobody's term. */
  v.strictObject({ type: v.literal("pre_vote"), ...Base, last_index: Count, last_term: Count }),
  /** Granted: term = the request's term. Rejected: term = the responder's. */
  v.strictObject({ type: v.literal("pre_vote_resp"), ...Base, reject: v.boolean() }),
  v.strictObject({ type: v.literal("vote"), ...Base, last_index: Count, last_term: Count }),
  v.strictObject({ type: v.literal("vote_resp"), ...Base, reject: v.boolean() }),
  v.strictObject({
    type: v.literal("app"),
    ...Base,
    prev_index: Count,
    prev_term: Count,
    entries: v.pipe(v.array(EntrySchema), v.maxLength(MAX_ENTRIES_PER_MSG)),
    commit: Count,
  }),
  /**
   * Accepted: index = the last index now known to match the leader. Rejected: index = the
   * prev_index that did not match, and the hint names where the follower's log may match
   * (hint_index, the term there) so the leader can skip a whole conflicting term.
   */
  v.strictObject({
    type: v.literal("app_resp"),
    ...Base,
    index: Count,
    reject: v.boolean(),
    hint_index: Count,
    hint_term: Count,
  }),
  /** commit: what the leader knows the receiver holds of its commit; read_round: see raft.ts. */
  v.strictObject({ type: v.literal("heartbeat"), ...Base, commit: Count, read_round: Count }),
  v.strictObject({ type: v.literal("heartbeat_resp"), ...Base, read_round: Count }),
  /**
   * One chunk of a snapshot of `total` bytes: data[offset, offset + data.length). The last chunk
   * (offset + data.length = total) is answered by an app_resp once installed; every other by a
   * snap_resp. Chunks are sent one at a time, each after the answer to the one before it.
   */
  v.strictObject({
    type: v.literal("snap"),
    ...Base,
    snapshot: SnapshotMetaSchema,
    total: v.pipe(Count, v.maxValue(MAX_DATA_BYTES)),
    offset: Count,
    data: Chunk,
  }),
  /**
   * The receiver holds `offset` bytes of the snapshot at `index` from this leader in this term:
   * send from there. reject: a chunk arrived beyond what it holds (one was lost, or it lost what
   * it had) and `offset` is where to resume.
   */
  v.strictObject({ type: v.literal("snap_resp"), ...Base, index: Count, offset: Count, reject: v.boolean() }),
]);
export type Message = v.InferOutput<typeof MessageSchema>;

/** A confirmed linearizable read point: wait until applied ≥ index, then read (raft.ts readIndex). */
export interface ReadState {
  ctx: number;
  index: number;
}
