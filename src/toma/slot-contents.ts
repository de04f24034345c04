/**
 * What a drive's metadata slot holds, for tools that read drives offline (`nvmesh drive
 * metadata`, `forensics`): nothing, the single TOMA's cluster state, or a TOMA cluster member's
 * hard-state record (docs/toma-cluster.md, "The record"). A record holds the state only as a
 * snapshot plus log entries, so the state it stands for is computed here the way every TOMA
 * computes it: the snapshot's state, then each committed normal entry through applyProposal.
 * Entries after the commit index are not applied: they may never be committed.
 * Pure: the caller reads the slot.
 */
import type { ClusterState } from "./cluster-state.ts";
import { decodeState } from "./cluster-state.ts";
import { configAt } from "./consensus/config.ts";
import type { HardStateRecord } from "./consensus/hard-state-record.ts";
import { applyProposal } from "./consensus/proposal.ts";
import { classifySlot } from "./consensus/single-toma-state.ts";
import type { Config } from "./consensus/types.ts";

export interface RecordSummary {
  cluster_uuid: string;
  toma_id: string;
  incarnation: string;
  seq: number;
  anchor_seq: number;
  drives: string[];
  term: number;
  vote: string | null;
  commit: number;
  snapshot: { index: number; term: number };
  /** Log entries after the snapshot, and how many of them are committed. */
  entries: number;
  committed_entries: number;
  /** The configuration as of the commit index. */
  config: Config;
}

export type SlotContents =
  | { kind: "blank" }
  | { kind: "single_toma"; state: ClusterState }
  | {
      kind: "hard_state";
      record: RecordSummary;
      /**
       * The cluster state at the commit index; null for a member that had not received the
       * cluster's snapshot yet (it joined and was never sent one).
       */
      state: ClusterState | null;
      /** Committed entries the state machine refused (every TOMA refused them too). */
      refused: { index: number; error: string }[];
    }
  | { kind: "unknown"; error: string };

export function slotContents(slot: { drive_uuid: string; generation: number; payload: Uint8Array | null }): SlotContents {
  const k = classifySlot(slot);
  switch (k.kind) {
    case "blank":
    case "unknown":
      return k;
    case "single_toma":
      return { kind: "single_toma", state: k.state };
    case "record":
      return recordContents(k.record);
  }
}

/** The state a record stands for at its commit index, and what it says about its TOMA. */
export function recordContents(r: HardStateRecord): SlotContents {
  const committed = r.entries.filter((e) => e.index <= r.commit);
  const record: RecordSummary = {
    cluster_uuid: r.cluster_uuid,
    toma_id: r.toma_id,
    incarnation: r.incarnation,
    seq: r.seq,
    anchor_seq: r.anchor_seq,
    drives: r.drives,
    term: r.term,
    vote: r.vote,
    commit: r.commit,
    snapshot: { index: r.snapshot.index, term: r.snapshot.term },
    entries: r.entries.length,
    committed_entries: committed.length,
    config: configAt(r.snapshot, r.entries, r.commit),
  };
  if (r.snapshot.index === 0) return { kind: "hard_state", record, state: null, refused: [] };
  let state: ClusterState;
  try {
    state = decodeState(r.snapshot.data);
  } catch (e) {
    return { kind: "unknown", error: `hard-state record of TOMA ${r.toma_id} (seq ${r.seq}) whose snapshot holds no valid cluster state: ${(e as Error).message}` };
  }
  const refused: { index: number; error: string }[] = [];
  for (const e of committed) {
    if (e.kind !== "normal") continue;
    // A record a TOMA wrote never has this (its state is at or below the snapshot index); a
    // damaged or forged one may, and a tool must say so rather than fail an assertion.
    if (e.index <= state.generation) {
      return { kind: "unknown", error: `hard-state record of TOMA ${r.toma_id} (seq ${r.seq}): entry ${e.index} at or below its state's generation ${state.generation}` };
    }
    const a = applyProposal(state, e);
    if (a.kind === "applied") state = a.state;
    else if (a.kind === "refused") refused.push({ index: e.index, error: a.error });
  }
  return { kind: "hard_state", record, state, refused };
}

/** The cluster state a slot shows, if any: what a tool looking for volumes' layouts uses. */
export function stateOf(c: SlotContents): ClusterState | null {
  return c.kind === "single_toma" || c.kind === "hard_state" ? c.state : null;
}

/** One line saying what the slot holds, for people. */
export function describeContents(c: SlotContents): string {
  switch (c.kind) {
    case "blank":
      return "nothing (the slots were never written)";
    case "unknown":
      return `nothing nvmesh can read: ${c.error}`;
    case "single_toma":
      return `the single-TOMA cluster state: cluster ${c.state.cluster_uuid}, generation ${c.state.generation}, term ${c.state.term ?? 0}`;
    case "hard_state": {
      const r = c.record;
      return (
        `the hard-state record of TOMA ${r.toma_id} (incarnation ${r.incarnation}) in TOMA cluster ${r.cluster_uuid}: ` +
        `seq ${r.seq}, term ${r.term}, commit ${r.commit}` +
        (c.state ? `, cluster state generation ${c.state.generation} at the commit` : ", no cluster state yet (a member never sent the snapshot)")
      );
    }
  }
}
