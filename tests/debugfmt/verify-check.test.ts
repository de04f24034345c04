/** What a verify worker accepts and refuses when it reads a block back (verify-check.ts). */
import { describe, expect, test } from "bun:test";
import { blockAt, blockLbas, dataFor, type PatternSpec, stepsWriting } from "../../src/debugfmt/pattern.ts";
import { ReaderState } from "../../src/debugfmt/verify-check.ts";

const spec: PatternSpec = { seed_id: 3, workers: 2, blocks: 16, block_sectors: 2, base_lba: 0 };

/** The block's data as worker `worker` writes it at `step`. */
function blockData(worker: number, step: number): { block: number; data: Uint8Array } {
  const block = blockAt(spec, { worker, step });
  const { first_lba, sectors } = blockLbas(spec, block);
  const data = new Uint8Array(sectors * 512);
  for (let i = 0; i < sectors; i++) data.set(dataFor({ ...spec, worker, step }, first_lba + i), i * 512);
  return { block, data };
}

describe("another worker's block", () => {
  test("zeros or foreign data before this run's data was seen; then never again", () => {
    const r = new ReaderState(spec, 0);
    const { block, data } = blockData(1, 0);
    expect(r.check(block, new Uint8Array(1024))).toBeNull();
    expect(r.check(block, new Uint8Array(1024).fill(7))).toBeNull();
    expect(r.check(block, data)).toBeNull();
    expect(r.known(block)).toBe(0);
    expect(r.check(block, new Uint8Array(1024))).toMatchObject({ kind: "lost_write", block, owner: 1, found: "zeros" });
  });

  test("an older step than seen before is stale; a newer one is fine", () => {
    const r = new ReaderState(spec, 0);
    const { block } = blockData(1, 0);
    // The steps of worker 1 that write this block: one per pass.
    const later = stepsWriting(spec, block, { before: 1000, limit: 3 });
    const [s2, s1] = [later[0]!, later[1]!];
    expect(r.check(block, blockData(1, s1).data)).toBeNull();
    expect(r.check(block, blockData(1, s2).data)).toBeNull();
    const m = r.check(block, blockData(1, s1).data);
    expect(m).toMatchObject({ kind: "stale", block, lba: blockLbas(spec, block).first_lba });
    expect(m!.expected).toMatch(new RegExp(`step ≥ ${s2}`));
    expect(m!.found).toMatch(new RegExp(`step ${s1} for LBA`));
  });

  test("another block's data (misdirected), another worker's, or changed bytes", () => {
    const r = new ReaderState(spec, 0);
    const a = blockData(1, 0);
    const b = blockData(1, 1);
    expect(r.check(a.block, b.data)).toMatchObject({ kind: "misdirected", block: a.block });
    const flipped = a.data.slice();
    flipped[700] = flipped[700]! ^ 1;
    expect(r.check(a.block, flipped)).toMatchObject({ kind: "corrupt", lba: blockLbas(spec, a.block).first_lba + 1 });
  });
});

describe("the reader's own block", () => {
  test("exactly the last step it wrote", () => {
    const r = new ReaderState(spec, 1);
    const { block, data } = blockData(1, 0);
    expect(r.check(block, new Uint8Array(1024))).toBeNull(); // not written yet in this run
    expect(r.check(block, data)).toMatchObject({ kind: "unexpected" }); // this run's data it never wrote
    r.wrote(block, 0);
    expect(r.check(block, data)).toBeNull();
    expect(r.check(block, new Uint8Array(1024))).toMatchObject({ kind: "lost_write", owner: 1, expected: "step 0, written by this worker last" });
  });
});
