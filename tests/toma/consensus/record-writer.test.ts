/**
 * The write rule (W1-W4 of docs/toma-cluster.md), case by case; the recovery table names these
 * tests. The end-to-end check of the rule is record-model.test.ts.
 */
import { describe, expect, test } from "bun:test";
import { GENERATION_LIMIT, MAX_PENDING, RecordWriter } from "../../../src/toma/consensus/record-writer.ts";
import { drive } from "./record-fixtures.ts";

const gens = (...pairs: [number, number][]) => new Map(pairs.map(([d, g]) => [drive(d), g]));

function planned(w: RecordWriter, live: Map<string, number>) {
  const p = w.plan(live);
  if (!p.ok) throw new Error(p.reason);
  return p;
}

describe("record writer", () => {
  test("complete write becomes anchor", () => {
    const w = new RecordWriter(null, 0);
    const p = planned(w, gens([1, 0], [2, 0]));
    expect(p).toEqual({ ok: true, seq: 1, drives: [drive(1), drive(2)], anchor_seq: 0 });
    expect(w.completed(p.seq, new Set(p.drives))).toBe(true);
    expect(w.anchorDrives()).toEqual([drive(1), drive(2)]);
    expect(planned(w, gens([1, 1], [2, 1])).anchor_seq).toBe(1);
  });

  test("failed write becomes pending; the next must meet the anchor and it", () => {
    const w = new RecordWriter({ anchor: { seq: 4, drives: [drive(1)] }, pending: [] }, 4);
    const p = planned(w, gens([1, 4], [2, 0]));
    expect(w.completed(p.seq, new Set([drive(2)]))).toBe(false);
    // d1 failed: a record on d2 alone meets the pending one but not the anchor: refused.
    const q = w.plan(gens([2, 5]));
    expect(q.ok).toBe(false);
    if (!q.ok) expect(q.reason).toMatch(/no live drive holds record 4/);
  });

  test("amnesic when the anchor's drives are gone", () => {
    const w = new RecordWriter({ anchor: { seq: 4, drives: [drive(1), drive(2)] }, pending: [] }, 4);
    expect(w.plan(gens([3, 0])).ok).toBe(false);
    expect(new RecordWriter({ anchor: { seq: 4, drives: [drive(1)] }, pending: [] }, 4).plan(new Map()).ok).toBe(false);
  });

  test("the anchor's drives may all change, one drive at a time", () => {
    const w = new RecordWriter({ anchor: { seq: 4, drives: [drive(1)] }, pending: [] }, 4);
    for (const live of [gens([1, 4], [2, 0]), gens([2, 5]), gens([2, 6], [3, 0]), gens([3, 7])]) {
      const p = planned(w, live);
      expect(w.completed(p.seq, new Set(p.drives))).toBe(true);
    }
    expect(w.anchorDrives()).toEqual([drive(3)]);
  });

  test("seq above a joining drive's generation", () => {
    const w = new RecordWriter({ anchor: { seq: 4, drives: [drive(1)] }, pending: [] }, 4);
    expect(planned(w, gens([1, 4], [2, 900])).seq).toBe(901);
  });

  test("huge generation refused", () => {
    const w = new RecordWriter({ anchor: { seq: 4, drives: [drive(1)] }, pending: [] }, 4);
    expect(planned(w, gens([1, 4], [2, GENERATION_LIMIT])).drives).toEqual([drive(1)]);
  });

  test("writes in a row that never complete end in amnesia, never in forgetting one", () => {
    const w = new RecordWriter({ anchor: { seq: 1, drives: [drive(1)] }, pending: [] }, 1);
    let last = true;
    for (let i = 0; i <= MAX_PENDING + 1; i++) {
      const live = gens([1, 1], [i + 10, 0]);
      const p = w.plan(live);
      if (!p.ok) {
        last = false;
        expect(p.reason).toMatch(/did not complete/);
        break;
      }
      w.completed(p.seq, new Set());
    }
    expect(last).toBe(false);
  });

  test("one write at a time", () => {
    const w = new RecordWriter(null, 0);
    planned(w, gens([1, 0]));
    expect(() => w.plan(gens([1, 0]))).toThrow(/already in flight/);
  });
});
