/**
 * The dirty (write-intent) bitmap over real sockets: DIRTY_GET/SET/CLEAR by region, the DIRTY
 * flag on WRITE, WRITE_ZEROES and TRIM, the rule that a bit is durable on the drive before the
 * write it covers is executed, and bits that survive closing and reopening the drive.
 */
import { afterEach, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { formatDrive } from "../../src/engine/drive/format.ts";
import { openDrive } from "../../src/engine/drive/formatted-drive.ts";
import { DriveIoError } from "../../src/engine/drive/store.ts";
import type { Superblock } from "../../src/engine/drive/superblock.ts";
import { FileStore } from "../../src/engine/runtime/file-store.ts";
import { Status } from "../../src/engine/wire/header.ts";
import type { LogLine } from "./target-fixture.ts";
import { type TargetHarness, dataBytes, fileDrive, pattern, randomUuidString, recordingLogger, startTarget, uuidBytes, GatedStore, until, statusOf } from "./target-fixture.ts";

const MiB = 1024 * 1024;
const R = MiB; // bitmap_region_bytes of every drive format makes

let h: TargetHarness | null = null;
afterEach(() => {
  h?.stop();
  h = null;
});

interface Written {
  offset: number;
  length: number;
  fua: boolean;
}

/**
 * A MemoryStore that records every write once it has taken effect, and can hold writes to the
 * bitmap area at a gate until the test opens it.
 */
class BitmapGatedStore extends GatedStore {
  sb: Superblock | null = null;
  readonly done: Written[] = [];
  constructor(size_bytes: number) {
    super(size_bytes, (op, offset) => op === "write" && this.inBitmap(offset));
  }
  override async write(offset: number, src: Uint8Array, fua: boolean): Promise<void> {
    await super.write(offset, src, fua);
    this.done.push({ offset, length: src.length, fua });
  }
  inBitmap(offset: number): boolean {
    const sb = this.sb!;
    return offset >= sb.bitmap_offset && offset < sb.bitmap_offset + sb.bitmap_bytes;
  }
  /** What the writes that took effect were, in order: "bitmap" (with FUA or not) or "data". */
  kinds(): string[] {
    return this.done.map((w) => (this.inBitmap(w.offset) ? (w.fua ? "bitmap+fua" : "bitmap") : "data"));
  }
  /** The first bitmap byte as it is on the "drive". */
  async bitmapByte(i: number): Promise<number> {
    const b = new Uint8Array(1);
    await this.read(this.sb!.bitmap_offset + i, b);
    return b[0]!;
  }
}

async function gatedDrive(size_mib = 16) {
  const store = new BitmapGatedStore(size_mib * MiB);
  store.sb = await formatDrive(store, { drive_uuid: randomUuidString(), extent_size_bytes: MiB });
  const d = await openDrive(store, "gated");
  store.done.length = 0;
  return { store, d };
}



describe("DIRTY_GET, DIRTY_SET, DIRTY_CLEAR", () => {
  test("a range marks every region it touches, by 1 MiB region boundaries", async () => {
    const { store, d } = await gatedDrive();
    h = await startTarget([d]);
    const s = await h.session();
    const u = uuidBytes(d);
    const n = dataBytes(d);
    expect(n).toBeGreaterThan(8 * R);
    expect(await s.dirtyGet(u, 0, n)).toEqual([]);

    await s.dirtySet(u, R - 1, 2); // the last byte of region 0 and the first of region 1
    expect(await s.dirtyGet(u, 0, n)).toEqual([0, 1]);
    expect(await s.dirtyGet(u, R, 1)).toEqual([1]);
    expect(await s.dirtyGet(u, R - 1, 1)).toEqual([0]);
    expect(await s.dirtyGet(u, 2 * R, n - 2 * R)).toEqual([]);
    // Indices are absolute, whatever the range asked.
    await s.dirtySet(u, 5 * R, R); // exactly region 5
    expect(await s.dirtyGet(u, 4 * R + 17, 2 * R)).toEqual([5]);
    // Bit i = byte i >> 3, bit i & 7, LSB first, on the drive.
    expect(await store.bitmapByte(0)).toBe(0b0010_0011);

    await s.dirtyClear(u, R, R); // region 1 only
    expect(await s.dirtyGet(u, 0, n)).toEqual([0, 5]);
    expect(await store.bitmapByte(0)).toBe(0b0010_0001);
    // Zero-length ranges touch nothing.
    await s.dirtySet(u, 7 * R, 0);
    await s.dirtyClear(u, 0, 0);
    expect(await s.dirtyGet(u, 0, 0)).toEqual([]);
    expect(await s.dirtyGet(u, 0, n)).toEqual([0, 5]);
    // The last region of the data area.
    await s.dirtySet(u, n - 1, 1);
    expect(await s.dirtyGet(u, n - 1, 1)).toEqual([Math.floor((n - 1) / R)]);
    // Every persist was a FUA write to the bitmap.
    expect(new Set(store.kinds())).toEqual(new Set(["bitmap+fua"]));
  });

  test("ranges outside the data area are OUT_OF_RANGE and change nothing", async () => {
    const { d } = await gatedDrive();
    h = await startTarget([d]);
    const s = await h.session();
    const u = uuidBytes(d);
    const n = dataBytes(d);
    expect(await statusOf(s.dirtySet(u, n - 1, 2))).toBe(Status.OUT_OF_RANGE);
    expect(await statusOf(s.dirtySet(u, n, 1))).toBe(Status.OUT_OF_RANGE);
    expect(await statusOf(s.dirtyGet(u, 2 ** 52, 1))).toBe(Status.OUT_OF_RANGE);
    expect(await statusOf(s.dirtyClear(u, n + 1, 0))).toBe(Status.OUT_OF_RANGE);
    expect(await statusOf(s.write(u, n - 10, new Uint8Array(20), false, { dirty: true }))).toBe(Status.OUT_OF_RANGE);
    expect(await s.dirtyGet(u, 0, n)).toEqual([]);
  });
});

describe("the DIRTY flag", () => {
  test("WRITE, WRITE_ZEROES and TRIM with DIRTY mark their regions; without it nothing is marked", async () => {
    const { d } = await gatedDrive();
    h = await startTarget([d]);
    const s = await h.session();
    const u = uuidBytes(d);
    const n = dataBytes(d);
    await s.write(u, 0, pattern(1, 4096), false);
    await s.writeZeroes(u, R, 4096, false);
    await s.trim(u, 2 * R, 4096);
    expect(await s.dirtyGet(u, 0, n)).toEqual([]);
    await s.write(u, 3 * R - 100, pattern(2, 200), true, { dirty: true });
    await s.writeZeroes(u, 5 * R, 4096, false, { dirty: true });
    await s.trim(u, 7 * R, 2 * R, { dirty: true });
    expect(await s.dirtyGet(u, 0, n)).toEqual([2, 3, 5, 7, 8]);
    const got = new Uint8Array(200);
    await s.read(u, 3 * R - 100, got);
    expect(got).toEqual(pattern(2, 200));
  });

  test("the bitmap block is durable before the write it covers is executed", async () => {
    const { store, d } = await gatedDrive();
    h = await startTarget([d]);
    const s = await h.session();
    const u = uuidBytes(d);

    store.gated = true;
    let acked = false;
    const w = s.write(u, 4096, pattern(3, 4096), false, { dirty: true }).then(() => {
      acked = true;
    });
    await until(() => store.blocked === 1);
    // A second write to the same region finds its bit set in RAM, but not durable: it waits too.
    const w2 = s.write(u, 8192, pattern(4, 4096), false, { dirty: true });
    await s.dirtyGet(u, 0, 0); // every request above has started on the target
    expect(store.kinds()).toEqual([]); // no data write was issued
    expect(acked).toBe(false);

    store.open();
    await Promise.all([w, w2]);
    const kinds = store.kinds();
    expect(kinds[0]).toBe("bitmap+fua");
    expect(kinds.filter((k) => k === "data").length).toBe(2);
    expect(kinds.slice(1).every((k) => k === "data" || k === "bitmap+fua")).toBe(true);
    expect(await store.bitmapByte(0)).toBe(1);

    // Now durable: a third write to the region does not touch the bitmap again.
    store.done.length = 0;
    await s.write(u, 0, pattern(5, 512), false, { dirty: true });
    expect(store.kinds()).toEqual(["data"]);
  });

  test("a failed bitmap write fails the write, which never reaches the data area; a retry persists", async () => {
    const { store, d } = await gatedDrive();
    h = await startTarget([d]);
    const s = await h.session();
    const u = uuidBytes(d);
    let fail = true;
    const write = store.write.bind(store);
    store.write = async (offset, src, fua) => {
      if (fail && store.inBitmap(offset)) throw new DriveIoError("injected", "EIO");
      return write(offset, src, fua);
    };
    expect(await statusOf(s.write(u, 2 * R, pattern(6, 4096), false, { dirty: true }))).toBe(Status.IO_ERROR);
    expect(store.kinds()).toEqual([]);
    fail = false;
    await s.write(u, 2 * R, pattern(6, 4096), false, { dirty: true });
    expect(store.kinds()).toEqual(["bitmap+fua", "data"]);
    expect(await store.bitmapByte(0)).toBe(0b100);
  });

  test("bits set through the target survive closing and reopening the drive (FileStore)", async () => {
    const dir = mkdtempSync(join(tmpdir(), "nvmesh-dirty-"));
    try {
      const path = join(dir, "d1.img");
      const d = await fileDrive(path, 16);
      h = await startTarget([d]);
      const s = await h.session();
      const u = uuidBytes(d);
      await s.write(u, 3 * R + 5, pattern(7, 4096), false, { dirty: true });
      await s.dirtySet(u, 9 * R, 1);
      await s.dirtySet(u, 0, 2 * R);
      await s.dirtyClear(u, 0, 1);
      h.stop();
      h = null;
      await d.close();

      const again = await openDrive(await FileStore.open(path), path);
      expect(again.bitmap_loaded).toBe(true);
      expect(again.bitmap[0]).toBe(0b0000_1010);
      expect(again.bitmap[1]).toBe(0b0000_0010);
      h = await startTarget([again]);
      const s2 = await h.session();
      expect(await s2.dirtyGet(u, 0, dataBytes(again))).toEqual([1, 3, 9]);
      await s2.dirtyClear(u, 0, dataBytes(again));
      h.stop();
      h = null;
      await again.close();

      const third = await openDrive(await FileStore.open(path), path);
      expect(third.bitmap.every((b) => b === 0)).toBe(true);
      await third.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("an unreadable bitmap counts every region as dirty, and is rewritten on the first DIRTY write", async () => {
    const store = new BitmapGatedStore(16 * MiB);
    store.sb = await formatDrive(store, { drive_uuid: randomUuidString(), extent_size_bytes: MiB });
    const read = store.read.bind(store);
    store.read = async (offset, dst) => {
      if (store.inBitmap(offset)) throw new DriveIoError("latent sector error", "EIO");
      return read(offset, dst);
    };
    const logs: LogLine[] = [];
    const d = await openDrive(store, "bad-bitmap", { log: recordingLogger(logs) });
    store.read = read;
    expect(d.bitmap_loaded).toBe(false);
    expect(logs.some((l) => l.level === "warn" && l.msg.includes("bitmap unreadable"))).toBe(true);
    h = await startTarget([d]);
    const s = await h.session();
    const u = uuidBytes(d);
    const n = dataBytes(d);
    const all = Array.from({ length: Math.ceil(n / R) }, (_, i) => i);
    expect(await s.dirtyGet(u, 0, n)).toEqual(all);
    store.done.length = 0;
    // The bit is set in RAM already, but not on the drive: the write persists it first.
    await s.write(u, 0, pattern(8, 512), false, { dirty: true });
    expect(store.kinds()).toEqual(["bitmap+fua", "data"]);
    expect(await store.bitmapByte(0)).toBe(0xff);
  });
});

describe("INTENT bits (a mirror leg's unflushed writes)", () => {
  test("marked before the write, cleared by the target after 3 quiet flushes; DIRTY bits and unflushed regions stay", async () => {
    const { store, d } = await gatedDrive();
    h = await startTarget([d], { writeback_ms: 3_600_000 }); // only our flushes count here
    const s = await h.session();
    const u = uuidBytes(d);
    const n = dataBytes(d);
    const data = pattern(4096, 7);

    await s.write(u, 0, data, false, { intent: true }); // region 0: the target's bit
    await s.write(u, 2 * R, data, false, { dirty: true }); // region 2: the TOMA's bit
    expect(await s.dirtyGet(u, 0, n)).toEqual([0, 2]);
    expect(await store.bitmapByte(0)).toBe(0b0000_0101);

    await s.flush(u);
    await s.flush(u);
    expect(await s.dirtyGet(u, 0, n)).toEqual([0, 2]); // lazily: not after one or two flushes
    await s.flush(u);
    expect(await s.dirtyGet(u, 0, n)).toEqual([2]);
    // The clear is persisted after the flush's answer, not before it.
    for (let i = 0; i < 100 && (await store.bitmapByte(0)) !== 0b0000_0100; i++) await Bun.sleep(5);
    expect(await store.bitmapByte(0)).toBe(0b0000_0100);

    // A DIRTY_CLEAR of a region with an unflushed write leaves the bit to the target.
    await s.write(u, 3 * R, data, false, { intent: true });
    await s.dirtyClear(u, 2 * R, 2 * R);
    expect(await s.dirtyGet(u, 0, n)).toEqual([3]);
    for (let i = 0; i < 3; i++) await s.flush(u);
    expect(await s.dirtyGet(u, 0, n)).toEqual([]);
  });

  test("with no flush from any client, the target's own writeback flushes clear them; DIRTY bits stay", async () => {
    const { d } = await gatedDrive();
    h = await startTarget([d], { writeback_ms: 20 });
    const s = await h.session();
    const u = uuidBytes(d);
    const n = dataBytes(d);
    await s.write(u, 0, pattern(4096, 8), false, { intent: true });
    await s.write(u, 2 * R, pattern(4096, 9), false, { dirty: true });
    expect(await s.dirtyGet(u, 0, n)).toEqual([0, 2]);
    for (let i = 0; i < 200 && (await s.dirtyGet(u, 0, n)).length !== 1; i++) await Bun.sleep(10);
    expect(await s.dirtyGet(u, 0, n)).toEqual([2]);
  });
});

describe("bits of LOCKs (the holder writes the other legs under a lock held only here)", () => {
  test("a LOCK marks its region before it is answered; the bit stays while any lock is held there, and clears after UNLOCK and quiet flushes", async () => {
    const { store, d } = await gatedDrive();
    h = await startTarget([d], { writeback_ms: 3_600_000 }); // only our flushes count here
    const s = await h.session({ client_id: 7 });
    const u = uuidBytes(d);
    const n = dataBytes(d);

    // The LOCK waits for the bitmap block: its answer means the mark is on the drive.
    store.gated = true;
    const locked = s.lock(u, R + 4096, 4096);
    let answered = false;
    void locked.then(() => (answered = true));
    await until(() => store.blocked === 1);
    await s.dirtyGet(u, 0, 0); // the LOCK has been executed as far as it can
    expect(answered).toBe(false);
    store.open();
    await locked;
    expect(await store.bitmapByte(0)).toBe(0b0000_0010);
    expect(await s.dirtyGet(u, 0, n)).toEqual([1]);

    for (let i = 0; i < 5; i++) await s.flush(u);
    expect(await s.dirtyGet(u, 0, n)).toEqual([1]); // held: never cleared
    await s.unlock(u, R + 4096, 4096);
    for (let i = 0; i < 3; i++) await s.flush(u);
    expect(await s.dirtyGet(u, 0, n)).toEqual([]);
  });

  test("DIRTY_INHERITED lists the bits a new serving of the drive found set, until DIRTY_SET or DIRTY_CLEAR touch them", async () => {
    const dir = mkdtempSync(join(tmpdir(), "nvmesh-inherit-"));
    try {
      const path = join(dir, "d1.img");
      const d = await fileDrive(path, 16);
      h = await startTarget([d], { writeback_ms: 3_600_000 });
      const s = await h.session({ client_id: 9 });
      const u = uuidBytes(d);
      const n = dataBytes(d);
      // A lock held when the target stops (a crash), an INTENT write, a DIRTY write.
      await s.lock(u, 2 * R, 4096);
      await s.write(u, 4 * R, pattern(4096, 3), false, { intent: true });
      await s.write(u, 6 * R, pattern(4096, 4), false, { dirty: true });
      const t = await h.toma();
      expect(await t.dirtyInherited(u, 0, n)).toEqual([]); // all set during this serving
      h.stop();
      h = null;
      await d.close();

      const again = await openDrive(await FileStore.open(path), path);
      h = await startTarget([again], { writeback_ms: 3_600_000 });
      const t2 = await h.toma();
      expect(await t2.dirtyInherited(u, 0, n)).toEqual([2, 4, 6]);
      // Bits of the old serving are the TOMA's: flushes do not clear them.
      const s2 = await h.session({ client_id: 9 });
      await s2.write(u, 8 * R, pattern(4096, 5), false, { intent: true });
      for (let i = 0; i < 4; i++) await s2.flush(u);
      expect(await t2.dirtyGet(u, 0, n)).toEqual([2, 4, 6]);
      expect(await t2.dirtyInherited(u, 0, n)).toEqual([2, 4, 6]);
      await t2.dirtyClear(u, 2 * R, 1);
      await t2.dirtySet(u, 4 * R, 1);
      expect(await t2.dirtyInherited(u, 0, n)).toEqual([6]);
      expect(await t2.dirtyGet(u, 0, n)).toEqual([4, 6]);
      // Clients may not ask.
      expect(await statusOf(s2.dirtyInherited(u, 0, n))).toBe(Status.REFUSED);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
