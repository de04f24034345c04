/**
 * The write rule (W1-W5 of docs/toma-cluster.md), case by case; the recovery table names these
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

/** A writer after a trusted start on drives `on` (seq 4), its start write (W5) complete. */
function started(...on: number[]): RecordWriter {
  const w = new RecordWriter({ anchor: { seq: 4, drives: on.map(drive) }, pending: [] }, 4);
  const p = planned(w, gens(...on.map((d) => [d, 4] as [number, number])));
  expect(w.completed(p.seq, new Set(p.drives))).toBe("complete");
  return w;
}

describe("record writer", () => {
  test("complete write becomes anchor", () => {
    const w = new RecordWriter(null, 0);
    const p = planned(w, gens([1, 0], [2, 0]));
    expect(p).toEqual({ ok: true, seq: 1, drives: [drive(1), drive(2)], anchor_seq: 0 });
    expect(w.completed(p.seq, new Set(p.drives))).toBe("complete");
    expect(w.anchorDrives()).toEqual([drive(1), drive(2)]);
    expect(planned(w, gens([1, 1], [2, 1])).anchor_seq).toBe(1);
  });

  test("failed write becomes pending; the next must meet the anchor and it", () => {
    const w = started(1);
    const p = planned(w, gens([1, 5], [2, 0]));
    expect(w.completed(p.seq, new Set([drive(2)]))).toBe("pending");
    // d1 failed: a record on d2 alone meets the pending one but not the anchor: refused.
    const q = w.plan(gens([2, 6]));
    expect(q.ok).toBe(false);
    if (!q.ok) expect(q.reason).toMatch(/no live drive holds record 5/);
  });

  test("no record while the anchor's drives are gone: wait (they may come back), never write elsewhere", () => {
    const w = started(1, 2);
    const away = w.plan(gens([3, 0]));
    expect(away.ok === false && away.wait).toBe(true);
    const none = started(1).plan(new Map());
    expect(none.ok === false && none.wait).toBe(true);
    // Back: the next record goes to it (and the new drive).
    expect(w.plan(gens([1, 1], [3, 0])).ok).toBe(true);
  });

  test("start write must reach every drive of the trusted record and its anchor", () => {
    const trusted = { anchor: { seq: 4, drives: [drive(1), drive(2)] }, pending: [{ seq: 5, drives: [drive(2), drive(3)] }] };
    const missing = new RecordWriter(trusted, 5).plan(gens([1, 5], [2, 5]));
    expect(missing.ok === false && missing.reason).toMatch(/cannot reach drive/);
    expect(missing.ok === false && missing.wait).toBe(false);
    const w = new RecordWriter(trusted, 5);
    const p = planned(w, gens([1, 5], [2, 5], [3, 5], [4, 0]));
    // d4 is new: its failure only makes the start write pending; d3's failure makes the TOMA amnesic.
    expect(w.completed(p.seq, new Set([drive(1), drive(2), drive(3)]))).toBe("pending");
    const v = new RecordWriter(trusted, 5);
    const q = planned(v, gens([1, 5], [2, 5], [3, 5]));
    expect(v.completed(q.seq, new Set([drive(1), drive(2)]))).toBe("amnesic");
  });

  test("the anchor's drives may all change, one drive at a time", () => {
    const w = started(1);
    for (const live of [gens([1, 5], [2, 0]), gens([2, 6]), gens([2, 7], [3, 0]), gens([3, 8])]) {
      const p = planned(w, live);
      expect(w.completed(p.seq, new Set(p.drives))).toBe("complete");
    }
    expect(w.anchorDrives()).toEqual([drive(3)]);
  });

  test("seq above a joining drive's generation", () => {
    expect(planned(started(1), gens([1, 5], [2, 900])).seq).toBe(901);
  });

  test("huge generation refused", () => {
    expect(planned(started(1), gens([1, 5], [2, GENERATION_LIMIT])).drives).toEqual([drive(1)]);
  });

  test("writes in a row that never complete end in amnesia, never in forgetting one", () => {
    const w = started(1);
    let refused = false;
    for (let i = 0; i <= MAX_PENDING + 1 && !refused; i++) {
      const p = w.plan(gens([1, 5], [i + 10, 0]));
      if (!p.ok) {
        refused = true;
        expect(p.reason).toMatch(/did not complete/);
      } else w.completed(p.seq, new Set());
    }
    expect(refused).toBe(true);
  });

  test("one write at a time", () => {
    const w = new RecordWriter(null, 0);
    planned(w, gens([1, 0]));
    expect(() => w.plan(gens([1, 0]))).toThrow(/already in flight/);
  });
});
