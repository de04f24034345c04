/**
 * The trust rule, case by case: each test is a row of the recovery table in docs/toma-cluster.md
 * (same names). The theorem behind the rule is tried under random churn in record-model.test.ts.
 */
import { describe, expect, test } from "bun:test";
import { encode } from "cbor-x";
import { decideTrust, type SlotRead, type TrustDecision, viewSlot } from "../../../src/toma/consensus/record-trust.ts";
import { CLUSTER, drive, holding, OTHER_CLUSTER, record } from "./record-fixtures.ts";

function decide(reads: SlotRead[], cluster: string | null = CLUSTER): TrustDecision {
  return decideTrust(
    reads.map((r) => viewSlot(r, "s1")),
    { cluster_uuid: cluster },
  );
}

function trusted(d: TrustDecision) {
  expect(d.kind).toBe("trusted");
  if (d.kind !== "trusted") throw new Error(d.reason);
  return d;
}

describe("trust rule (recovery table)", () => {
  test("blank drives: amnesic", () => {
    const d = decide([holding(1, null), holding(2, null)]);
    expect(d.kind === "amnesic" && d.reason).toMatch(/no hard-state record/);
  });

  test("all drives hold the record", () => {
    const r = record(9, [1, 2]);
    const d = trusted(decide([holding(1, r), holding(2, r)]));
    expect(d.how).toBe("full");
    expect(d.record.seq).toBe(9);
    expect(d.anchor).toEqual({ seq: 9, drives: [drive(1), drive(2)] });
    expect(d.pending).toEqual([]);
    expect(d.max_generation).toBe(9);
  });

  test("crash mid-write: split trusted", () => {
    const k = record(9, [1, 2]);
    const n = record(10, [1, 2], { anchor_seq: 9, term: 4 });
    const d = trusted(decide([holding(1, n), holding(2, k, "torn")]));
    expect(d.how).toBe("split");
    expect(d.record.seq).toBe(10);
    expect(d.anchor.seq).toBe(9);
    expect(d.pending).toEqual([{ seq: 10, drives: [drive(1), drive(2)] }]);
  });

  test("split: a drive joining in the interrupted write", () => {
    const k = record(9, [1]);
    const n = record(10, [1, 2], { anchor_seq: 9 });
    // d2 got N, d1 still holds K: K is fully present too, but N is newer and the split covers both.
    const d = trusted(decide([holding(1, k), holding(2, n)]));
    expect(d.how).toBe("split");
    expect(d.record.seq).toBe(10);
  });

  test("older full record trusted when newest is partial", () => {
    const old = record(5, [3]);
    const newest = record(10, [1, 2], { anchor_seq: 8 });
    const d = trusted(decide([holding(1, newest), holding(2, null), holding(3, old)]));
    expect(d.record.seq).toBe(5);
  });

  test("listed drive absent: amnesic", () => {
    const r = record(9, [1, 2]);
    const d = decide([holding(1, r)]);
    expect(d.kind).toBe("amnesic");
    if (d.kind === "amnesic") {
      expect(d.missing).toEqual([drive(2)]);
      expect(d.reason).toMatch(/not present/);
    }
  });

  test("drive overwritten by another server", () => {
    const r = record(9, [1, 2]);
    const foreign = record(40, [2], { toma_id: "s2" });
    const d = decide([holding(1, r), holding(2, foreign)]);
    expect(d.kind).toBe("amnesic");
    expect(d.max_generation).toBe(40);
  });

  test("unreadable other slot: not trusted", () => {
    const r = record(9, [1, 2]);
    expect(decide([holding(1, r), holding(2, r, "unreadable")]).kind).toBe("amnesic");
  });

  test("torn other slot: still clean", () => {
    const r = record(9, [1, 2]);
    expect(trusted(decide([holding(1, r, "torn"), holding(2, r, "torn")])).how).toBe("full");
  });

  test("corrupt current slot", () => {
    const r = record(9, [1, 2]);
    const bad: SlotRead = { drive_uuid: drive(2), current: { generation: 9, payload: encode({ kind: "nvmesh.toma.hard-state", seq: "x" }) }, other: "older" };
    const view = viewSlot(bad, "s1");
    expect(view.corrupt).toBe(true);
    expect(view.note).toMatch(/corrupt hard-state record/);
    expect(decide([holding(1, r), bad]).kind).toBe("amnesic");
    const unreadable: SlotRead = { drive_uuid: drive(2), current: { unreadable: "EIO" }, other: "older" };
    expect(decide([holding(1, r), unreadable]).kind).toBe("amnesic");
  });

  test("seq collision: amnesic", () => {
    const a = record(9, [1]);
    const b = record(9, [2], { term: 5 });
    const d = decide([holding(1, a), holding(2, b)]);
    expect(d.kind === "amnesic" && d.reason).toMatch(/two different records with seq 9/);
  });

  test("older incarnation resurrected", () => {
    const mine_now = record(5, [1], { incarnation: "00000000000000a2" });
    const older_life = record(30, [2], { incarnation: "00000000000000a1" });
    const d = trusted(decide([holding(1, mine_now), holding(2, older_life)]));
    expect(d.record.incarnation).toBe("00000000000000a1");
  });

  test("foreign drive ignored", () => {
    const r = record(9, [1]);
    const other_toma = record(50, [2], { toma_id: "s2" });
    const other_cluster = record(60, [3], { cluster_uuid: OTHER_CLUSTER });
    const d = trusted(decide([holding(1, r), holding(2, other_toma), holding(3, other_cluster)]));
    expect(d.record.seq).toBe(9);
    expect(d.max_generation).toBe(60);
  });

  test("own records of two clusters, none configured: amnesic until one is chosen", () => {
    const a = record(9, [1]);
    const b = record(60, [3], { cluster_uuid: OTHER_CLUSTER });
    expect(decide([holding(1, a), holding(3, b)], null).kind).toBe("amnesic");
    expect(trusted(decide([holding(1, a), holding(3, b)], CLUSTER)).record.seq).toBe(9);
  });

  test("split needs every drive of both records: one missing, no trust", () => {
    const k = record(9, [1, 2]);
    const n = record(10, [1, 2, 3], { anchor_seq: 9 });
    expect(decide([holding(1, n), holding(2, k)]).kind).toBe("amnesic");
  });
});
