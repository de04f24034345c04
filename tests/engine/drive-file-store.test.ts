/**
 * What FileStore does beyond the shared conformance suite: exclusive open, hole punching and its
 * one-time log, a file shrinking under it, a real block device (loop device), and the durable
 * paths (fua, flush) at least reaching fdatasync without error.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { FileStore } from "../../src/engine/runtime/file-store.ts";
import { libc, POSIX_FADV_DONTNEED } from "../../src/ffi/libc.ts";
import { formatDrive } from "../../src/engine/drive/format.ts";
import { openDrive } from "../../src/engine/drive/formatted-drive.ts";
import { DriveIoError } from "../../src/engine/drive/store.ts";
import type { Logger } from "../../src/engine/env.ts";

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "nvmesh-file-store-"));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

function recording(): { log: Logger; lines: string[] } {
  const lines: string[] = [];
  const rec = (level: string) => (msg: string, f?: Record<string, unknown>) => void lines.push(`${level} ${msg} ${JSON.stringify(f ?? {})}`);
  return { log: { debug: rec("debug"), info: rec("info"), warn: rec("warn"), error: rec("error") }, lines };
}

describe("FileStore", () => {
  test("a second open of the same drive is refused while the first holds it", async () => {
    const p = path.join(tmp, "excl.img");
    const a = await FileStore.open(p, { create_size_bytes: 1 << 20 });
    const e = await FileStore.open(p).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(DriveIoError);
    expect(String((e as Error).message)).toContain("is in use by another process");
    await a.close();
    const b = await FileStore.open(p);
    expect(b.size_bytes).toBe(1 << 20);
    expect(b.describe).toBe(`file ${p}`);
    await b.close();
  });

  test("opening a missing path without create fails with EIO naming the path", async () => {
    const p = path.join(tmp, "missing.img");
    const e = await FileStore.open(p).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(DriveIoError);
    expect((e as DriveIoError).code).toBe("EIO");
    expect((e as Error).message).toContain(p);
  });

  test("writeZeroes punches a hole (blocks freed) and logs the chosen path once", async () => {
    const p = path.join(tmp, "punch.img");
    const { log, lines } = recording();
    const s = await FileStore.open(p, { create_size_bytes: 8 << 20, log });
    await s.write(0, new Uint8Array(8 << 20).fill(0xab), true);
    const before = fs.statSync(p).blocks;
    await s.writeZeroes(1 << 20, 4 << 20, true);
    await s.writeZeroes(6 << 20, 4096, false);
    const after = fs.statSync(p).blocks;
    expect(after).toBeLessThan(before);
    const got = new Uint8Array(4 << 20);
    await s.read(1 << 20, got);
    expect(got.every((x) => x === 0)).toBe(true);
    const chosen = lines.filter((l) => l.includes("writeZeroes path"));
    expect(chosen.length).toBe(1);
    expect(chosen[0]).toContain('"path":"punch"');
    await s.close();
  });

  test("a file truncated under the store reads as EIO, not as zeroes", async () => {
    const p = path.join(tmp, "shrink.img");
    const s = await FileStore.open(p, { create_size_bytes: 1 << 20 });
    fs.truncateSync(p, 4096);
    const e = await s.read(8192, new Uint8Array(4096)).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(DriveIoError);
    expect((e as DriveIoError).code).toBe("EIO");
    await s.close();
  });

  test("close waits for in-flight I/O, which completes", async () => {
    const p = path.join(tmp, "inflight.img");
    const s = await FileStore.open(p, { create_size_bytes: 4 << 20 });
    const writes = Array.from({ length: 32 }, (_, i) => s.write(i * 4096, new Uint8Array(4096).fill(i), false));
    await s.close();
    await Promise.all(writes);
    const r = await FileStore.open(p);
    const b = new Uint8Array(4096);
    await r.read(31 * 4096, b);
    expect(b[0]).toBe(31);
    await r.close();
  });

  test("a loop block device: size by seeking, format, open, I/O", async () => {
    const img = path.join(tmp, "loop.img");
    fs.writeFileSync(img, "");
    fs.truncateSync(img, 32 << 20);
    // Loop devices need root and losetup (util-linux); fail loudly otherwise, never skip.
    const dev = execFileSync("losetup", ["-f", "--show", img], { encoding: "utf8" }).trim();
    try {
      const s = await FileStore.open(dev);
      expect(s.size_bytes).toBe(32 << 20);
      expect(s.describe).toBe(`block device ${dev}`);
      await formatDrive(s, { drive_uuid: crypto.randomUUID(), extent_size_bytes: 1 << 20 });
      const d = await openDrive(s, dev);
      await d.data.write(0, new Uint8Array(4096).fill(7), true);
      await d.data.writeZeroes(4096, 8192, true);
      await d.data.trim(1 << 20, 1 << 20);
      const got = new Uint8Array(4096 * 3);
      await d.data.read(0, got);
      expect(got[0]).toBe(7);
      expect(got.subarray(4096).every((x) => x === 0)).toBe(true);
      await d.close();
    } finally {
      execFileSync("losetup", ["-d", dev]);
    }
  });
});

describe("preadv2(RWF_NOWAIT) cached reads", () => {
  test("returns exactly the file's bytes when cached, and never wrong data when not", async () => {
    const c = libc();
    expect(c).not.toBeNull();
    const dir = fs.mkdtempSync(`${os.tmpdir()}/nvmesh-nowait-`);
    const path = `${dir}/f.img`;
    const data = new Uint8Array(1 << 20);
    crypto.getRandomValues(data.subarray(0, 65536));
    data.set(data.subarray(0, 65536), 65536 * 7);
    await Bun.write(path, data);
    const fd = fs.openSync(path, "r");
    try {
      const dst = new Uint8Array(8192);
      const n = c!.readCached(fd, dst, 65536 * 7 - 4096);
      expect(n).toBe(8192); // just written: in the page cache
      expect(Buffer.from(dst).equals(Buffer.from(data.subarray(65536 * 7 - 4096, 65536 * 7 + 4096)))).toBe(true);
      fs.fdatasyncSync(fd);
      c!.fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
      const again = new Uint8Array(4096);
      const m = c!.readCached(fd, again, 65536 * 7);
      // Evicted pages give EAGAIN (11); if the kernel kept them, the bytes must still be right.
      if (m === -11) expect(again.every((b) => b === 0)).toBe(true);
      else expect(Buffer.from(again.subarray(0, m)).equals(Buffer.from(data.subarray(65536 * 7, 65536 * 7 + m)))).toBe(true);
      expect(c!.readCached(fd, new Uint8Array(16), data.length)).toBe(0); // end of file
    } finally {
      fs.closeSync(fd);
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
