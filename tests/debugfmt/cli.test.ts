/**
 * `nvmesh forensics` through the compiled binary: what a person reads, what a script parses, the
 * exit codes (0 clean, 1 problems, 2 usage or unreadable input), and that it never writes.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { encodeSector, SECTOR_BYTES } from "../../src/debugfmt/sector.ts";
import { requireBinary, run } from "../support/proc.ts";
import { BASE, buildMirror, formatFile, type Planted, VOLUME, writeAt } from "./drives.ts";
import { bytes, fields } from "./fixtures.ts";

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "nvmesh-forensics-cli-"));
const A = path.join(tmp, "leg0.img");
const B = path.join(tmp, "leg1.img");
const CLEAN = path.join(tmp, "clean.img");
const RAW = path.join(tmp, "raw.img");
let planted: Planted[] = [];
let bin = "";

beforeAll(async () => {
  bin = requireBinary();
  ({ planted } = await buildMirror(A, B));
  const off = await formatFile(CLEAN);
  const img = new Uint8Array(64 * SECTOR_BYTES);
  for (let i = 0; i < 64; i++) img.set(encodeSector(fields({ lba: i, io_first_lba: i, io_index: 0, io_sectors: 1 }), bytes(512, i)), i * SECTOR_BYTES);
  writeAt(CLEAN, off, img);
  fs.writeFileSync(RAW, img);
});

afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const nv = (...args: string[]) => run([bin, ...args]);

describe("forensics scan", () => {
  test("two legs: a summary a person reads at a glance, exit 1", async () => {
    const r = await nv("forensics", "scan", A, "--peer", B, "--limit", "100");
    expect(r.code).toBe(1);
    expect(r.stdout).toMatch(/nvmesh drive a1b2c3d4-0000-4000-8000-00000000000a \(primary superblock\)/);
    expect(r.stdout).toMatch(/^misdirected +9 +0$/m);
    expect(r.stdout).toMatch(/legs compared at \d+ positions: \d+ same, 17 write_hole, 8 skipped_leg, 8 stale_generation, 16 legs_differ/);
    expect(r.stdout).toMatch(new RegExp(`^${planted.length} problems:$`, "m"));
    expect(r.stdout).toMatch(/^leg0\.img ↔ leg1\.img +1448 +424 +stale_generation +client 99 \(stale-host\) +client 99 \(stale-host\) wrote seq \d+ with topology generation 2/m);
    expect(r.stdout).toMatch(/^leg0\.img +1133 +109 +torn +client 11 \(w1\) +torn write/m);
    expect(r.stdout).toMatch(/^99 +stale-host +8 +2 +\d+$/m); // the clients table
  });

  test("--json: the full structured result", async () => {
    const r = await nv("forensics", "scan", A, "--peer", B, "--json");
    expect(r.code).toBe(1);
    const j = JSON.parse(r.stdout);
    expect(j.problems_total).toBe(planted.length);
    expect(j.problems.length).toBe(planted.length);
    expect(j.files.map((f: { drive_uuid: string }) => f.drive_uuid)).toEqual(["a1b2c3d4-0000-4000-8000-00000000000a", "a1b2c3d4-0000-4000-8000-00000000000b"]);
    const hole = j.problems.find((p: { class: string; lba: number }) => p.class === "write_hole" && p.lba === 360);
    expect(hole.culprit).toEqual({ client_id: 10, client_name: "w0" });
    expect(hole.newer_file).toBe(A);
    expect(hole.timeline.length).toBeGreaterThan(1);
  });

  test("a clean drive: no problems, exit 0; --volume filters", async () => {
    const r = await nv("forensics", "scan", CLEAN);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^ok +64$/m);
    expect(r.stdout).toMatch(/no problems found/);
    const v = await nv("forensics", "scan", CLEAN, "--volume", "11111111-2222-4333-8444-555555555555", "--json");
    expect(JSON.parse(v.stdout).files[0].counts.other_volume).toBe(64);
  });

  test("--raw scans a file without a superblock; without it the refusal says to use it", async () => {
    const no = await nv("forensics", "scan", RAW);
    expect(no.code).toBe(2);
    expect(no.stderr + no.stdout).toMatch(/not an nvmesh drive.*use --raw/);
    const yes = await nv("forensics", "scan", RAW, "--raw");
    expect(yes.code).toBe(0);
    expect(yes.stdout).toMatch(/raw \(no superblock\)/);
  });

  test("scan and history never write: bytes and mtimes unchanged", async () => {
    const snap = () => [A, B].map((p) => [Bun.hash(fs.readFileSync(p)).toString(), fs.statSync(p).mtimeMs, fs.statSync(p).ctimeMs]);
    const before = snap();
    await nv("forensics", "scan", A, "--peer", B);
    await nv("forensics", "history", A, "--peer", B, "--lba", "360");
    expect(snap()).toEqual(before);
  });
});

describe("forensics history", () => {
  test("both copies and the writes of the block in order; legs holding different writes: exit 1", async () => {
    const r = await nv("forensics", "history", A, "--peer", B, "--lba", String(392));
    expect(r.code).toBe(1);
    expect(r.stdout).toMatch(new RegExp(`LBA 392 of volume ${VOLUME}: 2 copies`));
    expect(r.stdout).toMatch(new RegExp(`leg0.img@${BASE + 392} +ok +0 +client 11 \\(w1\\)`));
    expect(r.stdout).toMatch(/writes of this block, oldest first:/);
    expect(r.stdout).toMatch(/worker 1 step \d+ \(predicted\)/);
  });

  test("an LBA whose copies agree: exit 0; --json; two volumes' LBA 0 kept apart, --volume picks one", async () => {
    const both = await nv("forensics", "history", A, "--peer", B, "--lba", "0", "--json");
    expect(both.code).toBe(0); // two volumes hold an LBA 0: each agrees on its legs
    expect(JSON.parse(both.stdout).volumes.map((v: { copies: unknown[] }) => v.copies.length)).toEqual([2, 2]);
    const r = await nv("forensics", "history", A, "--peer", B, "--lba", "0", "--volume", VOLUME, "--json");
    expect(r.code).toBe(0);
    const j = JSON.parse(r.stdout);
    expect(j.volumes.length).toBe(1);
    expect(j.volumes[0].copies.length).toBe(2);
    expect(j.volumes[0].copies[0].sector.data).toBeUndefined();
    expect(j.volumes[0].timeline.at(-1).current_on.length).toBe(2);
  });
});

describe("bad CLI values: a clear error and exit 2", () => {
  const cases: [string, string[], RegExp][] = [
    ["no file", ["forensics", "scan"], /missing FILE/],
    ["a file that does not exist", ["forensics", "scan", "/nonexistent/x.img"], /\/nonexistent\/x.img does not exist: give a drive file or a block device/],
    ["a directory", ["forensics", "scan", "/tmp"], /\/tmp is a directory: give a drive file or a block device/],
    ["a peer that does not exist", ["forensics", "scan", "__A__", "--peer", "/nonexistent/y.img"], /\/nonexistent\/y.img does not exist/],
    ["an invalid volume uuid", ["forensics", "scan", "__A__", "--volume", "vol-1"], /invalid --volume 'vol-1'/],
    ["a zero limit", ["forensics", "scan", "__A__", "--limit", "0"], /--limit must be a positive integer/],
    ["an unknown flag", ["forensics", "scan", "__A__", "--fast"], /unknown option '--fast'/],
    ["history without --lba", ["forensics", "history", "__A__"], /missing --lba/],
    ["a negative LBA", ["forensics", "history", "__A__", "--lba", "-1"], /--lba must be a non-negative integer/],
    ["an LBA that is not a number", ["forensics", "history", "__A__", "--lba", "12x"], /--lba must be a non-negative integer/],
  ];
  for (const [name, args, re] of cases) {
    test(name, async () => {
      const r = await nv(...args.map((a) => (a === "__A__" ? A : a)));
      expect(r.stdout + r.stderr).toMatch(re);
      expect(r.code).toBe(2);
    });
  }
});
