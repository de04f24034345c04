/**
 * The verify pattern: the field arithmetic, the permutation property (every pass writes every
 * owned block exactly once), its inversion, history prediction, the data stamp, and the checks a
 * reader makes on a sector written by any worker.
 */
import { describe, expect, test } from "bun:test";
import { crc32c } from "../../src/engine/crc32c.ts";
import {
  blockAt,
  blockOfLba,
  checkPatternSector,
  dataFor,
  invmod,
  isPrime,
  MAX_FIELD_PRIME,
  mulmod,
  ownedBlocks,
  ownerOf,
  passPermutation,
  type PatternSpec,
  permute,
  previousSteps,
  readDataStamp,
  smallestPrimeAtLeast,
  stepsWriting,
  unpermute,
} from "../../src/debugfmt/pattern.ts";
import { decodeSector, type DebugSector, SECTOR_BYTES } from "../../src/debugfmt/sector.ts";
import { SPEC, verifyWrite } from "./fixtures.ts";

const spec = (over: Partial<PatternSpec> = {}): PatternSpec => ({ seed_id: 1, workers: 1, blocks: 10, block_sectors: 1, base_lba: 0, ...over });

describe("field arithmetic", () => {
  test("isPrime agrees with trial division below 20,000 and knows the 32-bit edge", () => {
    const trial = (n: number) => {
      if (n < 2) return false;
      for (let d = 2; d * d <= n; d++) if (n % d === 0) return false;
      return true;
    };
    for (let n = 0; n < 20_000; n++) expect(isPrime(n)).toBe(trial(n));
    expect(isPrime(MAX_FIELD_PRIME)).toBe(true);
    expect(isPrime(4294967295)).toBe(false);
    expect(isPrime(3215031751)).toBe(false); // strong pseudoprime to bases 2, 3, 5, 7
    expect(isPrime(2147483647)).toBe(true);
  });

  test("smallestPrimeAtLeast", () => {
    expect([0, 1, 2, 3, 4, 8, 14, 90, 1000].map(smallestPrimeAtLeast)).toEqual([2, 2, 2, 3, 5, 11, 17, 97, 1009]);
    expect(smallestPrimeAtLeast(MAX_FIELD_PRIME)).toBe(MAX_FIELD_PRIME);
    expect(() => smallestPrimeAtLeast(MAX_FIELD_PRIME + 1)).toThrow(/no field prime/);
  });

  test("mulmod is exact for 32-bit operands (checked with BigInt), invmod inverts", () => {
    const p = MAX_FIELD_PRIME;
    for (let i = 0; i < 2000; i++) {
      const a = (i * 2654435761 + 12345) % p;
      const b = (i * 40503 * 65599 + 99) % p;
      expect(mulmod(a, b, p)).toBe(Number((BigInt(a) * BigInt(b)) % BigInt(p)));
      if (a !== 0) expect(mulmod(a, invmod(a, p), p)).toBe(1);
    }
  });
});

describe("the permutation of each pass", () => {
  const sizes = [1, 2, 3, 4, 5, 7, 8, 10, 11, 16, 97, 100, 127, 128, 1000, 1009, 4096];
  test("is a bijection of 0..M-1 for many (seed, pass, M): primes, non-primes, 1 and 2", () => {
    for (const m of sizes) {
      for (const seed of [1, 2, 7, 0xffff_ffff]) {
        for (const pass of [0, 1, 2, 5, 2 ** 33 + 1]) {
          const perm = passPermutation(spec({ seed_id: seed, blocks: m }), 0, pass);
          expect(perm.m).toBe(m);
          expect(perm.p).toBe(smallestPrimeAtLeast(m));
          const seen = new Uint8Array(m);
          for (let i = 0; i < m; i++) {
            const x = permute(perm, i);
            expect(x >= 0 && x < m).toBe(true);
            expect(seen[x]).toBe(0);
            seen[x] = 1;
            expect(unpermute(perm, x)).toBe(i);
          }
        }
      }
    }
  });

  test("passes differ from each other (the pattern is not one fixed order)", () => {
    const orders = new Set<string>();
    for (let pass = 0; pass < 20; pass++) {
      const perm = passPermutation(spec({ blocks: 50, seed_id: 3 }), 0, pass);
      orders.add(Array.from({ length: 50 }, (_, i) => permute(perm, i)).join(","));
    }
    expect(orders.size).toBeGreaterThan(15);
  });

  test("permute refuses values outside 0..M-1", () => {
    const perm = passPermutation(spec(), 0, 0);
    expect(() => permute(perm, 10)).toThrow();
    expect(() => unpermute(perm, -1)).toThrow();
  });
});

describe("blocks, steps and history", () => {
  test("worker w owns the blocks ≡ w (mod W); each pass writes each owned block once", () => {
    for (const [blocks, workers] of [[10, 3], [1, 1], [2, 5], [64, 3], [100, 7]] as const) {
      const s = spec({ blocks, workers, seed_id: 9 });
      let total = 0;
      for (let w = 0; w < workers; w++) {
        const M = ownedBlocks(s, w);
        total += M;
        if (M === 0) {
          expect(() => blockAt(s, { worker: w, step: 0 })).toThrow(/owns no block/);
          continue;
        }
        for (let pass = 0; pass < 3; pass++) {
          const written = new Set<number>();
          for (let i = 0; i < M; i++) {
            const b = blockAt(s, { worker: w, step: pass * M + i });
            expect(ownerOf(s, b)).toBe(w);
            expect(b < blocks).toBe(true);
            written.add(b);
          }
          expect(written.size).toBe(M);
        }
      }
      expect(total).toBe(blocks);
    }
  });

  test("stepsWriting inverts blockAt: the steps it names wrote the block, and no other step did", () => {
    const s = spec({ blocks: 23, workers: 4, seed_id: 5 });
    for (let w = 0; w < 4; w++) {
      const M = ownedBlocks(s, w);
      const last = new Map<number, number[]>();
      for (let step = 0; step < 6 * M; step++) {
        const b = blockAt(s, { worker: w, step });
        // Before writing, the predicted earlier writes of b are exactly the steps seen so far.
        const seen = last.get(b) ?? [];
        expect(stepsWriting(s, b, { before: step, limit: 100 })).toEqual([...seen].reverse());
        expect(previousSteps(s, { worker: w, step }, 2)).toEqual([...seen].reverse().slice(0, 2));
        last.set(b, [...seen, step]);
      }
    }
  });

  test("blockOfLba with multi-sector blocks and a base", () => {
    const s = spec({ blocks: 4, block_sectors: 8, base_lba: 100 });
    expect([99, 100, 107, 108, 131, 132].map((l) => blockOfLba(s, l))).toEqual([null, 0, 0, 1, 3, null]);
  });

  test("huge steps and areas stay exact (no float drift)", () => {
    const s = spec({ blocks: 2 ** 40, workers: 1024, seed_id: 11 });
    const M = ownedBlocks(s, 5);
    const step = 3 * M + 12345;
    const b = blockAt(s, { worker: 5, step });
    expect(stepsWriting(s, b, { before: step + 1, limit: 4 })[0]).toBe(step);
    expect(stepsWriting(s, b, { before: step, limit: 4 }).length).toBe(3);
  });
});

describe("data", () => {
  test("dataFor is deterministic, differs per coordinate, and carries a readable stamp", () => {
    const st = { ...SPEC, worker: 1, step: 77 };
    const a = dataFor(st, 10);
    expect([...dataFor(st, 10)]).toEqual([...a]);
    expect(readDataStamp(a)).toEqual({ ...st, lba: 10 });
    const others = [dataFor({ ...st, step: 78 }, 10), dataFor(st, 11), dataFor({ ...st, worker: 2 }, 10), dataFor({ ...st, seed_id: 8 }, 10)];
    for (const o of others) expect(crc32c(o)).not.toBe(crc32c(a));
  });

  test("a damaged or foreign stamp reads as no stamp", () => {
    const a = dataFor({ ...SPEC, worker: 1, step: 77 }, 10);
    a[20] = a[20]! ^ 1;
    expect(readDataStamp(a)).toBeNull();
    expect(readDataStamp(new Uint8Array(512))).toBeNull();
  });
});

describe("a reader checks any worker's sector without talking to it", () => {
  function firstLbaOf(worker: number, step: number) {
    return blockAt(SPEC, { worker, step }) * SPEC.block_sectors;
  }
  function decoded(worker: number, step: number, over: { mutate?: (b: Uint8Array) => void } = {}): DebugSector {
    const w = verifyWrite({ worker, step, leg: 0, first_lba: firstLbaOf(worker, step) });
    const b = w.bytes.slice(0, SECTOR_BYTES);
    over.mutate?.(b);
    const d = decodeSector(b);
    if (!d.ok) throw new Error(`${d.class}: ${d.reason}`);
    return d.fields;
  }
  const M = ownedBlocks(SPEC, 2);

  test("the data path fills the pattern fields and the predicted history from the data stamp", () => {
    const s = decoded(2, 3 * M + 4);
    expect(s.pattern).toEqual({ ...SPEC, worker: 2, step: 3 * M + 4 });
    expect(s.history.map((h) => h.step)).toEqual(stepsWriting(SPEC, blockAt(SPEC, { worker: 2, step: 3 * M + 4 }), { before: 3 * M + 4, limit: 4 }));
    expect(s.history.every((h) => h.kind === "predicted" && h.client_id === 12)).toBe(true);
    expect(checkPatternSector(s, { spec: SPEC, expected_lba: s.lba })).toEqual([]);
  });

  test("misdirected: read at another LBA than the header says", () => {
    const s = decoded(2, 5);
    expect(checkPatternSector(s, { expected_lba: s.lba + 2 }).map((p) => p.kind)).toEqual(["misdirected"]);
  });

  test("wrong block: the header's LBA is not the one the pattern writes at that step", () => {
    const s = decoded(2, 5);
    const lie = { ...s, lba: s.lba + SPEC.block_sectors * SPEC.workers };
    expect(checkPatternSector(lie).map((p) => p.kind)).toContain("wrong_block");
  });

  test("data mismatch names the step the data belongs to", () => {
    const s = decoded(2, 5);
    const other = dataFor({ ...SPEC, worker: 2, step: 4 }, s.lba);
    const p = checkPatternSector({ ...s, data: other });
    expect(p.map((x) => x.kind)).toEqual(["data_mismatch"]);
    expect(p[0]!.detail).toMatch(/worker 2 step 4/);
  });

  test("history disagreeing with the pattern (step, or data of a step)", () => {
    const s = decoded(2, 3 * M + 4);
    const h = [...s.history];
    h[1] = { ...h[1]!, step: h[1]!.step + 1 };
    expect(checkPatternSector({ ...s, history: h }).map((x) => x.kind)).toEqual(["history_mismatch"]);
    const h2 = [...s.history];
    h2[0] = { ...h2[0]!, data_crc: (h2[0]!.data_crc + 1) >>> 0 };
    expect(checkPatternSector({ ...s, history: h2 })[0]!.detail).toMatch(/data checksum/);
    expect(checkPatternSector({ ...s, history: h2 }, { history_data: false })).toEqual([]);
  });

  test("history longer than the pattern allows", () => {
    const s = decoded(2, 1); // pass 0: no earlier write of its block
    expect(s.history).toEqual([]);
    const fake = { ...decoded(2, 3 * M + 4) };
    const lie = { ...s, history: fake.history };
    expect(checkPatternSector(lie).map((x) => x.kind)).toEqual(["history_mismatch"]);
  });

  test("stale: the block's step went backwards against what the reader saw before", () => {
    const s = decoded(2, 5);
    expect(checkPatternSector(s, { min_step: 5 })).toEqual([]);
    expect(checkPatternSector(s, { min_step: 6 }).map((x) => x.kind)).toEqual(["stale"]);
  });

  test("another run's sector, or not verify data", () => {
    const s = decoded(2, 5);
    expect(checkPatternSector(s, { spec: { ...SPEC, seed_id: 8 } }).map((x) => x.kind)).toEqual(["not_pattern"]);
    expect(checkPatternSector({ ...s, pattern: null }).map((x) => x.kind)).toEqual(["not_pattern"]);
  });

  test("a pattern naming a worker that owns no block is not_pattern, not a throw", () => {
    const s = decoded(2, 5);
    const bad = { ...s, pattern: { ...s.pattern!, worker: 70, workers: 80 } };
    expect(checkPatternSector(bad).map((x) => x.kind)).toContain("not_pattern");
  });
});
