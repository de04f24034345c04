/**
 * The record a TOMA writes into the metadata slots of every drive of its own server: who it is,
 * its write sequence number (= the slot generation), the drives it went to, and its Raft durable
 * state. Canonical CBOR (keys in a fixed order), so the same record is the same bytes on every
 * drive and "holds exactly this record" is a byte comparison. A slot's bytes are never trusted:
 * decodeRecord checks the schema and every cross-field rule, and says why a record is refused.
 *
 * Which record to trust at start is record-trust.ts; which drives the next one goes to is
 * record-writer.ts; why that is safe is docs/toma-cluster.md ("Hard state").
 */
import { decode, encode } from "cbor-x";
import * as v from "valibot";
import { applyChange, changeProblem, configProblem } from "./config.ts";
import { issueText } from "../parse-cbor.ts";
import {
  Count,
  type DurableState,
  type Entry,
  EntrySchema,
  MAX_MEMBERS,
  type NodeId,
  NodeIdSchema,
  type Snapshot,
  SnapshotSchema,
  UuidSchema,
} from "./types.ts";

export const RECORD_KIND = "nvmesh.toma.hard-state";
export const RECORD_FORMAT = 1;
/** A server's drives; the record lists them all. */
export const MAX_RECORD_DRIVES = 256;
/** The log tail a record may carry (the TOMA compacts far earlier). */
export const MAX_RECORD_ENTRIES = 4096;

/** A TOMA's (a server's) name: what `toma run --name` and `cluster server add --name` take. */
export const TOMA_ID_RE = /^[A-Za-z0-9._-]{1,64}$/;
export const TomaIdSchema = v.pipe(v.string(), v.regex(TOMA_ID_RE));
/** 64 random bits, hex: a new one each time a TOMA starts without trusted hard state. */
export const IncarnationSchema = v.pipe(v.string(), v.regex(/^[0-9a-f]{16}$/));

const RecordSchema = v.strictObject({
  kind: v.literal(RECORD_KIND),
  format: v.literal(RECORD_FORMAT),
  cluster_uuid: UuidSchema,
  toma_id: TomaIdSchema,
  incarnation: IncarnationSchema,
  seq: v.pipe(Count, v.minValue(1)),
  drives: v.pipe(v.array(UuidSchema), v.minLength(1), v.maxLength(MAX_RECORD_DRIVES)),
  anchor_seq: Count,
  term: Count,
  vote: v.nullable(NodeIdSchema),
  commit: Count,
  snapshot: SnapshotSchema,
  entries: v.pipe(v.array(EntrySchema), v.maxLength(MAX_RECORD_ENTRIES)),
});
export type HardStateRecord = v.InferOutput<typeof RecordSchema>;

export function nodeIdOf(r: { toma_id: string; incarnation: string }): NodeId {
  return `${r.toma_id}#${r.incarnation}`;
}

export function durableOf(r: HardStateRecord): DurableState {
  return { term: r.term, vote: r.vote, commit: r.commit, snapshot: r.snapshot, entries: r.entries };
}

function canonicalEntry(e: Entry): Entry {
  if (e.kind === "normal") return { kind: "normal", term: e.term, index: e.index, data: e.data };
  const c = e.change;
  const change = c.op === "add_learner" ? { op: c.op, node: c.node, address: c.address } : { op: c.op, node: c.node };
  return { kind: "conf", term: e.term, index: e.index, change };
}

function canonicalSnapshot(s: Snapshot): Snapshot {
  const members = s.config.members.map((m) => ({ id: m.id, voter: m.voter, address: m.address }));
  return { index: s.index, term: s.term, config: { members }, data: s.data };
}

export function encodeRecord(r: HardStateRecord): Uint8Array {
  const why = recordProblem(r);
  if (why) throw new Error(`refusing to encode an invalid hard-state record: ${why}`);
  return encode({
    kind: RECORD_KIND,
    format: RECORD_FORMAT,
    cluster_uuid: r.cluster_uuid,
    toma_id: r.toma_id,
    incarnation: r.incarnation,
    seq: r.seq,
    drives: [...r.drives],
    anchor_seq: r.anchor_seq,
    term: r.term,
    vote: r.vote,
    commit: r.commit,
    snapshot: canonicalSnapshot(r.snapshot),
    entries: r.entries.map(canonicalEntry),
  });
}

/** Whether these bytes claim to be a hard-state record at all (vs. a cluster state, or garbage). */
export function looksLikeRecord(raw: unknown): boolean {
  return typeof raw === "object" && raw !== null && (raw as { kind?: unknown }).kind === RECORD_KIND;
}

export type RecordDecode =
  | { kind: "record"; record: HardStateRecord }
  /** Valid CBOR that is not a hard-state record (e.g. the single-TOMA cluster state). */
  | { kind: "other" }
  | { kind: "corrupt"; error: string };

/**
 * Decodes a slot payload read from `drive_uuid` at `slot_generation`; never throws. A record
 * whose seq is not the slot generation, or that does not list the drive it was read from, was
 * not written there by its owner and is corrupt.
 */
export function decodeRecord(bytes: Uint8Array, at: { slot_generation: number; drive_uuid: string }): RecordDecode {
  let raw: unknown;
  try {
    raw = decode(bytes);
  } catch (e) {
    return { kind: "corrupt", error: `not valid CBOR: ${(e as Error).message}` };
  }
  if (!looksLikeRecord(raw)) return { kind: "other" };
  const r = v.safeParse(RecordSchema, raw);
  if (!r.success) return { kind: "corrupt", error: `hard-state record fails validation${issueText(r.issues)}` };
  const rec = r.output;
  const why = recordProblem(rec);
  if (why) return { kind: "corrupt", error: why };
  if (rec.seq !== at.slot_generation) return { kind: "corrupt", error: `record seq ${rec.seq} in a slot of generation ${at.slot_generation}` };
  if (!rec.drives.includes(at.drive_uuid)) return { kind: "corrupt", error: `record read from drive ${at.drive_uuid}, which it does not list` };
  return { kind: "record", record: rec };
}

/** The cross-field rules of a record, or null. */
export function recordProblem(r: HardStateRecord): string | null {
  for (let i = 1; i < r.drives.length; i++) if (!(r.drives[i - 1]! < r.drives[i]!)) return "drives are not sorted and distinct";
  if (r.anchor_seq >= r.seq) return `anchor seq ${r.anchor_seq} is not below seq ${r.seq}`;
  const s = r.snapshot;
  const cp = configProblem(s.config);
  if (cp) return `snapshot configuration: ${cp}`;
  if (s.config.members.length > MAX_MEMBERS) return "too many members";
  let prev = { index: s.index, term: s.term };
  let config = s.config;
  for (const e of r.entries) {
    if (e.index !== prev.index + 1) return `entry ${e.index} does not follow ${prev.index}`;
    if (e.term < prev.term) return `entry ${e.index} has term ${e.term} after ${prev.term}`;
    if (e.kind === "conf") {
      const why = changeProblem(config, e.change);
      if (why) return `entry ${e.index}: ${why}`;
      config = applyChange(config, e.change);
    }
    prev = e;
  }
  if (prev.term > r.term) return `log term ${prev.term} above the record's term ${r.term}`;
  if (r.commit < s.index || r.commit > prev.index) return `commit ${r.commit} outside the log [${s.index}, ${prev.index}]`;
  return null;
}

export function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}
