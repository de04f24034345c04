import { describe, expect, test } from "bun:test";
import { extentOwners, placeOnDrive, volumeOffsetOf } from "../../src/engine/layout/inverse.ts";
import { layoutProblem, limitSegments, physicalBytes, plan, planMirror } from "../../src/engine/layout/planner.ts";
import { fromRuns, toRuns } from "../../src/engine/layout/extent-runs.ts";
import type { VolumeLayout } from "../../src/engine/layout/types.ts";

const E = 64; // tiny extents make every boundary reachable in a brute-force check

function layout(raid_level: "concatenated" | "0", columns: number[][], capacity: number, stripe = 16): VolumeLayout {
  return {
    volume_uuid: "v",
    incarnation: 3,
    name: "v",
    capacity_bytes: capacity,
    raid_level,
    columns: columns.map((extents, i) => ({ drive_uuid: `d${i}`, runs: toRuns(extents) })),
    stripe_size_bytes: stripe,
    extent_size_bytes: E,
    block_size: 512,
    mirrors: 1,
  };
}

/** The reference: where volume byte `o` lives, computed the slow, obvious way. */
function whereIs(l: VolumeLayout, o: number): [string, number] {
  let column: number;
  let col_off: number;
  if (l.raid_level === "0") {
    const unit = Math.floor(o / l.stripe_size_bytes);
    column = unit % l.columns.length;
    col_off = Math.floor(unit / l.columns.length) * l.stripe_size_bytes + (o % l.stripe_size_bytes);
  } else {
    column = 0;
    col_off = o;
    while (col_off >= fromRuns(l.columns[column]!.runs).length * E) {
      col_off -= fromRuns(l.columns[column]!.runs).length * E;
      column++;
    }
  }
  const c = l.columns[column]!;
  return [c.drive_uuid, fromRuns(c.runs)[Math.floor(col_off / E)]! * E + (col_off % E)];
}

function checkAgainstReference(l: VolumeLayout, offset: number, length: number): void {
  const segs = plan(l, offset, length);
  let expectAt = 0;
  for (const s of segs) {
    expect(s.request_offset).toBe(expectAt);
    for (let i = 0; i < s.length; i++) {
      expect([s.drive_uuid, s.drive_offset + i]).toEqual(whereIs(l, offset + s.request_offset + i));
    }
    expectAt += s.length;
  }
  expect(expectAt).toBe(length);
}

describe("planner", () => {
  const cases: [string, VolumeLayout][] = [
    ["concatenated over three drives, scattered extents", layout("concatenated", [[3, 1], [0], [5, 6, 2]], 6 * E)],
    ["raid0 width 3, stripe 16", layout("0", [[0, 1], [4, 2], [7, 3]], 6 * E)],
    ["raid0 width 2, stripe = extent", layout("0", [[2, 0, 1], [1, 2, 0]], 6 * E, E)],
    ["raid0 width 1", layout("0", [[4, 0]], 2 * E, 32)],
  ];
  for (const [name, l] of cases) {
    test(`${name}: every range maps like the reference`, () => {
      expect(layoutProblem(l)).toBeNull();
      for (let off = 0; off < l.capacity_bytes; off += 7) {
        for (const len of [1, 5, 16, 17, 63, 64, 65, 130]) {
          if (off + len <= l.capacity_bytes) checkAgainstReference(l, off, len);
        }
      }
      checkAgainstReference(l, 0, l.capacity_bytes);
    });
  }

  test("contiguous extents on a drive merge into one segment", () => {
    const l = layout("concatenated", [[4, 5, 6]], 3 * E);
    expect(plan(l, 10, 3 * E - 20)).toEqual([
      { column: 0, drive_uuid: "d0", drive_offset: 4 * E + 10, length: 3 * E - 20, request_offset: 0 },
    ]);
  });

  test("a range beyond the layout is refused", () => {
    expect(() => plan(layout("concatenated", [[0]], E), 0, E + 1)).toThrow(/beyond/);
  });

  test("layoutProblem catches a stripe that does not divide the extent", () => {
    expect(layoutProblem(layout("0", [[0], [1]], E, 48))).toMatch(/divide/);
    expect(layoutProblem(layout("concatenated", [[0]], 2 * E))).toMatch(/too small/);
  });

  test("limitSegments splits long segments and keeps offsets", () => {
    const l = layout("concatenated", [[0, 1, 2, 3]], 4 * E);
    const segs = limitSegments(plan(l, 0, 4 * E), 100);
    expect(segs.map((s) => s.length)).toEqual([100, 100, 56]);
    expect(segs.map((s) => s.request_offset)).toEqual([0, 100, 200]);
    expect(segs.map((s) => s.drive_offset)).toEqual([0, 100, 200]);
  });
});

describe("the planner read backwards (inverse.ts)", () => {
  const mirrored = (raid_level: "1" | "10", sets: number, extents: number): VolumeLayout => ({
    volume_uuid: "m",
    incarnation: 3,
    name: "m",
    capacity_bytes: sets * extents * E,
    raid_level,
    columns: Array.from({ length: sets * 2 }, (_, i) => ({ drive_uuid: `d${i}`, runs: toRuns(Array.from({ length: extents }, (_, k) => 3 * k + (i % 3))) })),
    stripe_size_bytes: raid_level === "10" ? 16 : 0,
    extent_size_bytes: E,
    block_size: 512,
    mirrors: 2,
  });
  const cases: [string, VolumeLayout][] = [
    ["concatenated", layout("concatenated", [[5, 1], [0, 2, 4]], 5 * E)],
    ["RAID0", layout("0", [[3, 0], [1, 2], [4, 5]], 6 * E)],
    ["RAID1", mirrored("1", 1, 4)],
    ["RAID10", mirrored("10", 2, 4)],
    ["debug-format RAID10 (4 × the capacity)", { ...mirrored("10", 2, 4), capacity_bytes: 2 * E, debug_format: true }],
  ];
  for (const [name, l] of cases) {
    test(`${name}: every byte of every column maps back to the volume byte that planning puts there`, () => {
      const end = physicalBytes(l);
      for (let o = 0; o < end; o++) {
        const legs = l.mirrors > 1
          ? (() => {
              const p = planMirror(l, o, 1)[0]!;
              return p.legs.map((x, leg) => ({ column: p.set * l.mirrors + leg, drive_offset: x.drive_offset }));
            })()
          : plan(l, o, 1).map((s) => ({ column: s.column, drive_offset: s.drive_offset }));
        for (const { column, drive_offset } of legs) {
          const owners = extentOwners([l], l.columns[column]!.drive_uuid);
          expect(placeOnDrive(owners, drive_offset, E)).toEqual({ layout: l, volume_offset: o });
        }
      }
      // Past the end of the volume: nothing.
      const lastCol = l.columns.length - 1;
      const colEnd = fromRuns(l.columns[lastCol]!.runs).length * E;
      const tail = volumeOffsetOf(l, lastCol, colEnd - 1);
      if (tail !== null) expect(tail).toBeLessThan(end);
    });
  }
});
