/**
 * The forensic scan over real drive files (formatted with the engine's format, written like the
 * legs of a mirror after a verify run), with every kind of corruption planted: each is found at
 * its block, with its class, culprit and reason; the legs are compared; and the scan never writes.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { locateDataArea } from "../../src/debugfmt/drive-area.ts";
import { ReadOnlyFile } from "../../src/debugfmt/runtime/readonly-file.ts";
import { blockHistory, type Problem, type ReadableDrive, scan, type ScanResult, type ScanSource } from "../../src/debugfmt/scan.ts";
import { encodeSector, SECTOR_BYTES } from "../../src/debugfmt/sector.ts";
import { BASE, buildMirror, DRIVE_BYTES, OTHER_VOLUME, type Planted, SPEC8, VOLUME } from "./drives.ts";
import { bytes, fields, verifyWrite } from "./fixtures.ts";

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "nvmesh-forensics-"));
const A = path.join(tmp, "leg0.img");
const B = path.join(tmp, "leg1.img");
let planted: Planted[] = [];
const opened: ReadOnlyFile[] = [];

afterAll(async () => {
  for (const f of opened) await f.close();
  fs.rmSync(tmp, { recursive: true, force: true });
});

beforeAll(async () => {
  ({ planted } = await buildMirror(A, B));
});

async function source(p: string, raw = false): Promise<ScanSource> {
  const drive = ReadOnlyFile.open(p);
  opened.push(drive);
  const loc = await locateDataArea(drive, { raw });
  if ("error" in loc) throw new Error(loc.error);
  return { name: p, drive, area: loc.area };
}

function expectPlanted(r: ScanResult, want: Planted[]) {
  const fileOf = (p: Planted) => (p.file === "a" ? A : B);
  for (const p of want) {
    const hits = r.problems.filter((x) => x.class === p.class && x.file === (p.peer && p.file === "a" ? A : fileOf(p)) && (p.lba < 0 || x.lba === p.lba));
    if (hits.length === 0) {
      throw new Error(`not found: ${p.class} at LBA ${p.lba} in ${p.file}; found:\n${r.problems.map((x) => `${x.class} ${x.file} lba ${x.lba} ${x.reason}`).join("\n")}`);
    }
    const h = hits[0]!;
    expect(h.culprit?.client_id ?? null).toBe(p.culprit);
    expect(h.reason).toMatch(p.reason);
  }
  // Nothing else: every problem found was planted.
  const classes = (xs: { class: string }[]) => xs.map((x) => x.class).sort();
  expect(classes(r.problems)).toEqual(classes(want));
  expect(r.problems_total).toBe(want.length);
}

describe("scan of one leg", () => {
  let r: ScanResult;
  beforeAll(async () => {
    r = await scan(await source(A));
  });

  test("finds every planted corruption with its block, culprit and reason, and nothing else", () => {
    expectPlanted(r, planted.filter((p) => p.file === "a" && !p.peer));
  });

  test("counts: every sector of the data area has exactly one class", () => {
    const f = r.files[0]!;
    expect(f.sectors).toBe((DRIVE_BYTES - 4 * 2 ** 20 - 4096 - (DRIVE_BYTES - 4 * 2 ** 20 - 4096) % 2 ** 20) / SECTOR_BYTES);
    expect(Object.values(f.counts).reduce((s, n) => s + n, 0)).toBe(f.sectors);
    expect(f.counts.foreign).toBe(40); // extent 5, no debug sector there: not a problem
    expect(f.counts.misdirected).toBe(9);
    expect(f.counts.ok).toBeGreaterThan(500);
    expect(f.problems).toBe(r.problems_total);
  });

  test("clients and volumes at a glance", () => {
    expect(r.clients.map((c) => c.client_id)).toEqual([3, 10, 11, 12, 50, 99]);
    const w1 = r.clients.find((c) => c.client_id === 11)!;
    expect(w1.client_name).toBe("w1");
    expect(r.volumes.map((v) => v.volume_uuid).sort()).toEqual([VOLUME, OTHER_VOLUME].sort());
  });

  test("--volume: another volume's sectors are counted apart, not judged", async () => {
    const v = await scan(await source(A), { volume_uuid: VOLUME });
    expect(v.files[0]!.counts.other_volume).toBe(16);
    expectPlanted(v, planted.filter((p) => p.file === "a" && !p.peer));
    const o = await scan(await source(A), { volume_uuid: OTHER_VOLUME });
    // Problems without a readable header cannot be told apart by volume, so they stay.
    expect(o.problems.every((p) => p.volume_uuid === null || p.volume_uuid === OTHER_VOLUME || p.class === "misdirected")).toBe(true);
    expect(o.problems.some((p) => p.class === "torn")).toBe(false);
  });

  test("a small chunk size gives the same result (windows across chunk boundaries)", async () => {
    const small = await scan(await source(A), { chunk_bytes: 64 * 1024 });
    expect(small.files[0]!.counts).toEqual(r.files[0]!.counts);
    expect(small.problems.map((p) => `${p.class}@${p.position}`)).toEqual(r.problems.map((p) => `${p.class}@${p.position}`));
  });

  test("max_problems bounds the list, never the counts", async () => {
    const t = await scan(await source(A), { max_problems: 3 });
    expect(t.problems.length).toBe(3);
    expect(t.problems_truncated).toBe(true);
    expect(t.problems_total).toBe(r.problems_total);
  });
});

describe("scan of both legs (--peer)", () => {
  let r: ScanResult;
  beforeAll(async () => {
    r = await scan(await source(A), { peer: await source(B) });
  });

  test("every planted problem of both files and of the comparison is found, and nothing else", () => {
    expectPlanted(r, planted);
  });

  test("the comparison's own counts", () => {
    const p = r.peer!;
    expect(p.counts).toEqual({ write_hole: 17, skipped_leg: 8, stale_generation: 8, legs_differ: 16 });
    expect(p.unaligned).toBe(9); // the misplaced sectors on leg a
    expect(p.one_side_damaged).toBe(6); // checksum, data, torn, not_debug, bad_field on a; checksum on b
    expect(p.same).toBeGreaterThan(400);
    expect(p.compared).toBe(p.same + 49);
  });

  test("a leg comparison names the newer file and rebuilds the block's writes in order", () => {
    const hole = r.problems.find((x) => x.class === "write_hole" && x.lba === 360)!;
    expect(hole.newer_file).toBe(A);
    const t = hole.timeline!;
    // Oldest first: the earlier passes (known from the histories), then leg b's record, then a's.
    expect(t.at(-1)!.current_on).toEqual([A]);
    expect(t.at(-2)!.current_on).toEqual([B]);
    expect(t.at(-2)!.known_by.sort()).toEqual([A, B].sort());
    const steps = t.map((e) => e.write.step!);
    expect([...steps].sort((x, y) => x - y)).toEqual(steps);
  });

  test("the stale-generation culprit is the stale client, with the generations in the reason", () => {
    const s = r.problems.find((x) => x.class === "stale_generation")!;
    expect(s.culprit).toEqual({ client_id: 99, client_name: "stale-host" });
    expect(s.writer?.generation).toBe(2);
  });
});

describe("what scan reads and refuses", () => {
  test("scan never writes: the files' bytes and mtimes are unchanged", async () => {
    const before = [A, B].map((p) => ({ hash: Bun.hash(fs.readFileSync(p)), mtime: fs.statSync(p).mtimeMs, ctime: fs.statSync(p).ctimeMs }));
    await scan(await source(A), { peer: await source(B) });
    await blockHistory([await source(A), await source(B)], { lba: 360 });
    const after = [A, B].map((p) => ({ hash: Bun.hash(fs.readFileSync(p)), mtime: fs.statSync(p).mtimeMs, ctime: fs.statSync(p).ctimeMs }));
    expect(after).toEqual(before);
  });

  test("a block device (a read-only loop device over leg a) scans like its file", async () => {
    // Loop devices need root and losetup (util-linux); fail loudly otherwise, never skip.
    const dev = execFileSync("losetup", ["-f", "--show", "-r", A], { encoding: "utf8" }).trim();
    try {
      const d = ReadOnlyFile.open(dev);
      try {
        expect(d.describe).toBe(`block device ${dev}`);
        expect(d.size_bytes).toBe(DRIVE_BYTES);
        const loc = await locateDataArea(d, { raw: false });
        if ("error" in loc) throw new Error(loc.error);
        const r = await scan({ name: A, drive: d, area: loc.area });
        expectPlanted(r, planted.filter((p) => p.file === "a" && !p.peer));
      } finally {
        await d.close();
      }
    } finally {
      execFileSync("losetup", ["-d", dev]);
    }
  });

  test("the read-only file refuses writes", async () => {
    const f = ReadOnlyFile.open(A);
    await expect(f.write()).rejects.toThrow(/read-only/);
    await expect(f.writeZeroes()).rejects.toThrow(/read-only/);
    await f.close();
  });

  test("a file that is not an nvmesh drive is refused with a hint, and scanned with --raw", async () => {
    const p = path.join(tmp, "raw.img");
    const img = new Uint8Array(64 * SECTOR_BYTES);
    for (let i = 0; i < 64; i++) img.set(verifyWrite({ worker: 0, step: 0, leg: 0, first_lba: i * 2 }).bytes.subarray(0, SECTOR_BYTES), i * SECTOR_BYTES);
    for (let i = 0; i < 64; i++) {
      img.set(encodeSector(fields({ lba: i, io_first_lba: i, io_index: 0, io_sectors: 1 }), bytes(512, i)), i * SECTOR_BYTES);
    }
    fs.writeFileSync(p, img);
    const drive = ReadOnlyFile.open(p);
    opened.push(drive);
    const loc = await locateDataArea(drive, { raw: false });
    expect("error" in loc && loc.error).toMatch(/not an nvmesh drive.*use --raw/);
    const r = await scan(await source(p, true));
    expect(r.files[0]!.counts.ok).toBe(64);
    expect(r.problems_total).toBe(0);
    expect(r.files[0]!.placement_unverified).toBe(0);
  });

  test("a damaged superblock is reported, with the hint", async () => {
    const p = path.join(tmp, "damaged.img");
    fs.copyFileSync(A, p);
    const fd = fs.openSync(p, "r+");
    fs.writeSync(fd, new Uint8Array([0xff]), 0, 1, 100); // inside the CRC-covered fields
    const size = fs.fstatSync(fd).size;
    fs.writeSync(fd, new Uint8Array(4096), 0, 4096, size - 4096); // and no backup to fall back on
    fs.closeSync(fd);
    const drive = ReadOnlyFile.open(p);
    opened.push(drive);
    const loc = await locateDataArea(drive, { raw: false });
    expect("error" in loc && loc.error).toMatch(/damaged nvmesh superblock.*use --raw/);
  });

  test("unreadable sectors are classified and the rest of the chunk is still decoded", async () => {
    const img = new Uint8Array(32 * SECTOR_BYTES);
    for (let i = 0; i < 32; i++) img.set(encodeSector(fields({ lba: i, io_first_lba: i, io_index: 0, io_sectors: 1 }), bytes(512, i)), i * SECTOR_BYTES);
    const failing: ReadableDrive = {
      size_bytes: img.length,
      describe: "test drive with a bad range",
      async read(offset, dst) {
        const end = offset + dst.length;
        if (offset < 6 * SECTOR_BYTES && end > 4 * SECTOR_BYTES) throw new Error("EIO: medium error");
        dst.set(img.subarray(offset, end));
      },
    };
    const r = await scan({ name: "bad", drive: failing, area: { offset_bytes: 0, bytes: img.length, extent_bytes: 1 << 20 } });
    expect(r.files[0]!.counts.unreadable).toBe(2);
    expect(r.files[0]!.counts.ok).toBe(30);
    expect(r.problems.map((p) => `${p.class}@${p.position}`)).toEqual(["unreadable@4", "unreadable@5"]);
    expect(r.problems[0]!.reason).toMatch(/medium error/);
  });
});

describe("history of one block", () => {
  test("both legs' copies, their classes, and the merged order of writes", async () => {
    const hh = await blockHistory([await source(A), await source(B)], { lba: 392 });
    expect(hh.volumes.length).toBe(1);
    const h = hh.volumes[0]!;
    expect(h.copies.map((c) => [path.basename(c.file), c.position, c.class])).toEqual([
      ["leg0.img", BASE + 392, "ok"],
      ["leg1.img", BASE + 392, "ok"],
    ]);
    expect(h.copies.every((c) => c.pattern_problems.length === 0)).toBe(true);
    const last = h.timeline.at(-1)!;
    expect(last.current_on).toEqual([`${A}@${BASE + 392}`]);
    expect(last.write.legs_mask).toBe(1);
    expect(h.timeline.length).toBeGreaterThanOrEqual(3);
  });

  test("a misdirected copy of an LBA is found where it landed too", async () => {
    const h = (await blockHistory([await source(A)], { lba: 243 })).volumes[0]!;
    expect(h.copies.map((c) => c.position).sort()).toEqual([BASE + 242, BASE + 243]);
  });

  test("a torn copy still shows what its intact header says, and the pattern check explains its data", async () => {
    const h = (await blockHistory([await source(A)], { lba: 109 })).volumes[0]!;
    expect(h.copies[0]!.class).toBe("torn");
    expect(h.copies[0]!.sector.pattern?.workers).toBe(SPEC8.workers);
  });

  test("without --volume, two volumes' copies of one LBA are kept apart", async () => {
    const h = await blockHistory([await source(A), await source(B)], { lba: 3 });
    expect(h.volumes.map((v) => [v.volume_uuid, v.copies.length]).sort()).toEqual([[VOLUME, 2], [OTHER_VOLUME, 2]].sort());
    for (const v of h.volumes) expect(v.timeline.every((e) => e.known_by.length > 0)).toBe(true);
    const only = await blockHistory([await source(A)], { lba: 3, volume_uuid: OTHER_VOLUME });
    expect(only.volumes.map((v) => v.volume_uuid)).toEqual([OTHER_VOLUME]);
  });
});

export type { Problem };
