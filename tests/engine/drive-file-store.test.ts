/**
 * What the file stores (FileStore: the thread pool; UringStore: io_uring, buffered and O_DIRECT)
 * do beyond the shared conformance suite: exclusive open, hole punching and its one-time log, a
 * file shrinking under it, close with I/O in flight, a real block device (loop device). Then what
 * only UringStore does: the fallback when no ring can be set up, and the inline-write breaker on
 * a file whose writes really block (a FUSE file over an NBD server with a write delay).
 */
import { afterAll, describe, expect, test } from "bun:test";
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { FileStore } from "../../src/engine/runtime/file-store.ts";
import { UringStore } from "../../src/engine/runtime/uring-store.ts";
import { openDriveStore } from "../../src/engine/runtime/open-drive-store.ts";
import type { DriveStore } from "../../src/engine/drive/store.ts";
import { requireTool } from "../support/proc.ts";
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

interface OpenOpts {
  create_size_bytes?: number;
  log?: Logger;
}

const KINDS: [string, string, (p: string, o?: OpenOpts) => Promise<DriveStore>][] = [
  ["FileStore (thread pool)", "thread pool", (p, o) => FileStore.open(p, o)],
  ["UringStore, buffered", "io_uring, buffered, inline writes", (p, o) => UringStore.open(p, o)],
  ["UringStore, O_DIRECT", "io_uring, O_DIRECT", (p, o) => UringStore.open(p, { ...o, direct: true })],
];

for (const [name, io_path, open] of KINDS) describe(name, () => {
  const file = (what: string) => path.join(tmp, `${io_path.replace(/[^a-z]+/g, "-")}-${what}`);

  test("names its I/O path", async () => {
    const s = await open(file("io.img"), { create_size_bytes: 1 << 20 });
    expect(s.io_path).toBe(io_path);
    await s.close();
  });

  test("a second open of the same drive is refused while the first holds it", async () => {
    const p = file("excl.img");
    const a = await open(p, { create_size_bytes: 1 << 20 });
    const e = await open(p).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(DriveIoError);
    expect(String((e as Error).message)).toContain("is in use by another process");
    await a.close();
    const b = await open(p);
    expect(b.size_bytes).toBe(1 << 20);
    expect(b.describe).toBe(`file ${p}`);
    await b.close();
  });

  test("opening a missing path without create fails with EIO naming the path", async () => {
    const p = file("missing.img");
    const e = await open(p).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(DriveIoError);
    expect((e as DriveIoError).code).toBe("EIO");
    expect((e as Error).message).toContain(p);
  });

  test("writeZeroes punches a hole (blocks freed) and logs the chosen path once", async () => {
    const p = file("punch.img");
    const { log, lines } = recording();
    const s = await open(p, { create_size_bytes: 8 << 20, log });
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
    const p = file("shrink.img");
    const s = await open(p, { create_size_bytes: 1 << 20 });
    fs.truncateSync(p, 4096);
    const e = await s.read(8192, new Uint8Array(4096)).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(DriveIoError);
    expect((e as DriveIoError).code).toBe("EIO");
    await s.close();
  });

  test("close waits for in-flight I/O, which completes", async () => {
    const p = file("inflight.img");
    const s = await open(p, { create_size_bytes: 4 << 20 });
    const writes = Array.from({ length: 32 }, (_, i) => s.write(i * 4096, new Uint8Array(4096).fill(i), false));
    await s.close();
    await Promise.all(writes);
    const r = await open(p);
    const b = new Uint8Array(4096);
    await r.read(31 * 4096, b);
    expect(b[0]).toBe(31);
    await r.close();
  });

  test("a loop block device: size by seeking, format, open, I/O", async () => {
    const img = file("loop.img");
    fs.writeFileSync(img, "");
    fs.truncateSync(img, 32 << 20);
    // Loop devices need root and losetup (util-linux); fail loudly otherwise, never skip.
    const dev = execFileSync("losetup", ["-f", "--show", img], { encoding: "utf8" }).trim();
    try {
      const s = await open(dev);
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

describe("UringStore beyond the shared cases", () => {
  test("where no ring can be set up, auto falls back to the thread pool, logged and named", async () => {
    const p = path.join(tmp, "fallback.img");
    const { log, lines } = recording();
    // A ring of 0 entries is a real refusal by the kernel (EINVAL), as a disabled io_uring is.
    const s = await openDriveStore(p, { create_size_bytes: 1 << 20, log, entries: 0 });
    expect(s).toBeInstanceOf(FileStore);
    expect(s.io_path).toBe("thread pool (io_uring: io_uring_setup failed: errno 22)");
    expect(lines.filter((l) => l.startsWith("warn io_uring unavailable"))).toHaveLength(1);
    await s.write(0, new Uint8Array(4096).fill(1), true);
    await s.close();
    // Asked for explicitly, io_uring is that or an error.
    const e = await openDriveStore(p, { io: "io_uring", entries: 0 }).catch((x: unknown) => x);
    expect(String(e)).toContain("io_uring_setup failed");
  });

  test("a buffered write that blocks sends writes through the ring for a while (FUSE file, 30 ms write delay)", async () => {
    for (const t of ["nbdkit", "nbdfuse", "fusermount3"]) requireTool(t);
    // nbdkit (its delay filter) serves a memory disk whose writes take 30 ms; nbdfuse shows it as
    // a file, whose buffered writes are synchronous through FUSE: a real write that blocks.
    const dir = fs.mkdtempSync(path.join(tmp, "fuse-"));
    const sock = path.join(dir, "nbd.sock");
    const mnt = path.join(dir, "mnt");
    fs.mkdirSync(mnt);
    const nbd = Bun.spawn(["nbdkit", "-f", "-U", sock, "--filter=delay", "memory", "16M", "wdelay=30ms"], { stderr: "pipe" });
    // nbdfuse connects once, at start: it must not start before nbdkit listens (a loaded machine
    // took seconds to get there, and nbdfuse then exited 1).
    for (let i = 0; i < 600 && !fs.existsSync(sock); i++) await Bun.sleep(50);
    if (!fs.existsSync(sock)) throw new Error(`nbdkit did not listen on ${sock} within 30 s (exit ${nbd.exitCode ?? "none yet"})`);
    const fuse = Bun.spawn(["nbdfuse", path.join(mnt, "disk"), `nbd+unix:///?socket=${sock}`], { stderr: "pipe" });
    try {
      const disk = path.join(mnt, "disk");
      // nbdfuse mounts in well under a second when the machine is idle; a loaded CI machine has
      // taken over 10 s. Waited for up to 30 s, and a mount that never came says so.
      const mounted = () => fs.existsSync(disk) && fs.statSync(disk).size === 16 << 20;
      for (let i = 0; i < 600 && !mounted(); i++) await Bun.sleep(50);
      if (!mounted()) throw new Error(`nbdfuse did not mount ${disk} within 30 s (exit ${fuse.exitCode ?? "none yet"})`);
      const { log, lines } = recording();
      const s = await UringStore.open(disk, { log, no_lock: true });
      const block = new Uint8Array(4096).fill(3);
      // Inline: the event loop is held for the whole write, so a timer set before cannot fire.
      let fired = false;
      setTimeout(() => (fired = true), 0);
      await s.write(0, block, false);
      expect(fired).toBe(false);
      expect(lines.filter((l) => l.includes("blocked the event loop"))).toHaveLength(1);
      // Now through the ring: the loop runs while the write waits for the disk.
      let ticks = 0;
      const ticker = setInterval(() => ticks++, 1);
      await s.write(4096, block, false);
      clearInterval(ticker);
      expect(ticks).toBeGreaterThan(0);
      const got = new Uint8Array(8192);
      await s.read(0, got);
      expect(got.every((b) => b === 3)).toBe(true);
      await s.close();
    } finally {
      await Bun.spawn(["fusermount3", "-u", mnt]).exited;
      const timer = setTimeout(() => fuse.kill(9), 10_000);
      await fuse.exited;
      clearTimeout(timer);
      nbd.kill();
      await nbd.exited;
    }
  }, 60_000);
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
