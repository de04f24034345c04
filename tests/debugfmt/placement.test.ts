/**
 * Misplaced sectors found from their neighbours, without the volume's layout: the rule must catch
 * a misplaced sector or window in a concatenated run, and never accuse a striped layout (whose
 * LBA jumps at every stripe unit) or sparse data it cannot judge.
 */
import { describe, expect, test } from "bun:test";
import { type ReadableDrive, scan } from "../../src/debugfmt/scan.ts";
import { encodeSector, SECTOR_BYTES } from "../../src/debugfmt/sector.ts";
import { bytes, fields } from "./fixtures.ts";

/** A drive image where position p holds the sector of lbaAt(p) (null: empty). */
function image(positions: number, lbaAt: (p: number) => number | null): Uint8Array {
  const img = new Uint8Array(positions * SECTOR_BYTES);
  for (let p = 0; p < positions; p++) {
    const lba = lbaAt(p);
    if (lba === null) continue;
    img.set(encodeSector(fields({ lba, io_first_lba: lba, io_index: 0, io_sectors: 1 }), bytes(512, lba + 1)), p * SECTOR_BYTES);
  }
  return img;
}

function drive(img: Uint8Array): ReadableDrive {
  return {
    size_bytes: img.length,
    describe: "memory image",
    async read(offset, dst) {
      dst.set(img.subarray(offset, offset + dst.length));
    },
  };
}

const scanImage = (img: Uint8Array) => scan({ name: "img", drive: drive(img), area: { offset_bytes: 0, bytes: img.length, extent_bytes: 1 << 20 } }, { chunk_bytes: 64 * 1024 });

describe("placement from neighbours", () => {
  test("a striped column (LBA jumps every 8 positions, one unit per window) is not accused", async () => {
    const W = 4;
    const r = await scanImage(image(512, (p) => Math.floor(p / 8) * 8 * W + 8 + (p % 8)));
    expect(r.files[0]!.counts.misdirected).toBe(0);
    expect(r.files[0]!.placement_unverified).toBe(0);
  });

  test("stripe units smaller than a window cannot be judged: unverified, never accused", async () => {
    const r = await scanImage(image(256, (p) => Math.floor(p / 2) * 2 * 3 + (p % 2)));
    expect(r.files[0]!.counts.misdirected).toBe(0);
    expect(r.files[0]!.placement_unverified).toBe(256);
  });

  test("a concatenated run: one misplaced sector, and one misplaced window, are found", async () => {
    const r = await scanImage(image(256, (p) => (p === 37 ? 1000 : p >= 64 && p < 72 ? 500 + p : p + 4096)));
    expect(r.problems.map((x) => `${x.class}@${x.position}:${x.lba}`)).toEqual([
      "misdirected@37:1000",
      ...Array.from({ length: 8 }, (_, i) => `misdirected@${64 + i}:${564 + i}`),
    ]);
    expect(r.problems[0]!.reason).toMatch(/header says LBA 1000, but its neighbours put LBA 4133 here/);
  });

  test("sparse sectors are judged by the nearest keyed windows around them", async () => {
    // Dense runs at both ends, single sectors in between: on the run's line, or off it.
    const r = await scanImage(image(256, (p) => (p < 16 || p >= 240 ? p : p === 100 ? p : p === 150 ? 7 : null)));
    expect(r.problems.map((x) => `${x.class}@${x.position}`)).toEqual(["misdirected@150"]);
    expect(r.files[0]!.placement_unverified).toBe(0);
  });

  test("a lone sector with no neighbours at all is unverified", async () => {
    const r = await scanImage(image(64, (p) => (p === 20 ? 99 : null)));
    expect(r.problems_total).toBe(0);
    expect(r.files[0]!.placement_unverified).toBe(1);
  });

  test("with the layout given, placement is checked exactly", async () => {
    const img = image(64, (p) => (p === 9 ? 3 : p));
    const r = await scan({ name: "img", drive: drive(img), area: { offset_bytes: 0, bytes: img.length, extent_bytes: 1 << 20 } }, {
      placement: (_src, p) => ({ volume_uuid: fields().volume_uuid, lba: p }),
    });
    expect(r.problems.map((x) => `${x.class}@${x.position}`)).toEqual(["misdirected@9"]);
    expect(r.problems[0]!.reason).toMatch(/the layout puts LBA 9/);
  });
});
