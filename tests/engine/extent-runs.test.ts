/**
 * A layout's columns as runs (src/engine/layout/extent-runs.ts): mapping through the runs' prefix
 * sums gives exactly what indexing the expanded extent list gives, for random layouts of every
 * RAID level; malformed runs are refused before anything is indexed.
 */
import { describe, expect, test } from "bun:test";
import { fromRuns, MAX_DECODED_EXTENTS, RunIndex, runsCount, toRuns } from "../../src/engine/layout/extent-runs.ts";
import { layoutProblem, plan, planMirror } from "../../src/engine/layout/planner.ts";
import type { RaidLevel, VolumeLayout } from "../../src/engine/layout/types.ts";

/** A seeded generator (mulberry32): failures reproduce. */
function rng(seed: number): (n: number) => number {
  let a = seed >>> 0;
  return (n) => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return Math.floor((((t ^ (t >>> 14)) >>> 0) / 4294967296) * n);
  };
}

/** `n` distinct extents in a random order made of random ascending stretches. */
function randomExtents(r: (n: number) => number, n: number): number[] {
  const pool = Array.from({ length: n * 3 }, (_, i) => i);
  const out: number[] = [];
  while (out.length < n) {
    const i = r(pool.length);
    const len = Math.min(n - out.length, 1 + r(6));
    // An ascending stretch from pool[i] where the pool still has it.
    let e = pool[i]!;
    for (let k = 0; k < len && pool.includes(e); k++, e++) {
      out.push(e);
      pool.splice(pool.indexOf(e), 1);
    }
  }
  return out;
}

const E = 32;
const S = 8;

function randomLayout(r: (n: number) => number): { layout: VolumeLayout; expanded: number[][] } {
  const level = (["concatenated", "0", "1", "10"] as RaidLevel[])[r(4)]!;
  const mirrors = level === "1" || level === "10" ? 2 + r(2) : 1;
  const lanes = level === "1" ? 1 : 1 + r(3);
  const width = lanes * mirrors;
  const per = 1 + r(12);
  const expanded = Array.from({ length: width }, () => randomExtents(r, level === "concatenated" ? 1 + r(12) : per));
  const total = expanded.reduce((n, c) => n + c.length, 0);
  const capacity = level === "concatenated" ? total * E - r(E) : lanes * per * E - r(S);
  const layout: VolumeLayout = {
    volume_uuid: "v",
    incarnation: 1,
    name: "v",
    capacity_bytes: capacity,
    raid_level: level,
    columns: expanded.map((x, i) => ({ drive_uuid: `d${i}`, runs: toRuns(x) })),
    stripe_size_bytes: S,
    extent_size_bytes: E,
    block_size: 512,
    mirrors,
  };
  return { layout, expanded };
}

/** Where each leg keeps volume byte `o`, from the expanded extent lists: [column, drive offset]. */
function reference(l: VolumeLayout, expanded: number[][], o: number): [number, number][] {
  const at = (column: number, col_off: number): [number, number] => [column, expanded[column]![Math.floor(col_off / E)]! * E + (col_off % E)];
  if (l.raid_level === "concatenated") {
    let column = 0;
    let off = o;
    while (off >= expanded[column]!.length * E) off -= expanded[column++]!.length * E;
    return [at(column, off)];
  }
  const m = l.mirrors;
  const lanes = l.columns.length / m;
  let lane = 0;
  let off = o;
  if (l.raid_level !== "1" && lanes > 1) {
    const unit = Math.floor(o / S);
    lane = unit % lanes;
    off = Math.floor(unit / lanes) * S + (o % S);
  }
  return Array.from({ length: m }, (_, k) => at(lane * m + k, off));
}

/** The same, from the planner over runs. */
function planned(l: VolumeLayout, o: number): [number, number][] {
  if (l.mirrors > 1) {
    const p = planMirror(l, o, 1)[0]!;
    return p.legs.map((x, k) => [p.set * l.mirrors + k, x.drive_offset]);
  }
  return plan(l, o, 1).map((s) => [s.column, s.drive_offset]);
}

describe("runs", () => {
  test("RunIndex gives the expanded list's extent at every index, and nothing beyond", () => {
    const r = rng(7);
    for (let round = 0; round < 300; round++) {
      const extents = randomExtents(r, 1 + r(40));
      const runs = toRuns(extents);
      expect(fromRuns(runs)).toEqual(extents);
      const idx = RunIndex.of(runs);
      expect(idx.count).toBe(extents.length);
      // Random order of lookups: the remembered run must not leak into the next answer.
      for (let k = 0; k < extents.length * 2; k++) {
        const i = r(extents.length);
        const got = idx.at(i)!;
        expect(got.extent).toBe(extents[i]!);
        // `left`: how many extents from i on stay consecutive on the drive.
        let left = 1;
        while (i + left < extents.length && extents[i + left] === extents[i]! + left) left++;
        expect(got.left).toBe(left);
      }
      expect(idx.at(extents.length)).toBeUndefined();
      expect(idx.at(-1)).toBeUndefined();
    }
  });

  test("random layouts of every level: planning over runs maps each byte where the expanded lists do", () => {
    const r = rng(11);
    for (let round = 0; round < 200; round++) {
      const { layout, expanded } = randomLayout(r);
      expect(layoutProblem(layout)).toBeNull();
      const end = layout.capacity_bytes;
      for (let o = 0; o < end; o += 1 + r(5)) expect(planned(layout, o)).toEqual(reference(layout, expanded, o));
      // A longer request is the concatenation of its bytes (segments merge only where contiguous).
      if (layout.mirrors === 1) {
        const off = r(end);
        const len = 1 + r(end - off);
        const bytes: [number, number][] = [];
        for (const s of plan(layout, off, len)) for (let i = 0; i < s.length; i++) bytes.push([s.column, s.drive_offset + i]);
        expect(bytes).toEqual(Array.from({ length: len }, (_, i) => reference(layout, expanded, off + i)[0]!));
      }
    }
  });

  test("a 10 TiB RAID1 leg is one run: mapping its last byte indexes nothing big", () => {
    const MiB16 = 16 * 1024 * 1024;
    const extents = 640 * 1024;
    const layout: VolumeLayout = {
      volume_uuid: "v",
      incarnation: 1,
      name: "big",
      capacity_bytes: extents * MiB16,
      raid_level: "1",
      columns: [{ drive_uuid: "a", runs: [0, extents] }, { drive_uuid: "b", runs: [5, extents] }],
      stripe_size_bytes: 0,
      extent_size_bytes: MiB16,
      block_size: 512,
      mirrors: 2,
    };
    expect(layoutProblem(layout)).toBeNull();
    const last = planMirror(layout, layout.capacity_bytes - 4096, 4096)[0]!;
    expect(last.legs.map((x) => x.drive_offset)).toEqual([(extents - 1) * MiB16 + MiB16 - 4096, (extents + 4) * MiB16 + MiB16 - 4096]);
  });
});

describe("malformed runs are refused before any I/O is planned", () => {
  const base = (runs: unknown): VolumeLayout => ({
    volume_uuid: "v",
    incarnation: 1,
    name: "v",
    capacity_bytes: E,
    raid_level: "concatenated",
    columns: [{ drive_uuid: "a", runs: runs as number[] }],
    stripe_size_bytes: 0,
    extent_size_bytes: E,
    block_size: 512,
    mirrors: 1,
  });
  const cases: [string, unknown, RegExp][] = [
    ["odd length", [0, 1, 2], /column 0: 3 numbers: runs are \(start, count\) pairs/],
    ["zero count", [0, 0], /run 0 \(0, 0\) is not a start and a positive count/],
    ["negative start", [-2, 1], /run 0 \(-2, 1\)/],
    ["fractional", [0.5, 1], /run 0 \(0.5, 1\)/],
    ["a string", ["0", 1], /run 0 \(0, 1\) is not a start/],
    ["not maximal", [3, 2, 5, 1], /run 1 continues the one before it/],
    ["beyond any drive", [2 ** 53 - 2, 4], /ends beyond any drive/],
    ["too many extents", [0, MAX_DECODED_EXTENTS + 1], new RegExp(`more than ${MAX_DECODED_EXTENTS} extents`)],
    ["empty", [], /column 0 has no extents/],
    ["not a list", { 0: 1 }, /column 0 has no runs list/],
  ];
  for (const [name, runs, why] of cases) {
    test(name, () => {
      expect(layoutProblem(base(runs))).toMatch(why);
    });
  }
  test("too many extents across columns", () => {
    const half = MAX_DECODED_EXTENTS / 2 + 1;
    const l = { ...base([0, half]), columns: [{ drive_uuid: "a", runs: [0, half] }, { drive_uuid: "b", runs: [0, half] }] };
    expect(layoutProblem(l)).toMatch(/columns list more than/);
  });
  test("runsCount agrees with layoutProblem on canonical runs", () => {
    expect(runsCount([4, 2, 0, 1])).toEqual({ ok: true, value: 3 });
  });
});
