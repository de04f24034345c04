/**
 * The leg comparison's decision tables (src/debugfmt/legs.ts), one test per row, and the write
 * order rebuilt from histories (timeline.ts).
 */
import { describe, expect, test } from "bun:test";
import { compareLegs } from "../../src/debugfmt/legs.ts";
import { decodeSector, type DebugSector, type HistoryEntry, SECTOR_BYTES, type SectorFields } from "../../src/debugfmt/sector.ts";
import { mergeTimeline, writeText } from "../../src/debugfmt/timeline.ts";
import { blockAt, stepsWriting } from "../../src/debugfmt/pattern.ts";
import { bytes, sector, SPEC, verifyWrite } from "./fixtures.ts";

function dec(b: Uint8Array): DebugSector {
  const d = decodeSector(b);
  if (!d.ok) throw new Error(`${d.class}: ${d.reason}`);
  return d.fields;
}

const rec = (over: Partial<SectorFields>, seed = 1) => {
  const data = bytes(512, seed);
  return dec(sector(over, data));
};
/** A remembered history entry naming the write s. */
const entryOf = (s: DebugSector): HistoryEntry => ({
  kind: "remembered",
  client_id: s.client_id,
  generation: s.generation,
  seq: s.seq,
  step: 0,
  data_crc: s.data_crc,
  topo_state: s.topo_state,
  legs_mask: s.legs_mask,
  op: s.op,
});

const old0 = rec({ seq: 10, leg_index: 0 }, 1);
const old1 = rec({ seq: 10, leg_index: 1 }, 1);
const newer = (over: Partial<SectorFields>) => rec({ seq: 11, history: [entryOf(old0)], ...over }, 2);

describe("which copy is newer, and what the difference means", () => {
  test("same write on both legs", () => {
    expect(compareLegs({ sector: old0, leg: 0 }, { sector: old1, leg: 1 })).toMatchObject({ class: "same", newer: null });
  });

  test("one client, one seq, different data on the legs: that client is named", () => {
    const other = rec({ seq: 10, leg_index: 1 }, 99);
    const v = compareLegs({ sector: old0, leg: 0 }, { sector: other, leg: 1 });
    expect(v).toMatchObject({ class: "legs_differ", newer: null, culprit: { client_id: 7, client_name: "host-a" } });
    expect(v.reason).toMatch(/wrote different data to the legs under one seq 10 \(data checksum 0x[0-9a-f]{8} on leg 0, 0x[0-9a-f]{8} on leg 1\)/);
  });

  test("both legs empty", () => {
    expect(compareLegs({ sector: null, leg: 0 }, { sector: null, leg: 1 }).class).toBe("same");
  });

  test("write hole: the newer write targeted the other leg, which holds the older one", () => {
    const v = compareLegs({ sector: newer({}), leg: 0 }, { sector: old1, leg: 1 });
    expect(v).toMatchObject({ class: "write_hole", newer: "a", culprit: { client_id: 7, client_name: "host-a" } });
    expect(v.reason).toMatch(/targeted legs \{0,1\} but leg 1 still holds the older write \(client 7 \(host-a\) seq 10/);
  });

  test("write hole against an empty leg (the leg number comes from a two-leg mirror)", () => {
    const v = compareLegs({ sector: null, leg: null }, { sector: newer({ leg_index: 1 }), leg: null });
    expect(v).toMatchObject({ class: "write_hole", newer: "b" });
    expect(v.reason).toMatch(/leg 0 is empty/);
  });

  test("an empty leg of a 3-leg mirror whose number nobody knows: legs differ, no guess", () => {
    const v = compareLegs({ sector: newer({ leg_count: 3, legs_mask: 0b111 }), leg: 0 }, { sector: null, leg: null });
    expect(v).toMatchObject({ class: "legs_differ", culprit: null });
    expect(v.reason).toMatch(/leg unknown/);
  });

  test("skipped leg: the newer write left the other leg out in state normal", () => {
    const v = compareLegs({ sector: old1, leg: 1 }, { sector: newer({ legs_mask: 0b01 }), leg: 0 });
    expect(v).toMatchObject({ class: "skipped_leg", newer: "b", culprit: { client_id: 7 } });
    expect(v.reason).toMatch(/skipped leg 1: seq 11 targeted only legs \{0\} in topology state normal \(generation 3\)/);
  });

  test("left out while degraded: legs differ, nobody's fault (awaiting rebuild)", () => {
    const v = compareLegs({ sector: newer({ legs_mask: 0b01, topo_state: "degraded" }), leg: 0 }, { sector: old1, leg: 1 });
    expect(v).toMatchObject({ class: "legs_differ", newer: "a", culprit: null });
    expect(v.reason).toMatch(/awaits rebuild/);
  });

  test("stale generation: the newer write (by history) carries an older generation", () => {
    const v = compareLegs({ sector: newer({ generation: 2, client_id: 8, client_name: "late" }), leg: 0 }, { sector: old1, leg: 1 });
    expect(v).toMatchObject({ class: "stale_generation", newer: "a", culprit: { client_id: 8, client_name: "late" } });
    expect(v.reason).toMatch(/with topology generation 2 while the other leg's record shows 3/);
  });

  test("diverged with different generations: the lower generation's writer", () => {
    const a = rec({ seq: 20, generation: 6, client_id: 1, client_name: "x" }, 5);
    const b = rec({ seq: 30, generation: 4, client_id: 2, client_name: "y", leg_index: 1 }, 6);
    const v = compareLegs({ sector: a, leg: 0 }, { sector: b, leg: 1 });
    expect(v).toMatchObject({ class: "stale_generation", newer: "a", culprit: { client_id: 2 } });
    expect(v.reason).toMatch(/^diverged/);
  });

  test("diverged, same generation, different clients: undecided, both named", () => {
    const a = rec({ seq: 20, client_id: 1, client_name: "x" }, 5);
    const b = rec({ seq: 30, client_id: 2, client_name: "y", leg_index: 1 }, 6);
    const v = compareLegs({ sector: a, leg: 0 }, { sector: b, leg: 1 });
    expect(v).toMatchObject({ class: "legs_differ", newer: null, culprit: null });
    expect(v.reason).toMatch(/leg 0 has client 1 \(x\) seq 20.*leg 1 has client 2 \(y\) seq 30/);
  });

  test("diverged, same client: the higher seq is newer, then the mask rules apply", () => {
    const a = rec({ seq: 20 }, 5);
    const b = rec({ seq: 30, leg_index: 1 }, 6);
    expect(compareLegs({ sector: a, leg: 0 }, { sector: b, leg: 1 })).toMatchObject({ class: "write_hole", newer: "b" });
  });

  test("diverged verify data of one worker: the higher step is newer", () => {
    const w = (step: number, leg: number) => dec(verifyWrite({ worker: 1, step, leg, first_lba: 0, history_depth: 0 }).bytes.subarray(0, SECTOR_BYTES));
    const v = compareLegs({ sector: w(40, 0), leg: 0 }, { sector: w(9, 1), leg: 1 });
    expect(v).toMatchObject({ class: "write_hole", newer: "a" });
    expect(v.reason).toMatch(/^diverged/);
  });

  test("both copies of a two-leg mirror claim leg 0: one is a rebuild's copy, the other side is leg 1", () => {
    // Leg 1 was rebuilt from leg 0 (old0 copied raw, so it still says leg 0), then the newer
    // write reached leg 0 only.
    const hole = compareLegs({ sector: newer({}), leg: null }, { sector: old0, leg: null });
    expect(hole).toMatchObject({ class: "write_hole", newer: "a", culprit: { client_id: 7 } });
    expect(hole.reason).toMatch(/one copy was made by a rebuild \(both say leg 0\): write hole: .* but leg 1 still holds/);
    const skipped = compareLegs({ sector: old0, leg: null }, { sector: newer({ legs_mask: 0b01 }), leg: null });
    expect(skipped).toMatchObject({ class: "skipped_leg", newer: "b", culprit: { client_id: 7 } });
    expect(skipped.reason).toMatch(/skipped leg 1/);
  });

  test("both copies of a three-leg mirror claim the same leg: no guess which leg the other is", () => {
    const a = rec({ seq: 10, leg_count: 3, legs_mask: 0b111 }, 1);
    const b = rec({ seq: 11, leg_count: 3, legs_mask: 0b111 }, 2);
    const v = compareLegs({ sector: a, leg: 0 }, { sector: b, leg: 1 });
    expect(v).toMatchObject({ class: "legs_differ", culprit: null });
    expect(v.reason).toMatch(/both copies say they are leg 0 .*with 3 legs/);
  });
});

describe("the order of writes", () => {
  test("two legs' chains merge oldest first; each write says where it is current and who knows it", () => {
    const h1 = rec({ seq: 5, leg_index: 1 }, 9);
    const mid1 = rec({ seq: 10, leg_index: 1, history: [entryOf(h1)] }, 1);
    const top0 = rec({ seq: 11, history: [entryOf(mid1), entryOf(h1)] }, 2);
    const t = mergeTimeline([
      { name: "a", sector: top0 },
      { name: "b", sector: mid1 },
    ]);
    expect(t.map((e) => e.write.seq)).toEqual([5, 10, 11]);
    expect(t.map((e) => e.current_on)).toEqual([[], ["b"], ["a"]]);
    expect(t.map((e) => e.known_by.sort())).toEqual([["a", "b"], ["a", "b"], ["a"]]);
    expect(t[2]!.write.source).toBe("header");
    expect(writeText(t[2]!.write)).toBe("client 7 (host-a) seq 11 generation 3");
  });

  test("predicted entries are named by worker and step, and an exact record replaces them", () => {
    const block = blockAt(SPEC, { worker: 2, step: 0 });
    const [s3, s2, s1] = stepsWriting(SPEC, block, { before: 10 * SPEC.blocks, limit: 3 });
    const w = (step: number, leg: number) => dec(verifyWrite({ worker: 2, step: step!, leg, first_lba: block * 2 }).bytes.subarray(0, SECTOR_BYTES));
    const newest = w(s3!, 0);
    expect(newest.history.map((h) => h.step)).toEqual(stepsWriting(SPEC, block, { before: s3!, limit: 4 }));
    const t = mergeTimeline([
      { name: "a", sector: newest },
      { name: "b", sector: w(s2!, 1) },
    ]);
    const tail = t.slice(-3);
    expect(tail.map((e) => e.write.step)).toEqual([s1!, s2!, s3!]);
    expect(writeText(tail[0]!.write)).toBe(`worker 2 step ${s1} (predicted)`);
    // b's header is the exact record of step s2: it replaced a's predicted entry for that step.
    expect(tail[1]!.write.exact).toBe(true);
    expect(tail[1]!.current_on).toEqual(["b"]);
    expect(tail[1]!.known_by.sort()).toEqual(["a", "b"]);
  });

  test("a predicted entry without pattern coordinates is shown with its client id", () => {
    const t = mergeTimeline([{ name: "x", sector: rec({ history: [{ kind: "predicted", client_id: 1, generation: 0, seq: 0, step: 4, data_crc: 1, topo_state: "none", legs_mask: 0, op: "write" }] }) }]);
    expect(writeText(t[0]!.write)).toBe("client 1 step 4 (predicted)");
  });
});
