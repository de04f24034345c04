/**
 * Which hard-state record a starting TOMA may trust, from what the slots of its own server's
 * drives hold right now; or that it is amnesic. Pure. The rules and the proof that a trusted
 * record is never older than anything the TOMA relied on are in docs/toma-cluster.md ("The trust
 * rule", "The trust theorem"); the recovery table there lists every case and its test.
 *
 * A drive *cleanly holds* a record when its current slot holds exactly that record (same bytes)
 * and its other slot is older or torn. An unreadable other slot might have held something newer
 * that a read error hides, so it is not clean.
 *
 *   T1 (full)   every drive the record lists is present and cleanly holds it;
 *   T2 (split)  a crash in the middle of writing it: every drive listed by it or by its anchor
 *               (the last record complete when it was issued) is present and cleanly holds one
 *               of the two.
 * The highest-seq candidate wins; none means amnesia.
 */
import { decodeRecord, type HardStateRecord, sameBytes } from "./hard-state-record.ts";

/** What a drive's two slots showed (the target reports the current slot and the other's state). */
export interface SlotRead {
  drive_uuid: string;
  current: { generation: number; payload: Uint8Array | null } | { unreadable: string };
  other: "older" | "torn" | "unreadable";
}

/** One drive, as the trust rule sees it. */
export interface SlotView {
  drive_uuid: string;
  /** The current slot's generation; null when unreadable. */
  generation: number | null;
  /** A valid hard-state record of this toma id (any cluster, any incarnation), and its bytes. */
  own: { record: HardStateRecord; bytes: Uint8Array } | null;
  /** Other slot older or torn (A2): nothing newer can hide there. */
  clean: boolean;
  /** Why the slot is not an own record, when it is not: blank, foreign, corrupt, unreadable. */
  note: string | null;
  corrupt: boolean;
  /** A valid hard-state record of another toma id: whose, and of which cluster. */
  foreign?: { toma_id: string; cluster_uuid: string };
}

export interface WrittenSet {
  seq: number;
  drives: string[];
}

export type TrustDecision =
  | {
      kind: "trusted";
      how: "full" | "split";
      record: HardStateRecord;
      /** The record writer's starting anchor and pending records (rule W2). */
      anchor: WrittenSet;
      pending: WrittenSet[];
      /** The highest slot generation on any present drive: the writer's seq floor. */
      max_generation: number;
    }
  | {
      kind: "amnesic";
      reason: string;
      /** Drives the newest own record lists that are not present: worth waiting for a while. */
      missing: string[];
      max_generation: number;
    };

export function viewSlot(read: SlotRead, toma_id: string): SlotView {
  const base = { drive_uuid: read.drive_uuid, clean: read.other !== "unreadable", own: null, corrupt: false };
  if ("unreadable" in read.current) return { ...base, generation: null, note: `unreadable: ${read.current.unreadable}` };
  const { generation, payload } = read.current;
  if (payload === null) return { ...base, generation, note: "blank" };
  const d = decodeRecord(payload, { slot_generation: generation, drive_uuid: read.drive_uuid });
  if (d.kind === "corrupt") return { ...base, generation, note: `corrupt hard-state record: ${d.error}`, corrupt: true };
  if (d.kind === "other") return { ...base, generation, note: "not a hard-state record (cluster state of the single-TOMA format, or another payload)" };
  if (d.record.toma_id !== toma_id) {
    return { ...base, generation, note: `record of toma ${d.record.toma_id}`, foreign: { toma_id: d.record.toma_id, cluster_uuid: d.record.cluster_uuid } };
  }
  return { ...base, generation, own: { record: d.record, bytes: payload }, note: null };
}

export function decideTrust(views: readonly SlotView[], me: { cluster_uuid: string | null }): TrustDecision {
  const max_generation = Math.max(0, ...views.map((x) => x.generation ?? 0));
  const amnesic = (reason: string, missing: string[] = []): TrustDecision => ({ kind: "amnesic", reason, missing, max_generation });

  const clusters = new Set(views.flatMap((x) => (x.own ? [x.own.record.cluster_uuid] : [])));
  if (me.cluster_uuid === null && clusters.size > 1) {
    return amnesic(`own records of several clusters (${[...clusters].sort().join(", ")}); configure which one`);
  }
  const mine = views.filter((x) => x.own && (me.cluster_uuid === null || x.own.record.cluster_uuid === me.cluster_uuid));
  if (mine.length === 0) return amnesic("no hard-state record of this TOMA on any present drive");

  const byDrive = new Map(views.map((x) => [x.drive_uuid, x]));
  // Distinct records by seq; two different records with one seq cannot be ordered.
  const bySeq = new Map<number, { record: HardStateRecord; bytes: Uint8Array }>();
  for (const x of mine) {
    const seen = bySeq.get(x.own!.record.seq);
    if (!seen) bySeq.set(x.own!.record.seq, x.own!);
    else if (!sameBytes(seen.bytes, x.own!.bytes)) return amnesic(`two different records with seq ${x.own!.record.seq}`);
  }
  const holds = (drive: string, r: { bytes: Uint8Array }) => {
    const x = byDrive.get(drive);
    return x !== undefined && x.clean && x.own !== null && sameBytes(x.own.bytes, r.bytes);
  };

  const seqs = [...bySeq.keys()].sort((a, b) => b - a);
  for (const seq of seqs) {
    const x = bySeq.get(seq)!;
    const r = x.record;
    if (r.drives.every((d) => holds(d, x))) {
      return { kind: "trusted", how: "full", record: r, anchor: { seq: r.seq, drives: r.drives }, pending: [], max_generation };
    }
    const a = r.anchor_seq > 0 ? bySeq.get(r.anchor_seq) : undefined;
    if (a && a.record.incarnation === r.incarnation) {
      const all = new Set([...r.drives, ...a.record.drives]);
      if ([...all].every((d) => holds(d, x) || holds(d, a))) {
        return {
          kind: "trusted",
          how: "split",
          record: r,
          anchor: { seq: a.record.seq, drives: a.record.drives },
          pending: [{ seq: r.seq, drives: r.drives }],
          max_generation,
        };
      }
    }
  }
  const newest = bySeq.get(seqs[0]!)!.record;
  const missing = newest.drives.filter((d) => !byDrive.has(d));
  const why = missing.length
    ? `drive(s) ${missing.join(", ")} listed by record ${newest.seq} are not present`
    : `no record is fully and cleanly present (newest: ${newest.seq} on ${newest.drives.length} drive(s))`;
  return amnesic(why, missing);
}
