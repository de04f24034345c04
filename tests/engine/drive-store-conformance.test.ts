/**
 * The one suite every DriveStore passes (STYLE practice 9): memory, the file stores (thread pool,
 * io_uring buffered and O_DIRECT), the data-area window of a formatted drive, and volumes over a
 * real target. A new backend adds one line to BACKENDS.
 *
 * Backends over a file also pass the durability and crash cases: what a flush or a FUA write
 * acknowledged has left the page cache for the device (cachestat(2) shows no dirty or writeback
 * page in its range), and a process killed with writes in flight leaves every acknowledged write
 * readable by the next open, and every other block either old or new, never torn.
 */
import { afterAll, describe, expect, test } from "bun:test";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { FileStore } from "../../src/engine/runtime/file-store.ts";
import { UringStore } from "../../src/engine/runtime/uring-store.ts";
import type { DriveIo } from "../../src/engine/runtime/open-drive-store.ts";
import { libc } from "../../src/ffi/libc.ts";
import { ROOT } from "../support/proc.ts";
import { formatDrive } from "../../src/engine/drive/format.ts";
import { openDrive } from "../../src/engine/drive/formatted-drive.ts";
import { MemoryStore } from "../../src/engine/drive/memory-store.ts";
import { DriveIoError, type DriveStore } from "../../src/engine/drive/store.ts";
import type { RaidLevel } from "../../src/engine/layout/types.ts";
import { startVolume } from "./volume-fixture.ts";

const SIZE = 8 << 20;
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "nvmesh-drive-conf-"));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));
let n = 0;

/** A debug-format volume as the client daemon exports it, over a real target; closing it stops all. */
async function debugVolume(level: RaidLevel): Promise<DriveStore> {
  const f = await startVolume(level, { capacity_bytes: 4 * 1024 * 1024, debug_format: true });
  const d = f.debug!;
  const close = d.close.bind(d);
  d.close = async () => {
    await close();
    await f.close();
  };
  return d;
}

/** Where a file-backed store keeps its bytes, and how to open it again (the durability cases). */
interface FileBacked {
  path: string;
  io: Exclude<DriveIo, "auto">;
}

/** The file behind the store made last by a file-backed backend (set by its make()). */
let lastFile: FileBacked | null = null;

function fileStore(io: FileBacked["io"], prefix: string): () => Promise<DriveStore> {
  return async () => {
    const p = path.join(tmp, `${prefix}${n++}.img`);
    lastFile = { path: p, io };
    if (io === "threadpool") return await FileStore.open(p, { create_size_bytes: SIZE });
    return await UringStore.open(p, { create_size_bytes: SIZE, direct: io === "io_uring-direct", inline_writes: io !== "io_uring-ring-writes" });
  };
}

/** The data area of a freshly formatted drive on the store `open` gives for a new file. */
function dataArea(open: (path: string) => Promise<DriveStore>, prefix: string): () => Promise<DriveStore> {
  return async () => {
    const store = await open(path.join(tmp, `${prefix}${n++}.img`));
    await formatDrive(store, { drive_uuid: crypto.randomUUID(), extent_size_bytes: 1 << 20 });
    return (await openDrive(store, "test")).data;
  };
}

const BACKENDS: [string, () => Promise<DriveStore>, FileBacked["io"] | null][] = [
  ["debug-format RAID1 volume over a target", () => debugVolume("1"), null],
  ["debug-format RAID0 volume over a target", () => debugVolume("0"), null],
  ["MemoryStore", async () => new MemoryStore(SIZE), null],
  ["FileStore (thread pool)", fileStore("threadpool", "f"), "threadpool"],
  ["UringStore, buffered", fileStore("io_uring", "u"), "io_uring"],
  ["UringStore, buffered, every write a ring op", fileStore("io_uring-ring-writes", "w"), "io_uring-ring-writes"],
  ["UringStore, O_DIRECT", fileStore("io_uring-direct", "o"), "io_uring-direct"],
  ["data area of a formatted FileStore", dataArea((p) => FileStore.open(p, { create_size_bytes: 16 << 20 }), "d"), null],
  ["data area of a formatted UringStore", dataArea((p) => UringStore.open(p, { create_size_bytes: 16 << 20 }), "e"), null],
];

/** Pages of the file's range not yet on the device (dirty or under writeback), by cachestat(2). */
function unwritten(file: string, offset: number, length: number): number {
  const fd = fs.openSync(file, "r");
  try {
    const st = libc()!.cacheState(fd, offset, length);
    if (st === null) throw new Error("cachestat(2) is missing: the durability cases need Linux 6.5 or later");
    return st.dirty + st.writeback;
  } finally {
    fs.closeSync(fd);
  }
}

function pattern(length: number, seed: number): Uint8Array<ArrayBuffer> {
  const b = new Uint8Array(length);
  for (let i = 0; i < length; i++) b[i] = (i * 31 + seed * 7 + (i >> 8)) & 0xff;
  return b;
}

async function expectCode(p: Promise<unknown>, code: DriveIoError["code"]): Promise<void> {
  const e = await p.then(() => null, (x: unknown) => x);
  expect(e).toBeInstanceOf(DriveIoError);
  expect((e as DriveIoError).code).toBe(code);
}

for (const [name, make, io] of BACKENDS) {
  describe(`DriveStore conformance: ${name}`, () => {
    test("read after write returns the written bytes, neighbours untouched", async () => {
      const s = await make();
      const a = pattern(4096, 1);
      await s.write(8192, a, false);
      const got = new Uint8Array(4096 * 3);
      await s.read(4096, got);
      expect(got.subarray(4096, 8192)).toEqual(a);
      await s.close();
    });

    test("large and unaligned I/O round-trips", async () => {
      const s = await make();
      const big = pattern(3 * 1024 * 1024 + 123, 2);
      await s.write(777, big, false);
      const got = new Uint8Array(big.length);
      await s.read(777, got);
      expect(got).toEqual(big);
      const tiny = new Uint8Array([9, 8, 7]);
      await s.write(s.size_bytes - 3, tiny, true);
      const last = new Uint8Array(3);
      await s.read(s.size_bytes - 3, last);
      expect(last).toEqual(tiny);
      await s.close();
    });

    test("out-of-bounds and malformed ranges fail with ERANGE", async () => {
      const s = await make();
      await expectCode(s.read(s.size_bytes - 1, new Uint8Array(2)), "ERANGE");
      await expectCode(s.write(s.size_bytes, new Uint8Array(1), false), "ERANGE");
      await expectCode(s.read(-1, new Uint8Array(1)), "ERANGE");
      await expectCode(s.read(0.5, new Uint8Array(1)), "ERANGE");
      await expectCode(s.writeZeroes(0, s.size_bytes + 1, false), "ERANGE");
      await expectCode(s.trim(s.size_bytes, 1), "ERANGE");
      await s.close();
    });

    test("writeZeroes reads back zeroes, aligned or not, and leaves neighbours", async () => {
      const s = await make();
      const a = pattern(64 * 1024, 3);
      await s.write(0, a, false);
      await s.writeZeroes(4096, 8192, false);
      await s.writeZeroes(20000, 333, true);
      const got = new Uint8Array(a.length);
      await s.read(0, got);
      const want = a.slice();
      want.fill(0, 4096, 4096 + 8192);
      want.fill(0, 20000, 20333);
      expect(got).toEqual(want);
      await s.close();
    });

    test("trim succeeds and the range stays readable", async () => {
      const s = await make();
      await s.write(0, pattern(16384, 4), false);
      await s.trim(4096, 8192);
      await s.trim(100, 5);
      await s.read(0, new Uint8Array(16384));
      await s.close();
    });

    test("flush succeeds; zero-length operations are accepted", async () => {
      const s = await make();
      await s.write(0, pattern(4096, 5), false);
      await s.flush();
      await s.write(10, new Uint8Array(0), false);
      await s.read(s.size_bytes, new Uint8Array(0));
      await s.writeZeroes(0, 0, false);
      await s.close();
    });

    test("concurrent writes to distinct blocks all land", async () => {
      const s = await make();
      const blocks = Array.from({ length: 64 }, (_, i) => pattern(4096, 100 + i));
      await Promise.all(blocks.map((b, i) => s.write(i * 4096, b, false)));
      await s.flush();
      const got = new Uint8Array(4096);
      for (let i = 0; i < blocks.length; i++) {
        await s.read(i * 4096, got);
        expect(got).toEqual(blocks[i]!);
      }
      await s.close();
    });

    test("one batch of writes larger than a tick's inline budget all land", async () => {
      // UringStore copies up to 4 MiB of a batch inline and sends the rest to the ring: 7 MiB
      // (and a small write after it) in one tick take both paths. Smaller stores (the volumes) get
      // the same shape scaled down.
      const s = await make();
      const mib = Math.min(1 << 20, Math.floor(s.size_bytes / 8 / 4096) * 4096);
      const blocks = Array.from({ length: 7 }, (_, i) => pattern(i === 6 ? mib - 4096 : mib, 40 + i));
      const last = pattern(4096, 99);
      await Promise.all([...blocks.map((b, i) => s.write(i * mib, b, false)), s.write(8 * mib - 4096, last, false)]);
      const got = new Uint8Array(mib);
      for (let i = 0; i < blocks.length; i++) {
        await s.read(i * mib, got.subarray(0, blocks[i]!.length));
        expect(got.subarray(0, blocks[i]!.length)).toEqual(blocks[i]!);
      }
      await s.read(8 * mib - 4096, got.subarray(0, 4096));
      expect(got.subarray(0, 4096)).toEqual(last);
      await s.close();
    });

    test("after close every operation fails with ECLOSED", async () => {
      const s = await make();
      await s.close();
      await expectCode(s.read(0, new Uint8Array(1)), "ECLOSED");
      await expectCode(s.write(0, new Uint8Array(1), false), "ECLOSED");
      await expectCode(s.flush(), "ECLOSED");
      await expectCode(s.writeZeroes(0, 1, false), "ECLOSED");
      await expectCode(s.trim(0, 1), "ECLOSED");
      await s.close();
    });

    if (io === null) return;

    test("a flush leaves nothing of the writes it covers in the page cache", async () => {
      const s = await make();
      const file = lastFile!;
      await s.write(65536, pattern(256 * 1024, 7), false);
      // The check can fail: buffered writes do leave dirty pages until the flush.
      if (io !== "io_uring-direct") expect(unwritten(file.path, 65536, 256 * 1024)).toBeGreaterThan(0);
      await s.flush();
      expect(unwritten(file.path, 65536, 256 * 1024)).toBe(0);
      await s.close();
    });

    test("a FUA write is on the device when it is acknowledged", async () => {
      const s = await make();
      const file = lastFile!;
      await s.write(0, pattern(4096, 8), false); // dirty neighbour: the FUA must not need it
      await s.write(1 << 20, pattern(64 * 1024, 9), true);
      expect(unwritten(file.path, 1 << 20, 64 * 1024)).toBe(0);
      await s.writeZeroes(2 << 20, 64 * 1024, true);
      expect(unwritten(file.path, 2 << 20, 64 * 1024)).toBe(0);
      await s.close();
    });

    test("a process killed with writes in flight: every acknowledged write survives, no block is torn", async () => {
      const s0 = await make();
      const file = lastFile!;
      await s0.close();
      const blocks = 512;
      const child = Bun.spawn([process.execPath, `${ROOT}/tests/support/store-crash-child.ts`, file.io, file.path, String(blocks)], {
        stdout: "pipe",
        stderr: "inherit",
      });
      // Killed once a good part of the writes were acknowledged, while others are in flight.
      const acked = new Set<number>();
      const dec = new TextDecoder();
      let text = "";
      for await (const chunk of child.stdout) {
        text += dec.decode(chunk, { stream: true });
        const lines = text.split("\n");
        text = lines.pop()!;
        for (const l of lines) if (l.startsWith("acked ")) acked.add(Number(l.slice(6)));
        if (acked.size >= blocks / 4) {
          child.kill("SIGKILL");
          break;
        }
      }
      await child.exited;
      expect(child.signalCode).toBe("SIGKILL");
      expect(acked.size).toBeGreaterThanOrEqual(blocks / 4);
      expect(acked.size).toBeLessThan(blocks);
      const s = await make2(file);
      const got = new Uint8Array(4096);
      let landed = 0;
      for (let i = 0; i < blocks; i++) {
        await s.read(i * 4096, got);
        const want = pattern(4096, 1000 + i);
        const isNew = Buffer.from(got).equals(Buffer.from(want));
        if (acked.has(i)) expect(isNew).toBe(true);
        else if (!isNew) expect(got.every((b) => b === 0)).toBe(true); // old, or new: never a mix
        if (isNew) landed++;
      }
      expect(landed).toBeGreaterThanOrEqual(acked.size);
      await s.close();
    }, 30_000);
  });
}

/** Opens a file-backed store's file again, the same way. */
async function make2(file: FileBacked): Promise<DriveStore> {
  if (file.io === "threadpool") return await FileStore.open(file.path);
  return await UringStore.open(file.path, { direct: file.io === "io_uring-direct", inline_writes: file.io !== "io_uring-ring-writes" });
}
