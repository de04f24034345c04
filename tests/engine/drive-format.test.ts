/**
 * Format, open, metadata slots and claim: each case of the superblock recovery table
 * (src/engine/drive/locate-superblock.ts) and of the slot choice (chooseMetaSlot) has a test.
 */
import { describe, expect, test } from "bun:test";
import { formatDrive } from "../../src/engine/drive/format.ts";
import { AlreadyClaimedError, DriveFormatError, StaleGenerationError } from "../../src/engine/drive/formatted-api.ts";
import { openDrive } from "../../src/engine/drive/formatted-drive.ts";
import { MemoryStore } from "../../src/engine/drive/memory-store.ts";
import { DriveIoError } from "../../src/engine/drive/store.ts";
import {
  backupSuperblockOffset,
  checkSuperblock,
  computeGeometry,
  isInvalid,
  minDriveBytes,
  SUPERBLOCK_BYTES,
  type Superblock,
} from "../../src/engine/drive/superblock.ts";
import type { Logger } from "../../src/engine/env.ts";
import { NIL_UUID } from "../../src/engine/uuid.ts";

const MiB = 1 << 20;
const SIZE = 64 * MiB;
const DRIVE = "11111111-2222-4333-8444-555555555555";
const CLUSTER = "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee";

async function formatted(size = SIZE): Promise<{ store: MemoryStore; sb: Superblock }> {
  const store = new MemoryStore(size);
  const sb = await formatDrive(store, { drive_uuid: DRIVE, extent_size_bytes: MiB });
  return { store, sb };
}

/** A store whose close() is a no-op, so a test can reopen the same bytes after drive.close(). */
function reopenable(store: MemoryStore): MemoryStore {
  return Object.assign(Object.create(store), { close: async () => {} });
}

async function formatError(p: Promise<unknown>): Promise<string> {
  const e = await p.then(() => null, (x: unknown) => x);
  expect(e).toBeInstanceOf(DriveFormatError);
  return (e as Error).message;
}

async function flip(store: MemoryStore, offset: number): Promise<void> {
  const b = new Uint8Array(1);
  await store.read(offset, b);
  b[0]! ^= 0x10;
  await store.write(offset, b, false);
}

function warnings(): { log: Logger; lines: string[] } {
  const lines: string[] = [];
  const rec = (m: string) => void lines.push(m);
  return { log: { debug: () => {}, info: rec, warn: rec, error: rec }, lines };
}

describe("geometry", () => {
  test("1 GiB drive, 16 MiB extents: regions in order, 1 MiB aligned, bitmap covers data", () => {
    const g = computeGeometry(1 << 30, 16 * MiB);
    if (isInvalid(g)) throw new Error(g.invalid);
    expect(g.meta_offset).toBe(MiB);
    expect(g.bitmap_offset).toBe(3 * MiB);
    expect(g.data_offset % MiB).toBe(0);
    expect(g.data_offset).toBeGreaterThanOrEqual(g.bitmap_offset + g.bitmap_bytes);
    expect(g.bitmap_bytes * 8 * g.bitmap_region_bytes).toBeGreaterThanOrEqual(g.extent_count * g.extent_size_bytes);
    expect(g.data_offset + g.extent_count * g.extent_size_bytes).toBeLessThanOrEqual(backupSuperblockOffset(1 << 30));
    expect(g.extent_count).toBe(63);
  });

  test("extent size must be a power of two between 1 MiB and 1 GiB", () => {
    for (const bad of [0, 512 * 1024, 3 * MiB, 2 << 30]) expect(isInvalid(computeGeometry(1 << 30, bad))).toBe(true);
  });
});

describe("formatDrive / openDrive", () => {
  test("round trip: open reports what format wrote; metadata starts empty", async () => {
    const { store, sb } = await formatted();
    const d = await openDrive(store, "/dev/test");
    expect(d.info).toEqual({
      drive_uuid: DRIVE,
      cluster_uuid: NIL_UUID,
      path: "/dev/test",
      size_bytes: SIZE,
      data_offset_bytes: sb.data_offset,
      extent_size_bytes: MiB,
      extent_count: sb.extent_count,
      format_version: 1,
      state: "ok",
    });
    expect(d.data.size_bytes).toBe(sb.extent_count * MiB);
    expect(await d.metaRead()).toEqual({ generation: 0, payload: null , other: "older" });
  });

  test("a data-area write lands at data_offset and nowhere near the metadata", async () => {
    const { store, sb } = await formatted();
    const d = await openDrive(store, "x");
    await d.data.write(0, new Uint8Array(4096).fill(0xee), false);
    const raw = new Uint8Array(1);
    await store.read(sb.data_offset, raw);
    expect(raw[0]).toBe(0xee);
    const e = await d.data.read(d.data.size_bytes, new Uint8Array(1)).catch((x: unknown) => x);
    expect((e as DriveIoError).code).toBe("ERANGE");
  });

  test("refuses to reformat an nvmesh drive without force, naming drive and cluster", async () => {
    const { store } = await formatted();
    const d = await openDrive(reopenable(store), "x");
    await d.claim(CLUSTER);
    const msg = await formatError(formatDrive(store, { drive_uuid: crypto.randomUUID() }));
    expect(msg).toContain(DRIVE);
    expect(msg).toContain(CLUSTER);
    expect(msg).toContain("force");
    const other = crypto.randomUUID();
    await formatDrive(store, { drive_uuid: other, extent_size_bytes: MiB, force: true });
    expect((await openDrive(store, "x")).info.drive_uuid).toBe(other);
  });

  test("refuses a foreign filesystem unless force or existingCheck off", async () => {
    const store = new MemoryStore(SIZE);
    await store.write(1080, new Uint8Array([0x53, 0xef]), false);
    expect(await formatError(formatDrive(store, { drive_uuid: DRIVE, extent_size_bytes: MiB }))).toContain("ext2/3/4");
    await formatDrive(store, { drive_uuid: DRIVE, extent_size_bytes: MiB, existingCheck: false });
    await openDrive(store, "x");
  });

  test("refuses a store too small for one extent after the metadata", async () => {
    const min = minDriveBytes(MiB);
    expect(await formatError(formatDrive(new MemoryStore(min - 4096), { drive_uuid: DRIVE, extent_size_bytes: MiB }))).toContain("too small");
    await formatDrive(new MemoryStore(min), { drive_uuid: DRIVE, extent_size_bytes: MiB });
  });

  test("a blank store is not an nvmesh drive", async () => {
    expect(await formatError(openDrive(new MemoryStore(SIZE), "x"))).toContain("no nvmesh superblock");
  });

  test("foreign magic at offset 0 is reported as such", async () => {
    const store = new MemoryStore(SIZE);
    await store.write(0, new TextEncoder().encode("XFSB"), false);
    expect(await formatError(openDrive(store, "x"))).toContain("XFS");
  });

  test("a flipped superblock byte with a bad backup too: clear error naming the checksum", async () => {
    const { store } = await formatted();
    await flip(store, 50);
    await flip(store, backupSuperblockOffset(SIZE) + 50);
    const msg = await formatError(openDrive(store, "x"));
    expect(msg).toContain("checksum mismatch");
    expect(msg).toContain("backup");
  });

  test("a flipped primary byte falls back to the backup, with a warning, writing nothing", async () => {
    const { store } = await formatted();
    await flip(store, 100);
    const before = new Uint8Array(SUPERBLOCK_BYTES);
    await store.read(0, before);
    const { log, lines } = warnings();
    const d = await openDrive(store, "x", { log });
    expect(d.info.drive_uuid).toBe(DRIVE);
    expect(lines.join("\n")).toContain("using the backup");
    const after = new Uint8Array(SUPERBLOCK_BYTES);
    await store.read(0, after);
    expect(after).toEqual(before);
  });

  test("an unreadable primary block falls back to the backup", async () => {
    const { store } = await formatted();
    const failing = Object.assign(Object.create(store), {
      read: (off: number, dst: Uint8Array) =>
        off < SUPERBLOCK_BYTES ? Promise.reject(new DriveIoError("medium error", "EIO")) : store.read(off, dst),
    });
    expect((await openDrive(failing, "x")).info.drive_uuid).toBe(DRIVE);
  });

  test("a wiped start is not silently revived from the backup", async () => {
    const { store } = await formatted();
    await store.writeZeroes(0, SUPERBLOCK_BYTES, false);
    const msg = await formatError(openDrive(store, "x"));
    expect(msg).toContain("backup superblock of nvmesh drive");
    expect(await formatError(formatDrive(store, { drive_uuid: DRIVE }))).toContain("force");
  });

  test("a corrupt backup with a good primary opens, with a warning", async () => {
    const { store } = await formatted();
    await flip(store, backupSuperblockOffset(SIZE) + 20);
    const { log, lines } = warnings();
    await openDrive(store, "x", { log });
    expect(lines.join("\n")).toContain("backup superblock unusable");
  });

  test("a drive shorter than its superblock says is refused", async () => {
    const { store } = await formatted();
    const bytes = new Uint8Array(SIZE - MiB);
    await store.read(0, bytes);
    const short = new MemoryStore(SIZE - MiB);
    await short.write(0, bytes, false);
    expect(await formatError(openDrive(short, "x"))).toContain("truncated");
  });

  test("checkSuperblock names a geometry lie even under a valid checksum", async () => {
    const { sb } = await formatted();
    const { encodeSuperblock } = await import("../../src/engine/drive/superblock.ts");
    const b = encodeSuperblock(sb);
    // Re-sign a superblock whose data area overlaps the bitmap.
    const dv = new DataView(b.buffer);
    dv.setBigUint64(112, BigInt(sb.bitmap_offset), true);
    const { crc32c } = await import("../../src/engine/crc32c.ts");
    dv.setUint32(128, crc32c(b.subarray(0, 128)), true);
    const r = checkSuperblock(b);
    expect(isInvalid(r) && r.invalid).toContain("overlaps the bitmap");
  });
});

describe("metadata slots", () => {
  const payload = (n: number) => new TextEncoder().encode(`cluster state ${n}`.repeat(n));

  test("writes alternate between the two slots; the newest is read back", async () => {
    const { store, sb } = await formatted();
    const d = await openDrive(store, "x");
    for (let g = 1; g <= 5; g++) {
      await d.metaWrite(g, payload(g));
      expect(await d.metaRead()).toEqual({ generation: g, payload: payload(g) , other: "older" });
    }
    // Generation 5 is the fifth write: slots 0,1,0,1,0.
    const head = new Uint8Array(16);
    await store.read(sb.meta_offset, head);
    expect(new DataView(head.buffer).getBigUint64(8, true)).toBe(5n);
    await store.read(sb.meta_offset + sb.meta_slot_bytes, head);
    expect(new DataView(head.buffer).getBigUint64(8, true)).toBe(4n);
  });

  test("a torn newest slot falls back to the older one; the next write replaces the torn one", async () => {
    const { store, sb } = await formatted();
    const d = await openDrive(store, "x");
    await d.metaWrite(1, payload(1));
    await d.metaWrite(2, payload(2)); // slot 1
    await flip(store, sb.meta_offset + sb.meta_slot_bytes + 70);
    expect(await d.metaRead()).toEqual({ generation: 1, payload: payload(1) , other: "torn" });
    await d.metaWrite(2, payload(3));
    expect(await d.metaRead()).toEqual({ generation: 2, payload: payload(3) , other: "older" });
  });

  test("a large payload spanning many blocks round-trips; one beyond the slot is refused", async () => {
    const { store, sb } = await formatted();
    const d = await openDrive(store, "x");
    const big = crypto.getRandomValues(new Uint8Array(200_000));
    await d.metaWrite(1, big);
    expect((await d.metaRead()).payload).toEqual(big);
    expect(d.metaWrite(2, new Uint8Array(sb.meta_slot_bytes))).rejects.toBeInstanceOf(RangeError);
  });

  test("a stale or equal generation is refused and changes nothing", async () => {
    const { store } = await formatted();
    const d = await openDrive(store, "x");
    await d.metaWrite(7, payload(7));
    expect(d.metaWrite(7, payload(1))).rejects.toBeInstanceOf(StaleGenerationError);
    expect(d.metaWrite(3, payload(1))).rejects.toBeInstanceOf(StaleGenerationError);
    expect(await d.metaRead()).toEqual({ generation: 7, payload: payload(7) , other: "older" });
  });

  test("concurrent metaWrites are serialised: both land in different slots", async () => {
    const { store } = await formatted();
    const d = await openDrive(store, "x");
    await Promise.all([d.metaWrite(1, payload(1)), d.metaWrite(2, payload(2))]);
    expect((await d.metaRead()).generation).toBe(2);
    await d.metaWrite(3, payload(3));
    expect((await d.metaRead()).generation).toBe(3);
  });

  test("both slots corrupt: a clear error, never an empty drive, and no write over them", async () => {
    const { store, sb } = await formatted();
    const d = await openDrive(store, "x");
    await d.metaWrite(1, payload(1));
    await d.metaWrite(2, payload(2));
    await flip(store, sb.meta_offset + 70);
    await flip(store, sb.meta_offset + sb.meta_slot_bytes + 70);
    const msg = await formatError(d.metaRead());
    expect(msg).toContain("both metadata slots");
    expect(msg).toContain(DRIVE);
    await formatError(d.metaWrite(3, payload(3)));
  });

  test("a slot copied into the other slot's place is rejected (misdirected write)", async () => {
    const { store, sb } = await formatted();
    const d = await openDrive(store, "x");
    await d.metaWrite(1, payload(1)); // slot 0
    await d.metaWrite(2, payload(2)); // slot 1
    const s0 = new Uint8Array(4096);
    await store.read(sb.meta_offset, s0);
    await store.write(sb.meta_offset + sb.meta_slot_bytes, s0, false);
    // Slot 1 now holds generation 1 labelled "slot 0": ignored, slot 0 wins.
    expect(await d.metaRead()).toEqual({ generation: 1, payload: payload(1) , other: "torn" });
  });
});

describe("claim", () => {
  test("claims once, durably; a second claim is refused naming the owner", async () => {
    const { store } = await formatted();
    const d = await openDrive(reopenable(store), "x");
    await d.claim(CLUSTER);
    expect(d.info.cluster_uuid).toBe(CLUSTER);
    const e = await d.claim(crypto.randomUUID()).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(AlreadyClaimedError);
    expect((e as Error).message).toContain(CLUSTER);
    await d.close();
    const again = await openDrive(store, "x");
    expect(again.info.cluster_uuid).toBe(CLUSTER);
    expect(again.claim(CLUSTER)).rejects.toBeInstanceOf(AlreadyClaimedError);
  });

  test("claim rewrites the backup too, so a later torn primary keeps the cluster", async () => {
    const { store } = await formatted();
    await (await openDrive(reopenable(store), "x")).claim(CLUSTER);
    await flip(store, 40);
    expect((await openDrive(store, "x")).info.cluster_uuid).toBe(CLUSTER);
  });

  test("metadata survives a claim and a reopen", async () => {
    const { store } = await formatted();
    const d = await openDrive(reopenable(store), "x");
    await d.metaWrite(1, new Uint8Array([1, 2, 3]));
    await d.claim(CLUSTER);
    await d.close();
    expect(await (await openDrive(store, "x")).metaRead()).toEqual({ generation: 1, payload: new Uint8Array([1, 2, 3]) , other: "older" });
  });
});
