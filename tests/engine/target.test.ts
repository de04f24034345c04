/**
 * Session ↔ target over real sockets on 127.0.0.1: every opcode, pipelining, out-of-order
 * completion, and the error statuses a requester must be able to tell apart.
 */
import { afterEach, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { FileStore } from "../../src/engine/runtime/file-store.ts";
import type { FormattedDrive } from "../../src/engine/drive/formatted-api.ts";
import { openDrive } from "../../src/engine/drive/formatted-drive.ts";
import type { DriveStore } from "../../src/engine/drive/store.ts";
import { NIL_UUID, uuidFromString } from "../../src/engine/uuid.ts";
import { Status } from "../../src/engine/wire/header.ts";
import { type TargetHarness, dataBytes, fileDrive, memoryDrive, pattern, randomUuidString, startTarget, uuidBytes, statusOf } from "./target-fixture.ts";

let h: TargetHarness | null = null;
afterEach(() => {
  h?.stop();
  h = null;
});


describe("target service over loopback", () => {
  test("a FileStore drive: data written through the target is there after reopening the file", async () => {
    const dir = mkdtempSync(join(tmpdir(), "nvmesh-target-"));
    try {
      const path = join(dir, "d1.img");
      const d = await fileDrive(path);
      h = await startTarget([d]);
      const s = await h.session();
      const u = uuidBytes(d);
      await s.write(u, 1024 * 1024 - 512, pattern(11, 8192), true);
      await (await h.admin()).metaWrite(u, 1, new Uint8Array([5, 5]));
      await s.flush(u);
      h.stop();
      h = null;
      await d.close();
      const again = await openDrive(await FileStore.open(path), path);
      const got = new Uint8Array(8192);
      await again.data.read(1024 * 1024 - 512, got);
      expect(got).toEqual(pattern(11, 8192));
      expect((await again.metaRead()).generation).toBe(1);
      await again.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("HELLO returns the target info with its drives", async () => {
    const d = await memoryDrive();
    h = await startTarget([d]);
    const s = await h.session();
    expect(s.info.target_name).toBe("t1");
    expect(s.info.drives.map((x) => x.drive_uuid)).toEqual([d.info.drive_uuid]);
    expect(await s.listDrives()).toEqual(s.info.drives);
  });

  test("every data op round-trips: write, FUA write, read, flush, trim, write zeroes", async () => {
    const d = await memoryDrive();
    h = await startTarget([d]);
    const s = await h.session();
    const u = uuidBytes(d);
    const a = pattern(1, 8192);
    const b = pattern(2, 4096);
    await s.write(u, 0, a, false);
    await s.write(u, 100_000, b, true);
    await s.flush(u);
    const got = new Uint8Array(8192);
    await s.read(u, 0, got);
    expect(got).toEqual(a);
    const got2 = new Uint8Array(4096);
    await s.read(u, 100_000, got2);
    expect(got2).toEqual(b);

    await s.writeZeroes(u, 1000, 2000, true);
    await s.read(u, 0, got);
    const expectZ = a.slice();
    expectZ.fill(0, 1000, 3000);
    expect(got).toEqual(expectZ);

    await s.trim(u, 100_000, 4096);
    await s.read(u, 100_000, got2); // contents unspecified after trim; the read must succeed
    // The very last byte of the data area is addressable; zero-length ops are accepted.
    await s.write(u, dataBytes(d) - 1, new Uint8Array([7]), false);
    const last = new Uint8Array(1);
    await s.read(u, dataBytes(d) - 1, last);
    expect(last[0]).toBe(7);
    await s.read(u, 0, new Uint8Array(0));
  });

  test("1000 pipelined random writes, then pipelined reads, all verify", async () => {
    const block = 4096;
    const blocks = 256;
    const d = await memoryDrive();
    h = await startTarget([d]);
    const s = await h.session();
    const u = uuidBytes(d);
    // Random order, each block written several times: the last acknowledged write must win. To
    // keep "last" well-defined under out-of-order completion, writes to one block are serialized
    // by awaiting the previous one to that block.
    const expected = new Map<number, number>();
    const lastWrite = new Map<number, Promise<unknown>>();
    const all: Promise<unknown>[] = [];
    for (let i = 0; i < 1000; i++) {
      const blk = crypto.getRandomValues(new Uint32Array(1))[0]! % blocks;
      const seed = i + 1;
      expected.set(blk, seed);
      const prev = lastWrite.get(blk) ?? Promise.resolve();
      const p = prev.then(() => s.write(u, blk * block, pattern(seed, block), i % 7 === 0));
      lastWrite.set(blk, p);
      all.push(p);
    }
    await Promise.all(all);
    const reads = [...expected.entries()].map(async ([blk, seed]) => {
      const got = new Uint8Array(block);
      await s.read(u, blk * block, got);
      expect(got).toEqual(pattern(seed, block));
    });
    await Promise.all(reads);
  });

  test("responses complete out of order: a slow read does not hold back a fast one", async () => {
    const base = await memoryDrive();
    const gate = Promise.withResolvers<void>();
    const slowData: DriveStore = {
      ...base.data,
      size_bytes: base.data.size_bytes,
      describe: "gated",
      read: async (offset, dst) => {
        if (offset === 0) await gate.promise;
        return base.data.read(offset, dst);
      },
      write: (o, s, f) => base.data.write(o, s, f),
      flush: () => base.data.flush(),
      trim: (o, l) => base.data.trim(o, l),
      writeZeroes: (o, l, f) => base.data.writeZeroes(o, l, f),
      close: () => base.data.close(),
    };
    const d: FormattedDrive = { ...base, info: base.info, data: slowData };
    h = await startTarget([d]);
    const s = await h.session();
    const u = uuidBytes(d);
    const order: string[] = [];
    const slow = s.read(u, 0, new Uint8Array(512)).then(() => order.push("slow"));
    const fast = s.read(u, 4096, new Uint8Array(512)).then(() => order.push("fast"));
    await fast;
    expect(order).toEqual(["fast"]);
    gate.resolve();
    await slow;
    expect(order).toEqual(["fast", "slow"]);
  });

  test("out of range → OUT_OF_RANGE with a message, and the connection stays usable", async () => {
    const d = await memoryDrive();
    const n = dataBytes(d);
    h = await startTarget([d]);
    const s = await h.session();
    const u = uuidBytes(d);
    const cases: Promise<unknown>[] = [
      s.read(u, n, new Uint8Array(1)),
      s.read(u, n - 100, new Uint8Array(512)),
      s.write(u, 2 ** 52, new Uint8Array(512), false),
      s.write(u, Number.MAX_SAFE_INTEGER, new Uint8Array(512), false),
      s.trim(u, 0, n + 1),
      s.writeZeroes(u, n - 1, 2, false),
    ];
    for (const c of cases) expect(await statusOf(c)).toBe(Status.OUT_OF_RANGE);
    await expect(s.read(u, n, new Uint8Array(1))).rejects.toThrow(
      `range ${n}+1 is beyond the data area (${n} bytes)`,
    );
    expect(s.closed).toBe(false);
    await s.write(u, 0, pattern(9, 512), false);
    const got = new Uint8Array(512);
    await s.read(u, 0, got);
    expect(got).toEqual(pattern(9, 512));
  });

  test("unknown drive → NO_SUCH_DRIVE for data and metadata ops", async () => {
    h = await startTarget([await memoryDrive()]);
    const s = await h.session();
    const other = uuidFromString(randomUuidString());
    expect(await statusOf(s.read(other, 0, new Uint8Array(512)))).toBe(Status.NO_SUCH_DRIVE);
    expect(await statusOf(s.write(other, 0, new Uint8Array(512), false))).toBe(Status.NO_SUCH_DRIVE);
    expect(await statusOf(s.flush(other))).toBe(Status.NO_SUCH_DRIVE);
    const admin = await h.admin();
    expect(await statusOf(admin.metaRead(other))).toBe(Status.NO_SUCH_DRIVE);
    expect(await statusOf(admin.claim(other, randomUuidString()))).toBe(Status.NO_SUCH_DRIVE);
    expect(s.closed).toBe(false);
  });

  test("META_READ / META_WRITE: empty first, newer generations win, older or equal are STALE", async () => {
    const d = await memoryDrive();
    h = await startTarget([d]);
    const s = await h.admin();
    const u = uuidBytes(d);
    expect(await s.metaRead(u)).toEqual({ generation: 0, payload: null });
    await s.metaWrite(u, 5, new Uint8Array([1, 2, 3]));
    const got = await s.metaRead(u);
    expect(got.generation).toBe(5);
    expect(new Uint8Array(got.payload!)).toEqual(new Uint8Array([1, 2, 3]));
    expect(await statusOf(s.metaWrite(u, 5, new Uint8Array([9])))).toBe(Status.STALE);
    expect(await statusOf(s.metaWrite(u, 4, new Uint8Array([9])))).toBe(Status.STALE);
    await s.metaWrite(u, 6, new Uint8Array([4]));
    expect((await s.metaRead(u)).generation).toBe(6);
  });

  test("racing META_WRITEs of the same generation from two connections: exactly one wins", async () => {
    const d = await memoryDrive();
    h = await startTarget([d]);
    const [s1, s2] = [await h.admin(), await h.admin()];
    const u = uuidBytes(d);
    const r = await Promise.all([
      statusOf(s1.metaWrite(u, 1, new Uint8Array([1]))),
      statusOf(s2.metaWrite(u, 1, new Uint8Array([2]))),
    ]);
    expect(r.map(String).sort()).toEqual(["ok", String(Status.STALE)].sort());
  });

  test("CLAIM: first claim wins, same cluster again is a no-op, another cluster is REFUSED", async () => {
    const d = await memoryDrive();
    h = await startTarget([d]);
    const s = await h.admin();
    const u = uuidBytes(d);
    const c1 = randomUuidString();
    await s.claim(u, c1);
    await s.claim(u, c1);
    expect(await statusOf(s.claim(u, randomUuidString()))).toBe(Status.REFUSED);
    expect(await statusOf(s.claim(u, NIL_UUID))).toBe(Status.INVALID);
    expect((await s.listDrives())[0]!.cluster_uuid).toBe(c1);
  });

  test("hot-plug: a removed drive answers NO_SUCH_DRIVE, an added one is served at once", async () => {
    const d1 = await memoryDrive();
    const d2 = await memoryDrive();
    h = await startTarget([d1]);
    const s = await h.session();
    expect(await statusOf(s.flush(uuidBytes(d2)))).toBe(Status.NO_SUCH_DRIVE);
    h.service.addDrive(d2);
    await s.flush(uuidBytes(d2));
    expect(() => h!.service.addDrive(d2)).toThrow("already served");
    expect(h.service.removeDrive(d1.info.drive_uuid)).toBe(d1);
    expect(await statusOf(s.read(uuidBytes(d1), 0, new Uint8Array(1)))).toBe(Status.NO_SUCH_DRIVE);
    expect((await s.listDrives()).map((x) => x.drive_uuid)).toEqual([d2.info.drive_uuid]);
  });

  test("a target with max_inflight_per_conn 2 still completes 200 pipelined requests", async () => {
    const d = await memoryDrive();
    h = await startTarget([d], { max_inflight_per_conn: 2 });
    const s = await h.session();
    const u = uuidBytes(d);
    await Promise.all(Array.from({ length: 200 }, (_, i) => s.write(u, i * 512, pattern(i, 512), false)));
    const got = new Uint8Array(512);
    await s.read(u, 199 * 512, got);
    expect(got).toEqual(pattern(199, 512));
  });
});
