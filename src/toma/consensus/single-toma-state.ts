/**
 * Taking over a cluster the single TOMA managed (docs/toma-cluster.md, "Taking over a single-TOMA
 * cluster"). The single TOMA keeps the plain cluster state in the drives' metadata slots and, at
 * start, adopts the highest-generation valid state once a majority of the drives that state lists
 * answered (docs/toma.md, "Safety argument"). The founding TOMAs of a cluster apply the same rule
 * to the union of what each of them reads on its own drives:
 *
 * - each founder reads its own drives once, at start, and reports what it saw (`SingleTomaReport`:
 *   the drives it heard and the distinct states they hold) in its identity answer; the report is
 *   fixed for the life of the process, so a node id always stands for one report;
 * - the bootstrap decision, taken once every peer answered, merges the reports and picks the state
 *   the single TOMA would have picked had it seen every drive: `decideTakeover`. Every founder
 *   computes it from the same (node id, report) pairs, so every founder adopts the same bytes.
 *
 * Pure: no I/O, no clock.
 */
import * as v from "valibot";
import { type ClusterState, decodeState, encodeState, majority } from "../cluster-state.ts";
import { decodeRecord, type HardStateRecord } from "./hard-state-record.ts";
import { MAX_STATE_BYTES } from "./proposal.ts";
import { UuidSchema } from "./types.ts";

/** Distinct states one TOMA may report (one per own drive at most). */
const MAX_STATES = 64;

export const SingleTomaReportSchema = v.strictObject({
  /** Own drives whose current slot was read and is blank or a valid single-TOMA state. */
  heard: v.pipe(v.array(UuidSchema), v.maxLength(1024)),
  /** Each distinct single-TOMA state seen: its canonical CBOR in base64, and the drives holding it. */
  states: v.pipe(
    v.array(v.strictObject({ state: v.pipe(v.string(), v.maxLength(2 << 20), v.regex(/^[A-Za-z0-9+/]*={0,2}$/)), drives: v.pipe(v.array(UuidSchema), v.minLength(1), v.maxLength(1024)) })),
    v.maxLength(MAX_STATES),
  ),
});
export type SingleTomaReport = v.InferOutput<typeof SingleTomaReportSchema>;

/** A current slot as read at start: its generation and payload (null: nothing written). */
export interface CurrentSlot {
  drive_uuid: string;
  generation: number;
  payload: Uint8Array | null;
}

/** What one own drive's current slot holds, for the takeover. */
export type SlotKind =
  | { kind: "blank" }
  | { kind: "record"; record: HardStateRecord }
  | { kind: "single_toma"; state: ClusterState }
  /** Neither a record nor a valid single-TOMA state (say why): never counted, never overwritten. */
  | { kind: "unknown"; error: string };

export function classifySlot(s: CurrentSlot): SlotKind {
  if (s.payload === null) return s.generation === 0 ? { kind: "blank" } : { kind: "unknown", error: `generation ${s.generation} without a payload` };
  const r = decodeRecord(s.payload, { slot_generation: s.generation, drive_uuid: s.drive_uuid });
  if (r.kind === "corrupt") return { kind: "unknown", error: r.error };
  if (r.kind !== "other") return { kind: "record", record: r.record };
  try {
    const state = decodeState(s.payload);
    // As the single TOMA checks: a state not written at its own generation was not written there.
    if (state.generation !== s.generation) return { kind: "unknown", error: `state of generation ${state.generation} in a slot of generation ${s.generation}` };
    return { kind: "single_toma", state };
  } catch (e) {
    return { kind: "unknown", error: (e as Error).message };
  }
}

/**
 * The report of one TOMA from its own drives' current slots (no states: nothing to take over
 * from its drives).
 */
export function reportOf(slots: readonly CurrentSlot[]): SingleTomaReport {
  const heard: string[] = [];
  const states = new Map<string, string[]>();
  for (const s of slots) {
    const k = classifySlot(s);
    if (k.kind === "blank") heard.push(s.drive_uuid);
    if (k.kind !== "single_toma") continue;
    heard.push(s.drive_uuid);
    const key = Buffer.from(s.payload!).toString("base64");
    states.set(key, [...(states.get(key) ?? []), s.drive_uuid]);
  }
  return {
    heard: heard.sort(),
    states: [...states].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([state, drives]) => ({ state, drives: drives.sort() })),
  };
}

export type TakeoverDecision =
  /** No founder's drives hold a single-TOMA state: a new cluster from the empty state. */
  | { kind: "none" }
  /** Found the cluster on this state: its uuid, its bytes, and where the first snapshot goes. */
  | { kind: "adopt"; state: ClusterState; data: Uint8Array; snapshot_index: number; snapshot_term: number; heard: number; of: number }
  | { kind: "wait"; reason: string };

/**
 * The single TOMA's recovery rule over every founder's report: the highest-generation state; among
 * states of one generation (a partial write the single TOMA never retracted) the one on the most
 * drives, then the smallest bytes, so that every founder picks the same; adopted only once the
 * drives heard, over all founders, are a majority of the drives that state lists.
 *
 * The first snapshot goes at term `state.term + 1` and index `state.generation + 1`: the targets
 * have seen control-plane versions up to fenceVersion(state.term, state.generation) and refuse
 * anything lower, and every later entry is then above both.
 */
export function decideTakeover(reports: readonly SingleTomaReport[]): TakeoverDecision {
  const heard = new Set(reports.flatMap((r) => r.heard));
  const holders = new Map<string, Set<string>>();
  for (const r of reports) for (const s of r.states) holders.set(s.state, new Set([...(holders.get(s.state) ?? []), ...s.drives]));
  if (holders.size === 0) return { kind: "none" };
  const states: { b64: string; data: Uint8Array; drives: Set<string>; state: ClusterState }[] = [];
  for (const [b64, drives] of holders) {
    const data = new Uint8Array(Buffer.from(b64, "base64"));
    try {
      states.push({ b64, data, drives, state: decodeState(data) });
    } catch (e) {
      // Reports are validated as JSON only; a state that does not decode was not read from a drive.
      return { kind: "wait", reason: `a TOMA reported a single-TOMA state that does not decode (${(e as Error).message})` };
    }
  }
  const clusters = new Set(states.map((s) => s.state.cluster_uuid));
  if (clusters.size > 1) {
    return { kind: "wait", reason: `the drives hold the single-TOMA states of several clusters (${[...clusters].sort().join(", ")}); start the TOMAs of one cluster only` };
  }
  states.sort((a, b) => b.state.generation - a.state.generation || b.drives.size - a.drives.size || (a.b64 < b.b64 ? -1 : a.b64 > b.b64 ? 1 : 0));
  const best = states[0]!;
  const list = best.state.drives.map((d) => d.drive_uuid);
  const n = list.filter((d) => heard.has(d)).length;
  const need = majority(list.length);
  if (list.length === 0 || n < need) {
    const missing = list.filter((d) => !heard.has(d));
    return {
      kind: "wait",
      reason:
        `the single-TOMA cluster state (cluster ${best.state.cluster_uuid}, generation ${best.state.generation}) lists ${list.length} drive(s); ` +
        `the TOMAs read ${n} of them, ${need} needed before it can be taken over (not read: ${missing.join(", ") || "none"}). ` +
        "Bring up the targets serving them and restart the TOMAs of their servers",
    };
  }
  // Taken over in the current encoding (extents as runs), whichever the single TOMA wrote: every
  // founder re-encodes the same decoded state to the same bytes.
  const data = encodeState(best.state);
  if (data.length > MAX_STATE_BYTES) {
    return {
      kind: "wait",
      reason:
        `the single-TOMA cluster state takes ${data.length} bytes, above the ${MAX_STATE_BYTES} a TOMA cluster's state may take (it must fit, with the log tail, a 1 MiB metadata slot): ` +
        "not taken over. Run the single TOMA again and delete volumes (or move them to drives with a larger --extent-size) first",
    };
  }
  return { kind: "adopt", state: best.state, data, snapshot_index: best.state.generation + 1, snapshot_term: (best.state.term ?? 0) + 1, heard: n, of: list.length };
}
