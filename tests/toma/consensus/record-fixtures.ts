/** Records and slot reads for the hard-state tests: a TOMA "s1" of one cluster, drives d1..d9. */
import { votersConfig } from "../../../src/toma/consensus/config.ts";
import { encodeRecord, type HardStateRecord } from "../../../src/toma/consensus/hard-state-record.ts";
import type { SlotRead } from "../../../src/toma/consensus/record-trust.ts";

export const CLUSTER = "0c0c0c0c-0000-4000-8000-00000000c1c1";
export const OTHER_CLUSTER = "0c0c0c0c-0000-4000-8000-00000000c2c2";
export const INC = "00000000000000a1";

export function drive(n: number): string {
  return `00000000-0000-4000-8000-${n.toString(16).padStart(12, "0")}`;
}

export function record(seq: number, drives: number[], over: Partial<HardStateRecord> = {}): HardStateRecord {
  return {
    kind: "nvmesh.toma.hard-state",
    format: 1,
    cluster_uuid: CLUSTER,
    toma_id: "s1",
    incarnation: INC,
    seq,
    drives: drives.map(drive).sort(),
    anchor_seq: 0,
    term: 3,
    vote: "s2#00000000000000b2",
    commit: 2,
    snapshot: { index: 1, term: 1, config: votersConfig(["s1#00000000000000a1", "s2#00000000000000b2"]), data: new Uint8Array([1, 2]) },
    entries: [{ kind: "normal", term: 2, index: 2, data: new Uint8Array() }],
    ...over,
  };
}

/** A drive whose current slot holds `r` (its seq is the generation). */
export function holding(n: number, r: HardStateRecord | null, other: SlotRead["other"] = "older"): SlotRead {
  return { drive_uuid: drive(n), current: r ? { generation: r.seq, payload: encodeRecord(r) } : { generation: 0, payload: null }, other };
}
