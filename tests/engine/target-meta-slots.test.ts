/**
 * What the TOMA cluster's hard state needs from a target's metadata slots (docs/toma-cluster.md,
 * A2, A2b, A4): META_READ says what the other slot holds (older, torn or unreadable); META_WRITE
 * never writes over a slot it cannot read; and a TOMA's new session is served only after every
 * META_WRITE of its earlier session has landed or failed.
 */
import { afterEach, describe, expect, test } from "bun:test";
import { blankMetaSlots, formatDrive } from "../../src/engine/drive/format.ts";
import { UnreadableSlotError } from "../../src/engine/drive/formatted-api.ts";
import { openDrive } from "../../src/engine/drive/formatted-drive.ts";
import { MemoryStore } from "../../src/engine/drive/memory-store.ts";
import { DriveIoError } from "../../src/engine/drive/store.ts";
import { type Superblock, metaSlotOffset } from "../../src/engine/drive/superblock.ts";
import { locateSuperblock } from "../../src/engine/drive/locate-superblock.ts";
import { Status } from "../../src/engine/wire/header.ts";
import { openSession } from "../../src/engine/wire/session.ts";
import { GatedStore, type TargetHarness, randomUuidString, startTarget, statusOf, until, uuidBytes } from "./target-fixture.ts";

const MiB = 1024 * 1024;

/**
 * A memory drive whose reads of [bad_from, bad_to) fail with EIO, as a latent sector error does;
 * a write covering the whole range remaps it, as a device does.
 */
class BadSectorStore extends MemoryStore {
  bad: [number, number] | null = null;
  override async read(offset: number, dst: Uint8Array): Promise<void> {
    if (this.bad && offset < this.bad[1] && offset + dst.length > this.bad[0]) throw new DriveIoError("medium error", "EIO");
    return super.read(offset, dst);
  }
  override async write(offset: number, src: Uint8Array, fua: boolean): Promise<void> {
    if (this.bad && offset <= this.bad[0] && offset + src.length >= this.bad[1]) this.bad = null;
    return super.write(offset, src, fua);
  }
}

async function formatted<S extends MemoryStore>(store: S): Promise<{ store: S; sb: Superblock }> {
  await formatDrive(store, { drive_uuid: randomUuidString(), extent_size_bytes: MiB });
  const found = await locateSuperblock(store);
  if (found.kind !== "found") throw new Error("format failed");
  return { store, sb: found.sb };
}

const bytes = (n: number) => new Uint8Array([n, n, n]);

describe("the other slot", () => {
  test("older after writes, torn after a torn write, unreadable after a media error", async () => {
    const { store, sb } = await formatted(new BadSectorStore(8 * MiB));
    const d = await openDrive(store, "x");
    expect((await d.metaRead()).other).toBe("older");
    await d.metaWrite(1, bytes(1)); // slot 0
    await d.metaWrite(2, bytes(2)); // slot 1
    expect(await d.metaRead()).toEqual({ generation: 2, payload: bytes(2), other: "older" });
    // Slot 0 (the older) turns unreadable: the current slot is still answered, the other flagged.
    const s0 = metaSlotOffset(sb, 0);
    store.bad = [s0, s0 + 4096];
    expect(await d.metaRead()).toEqual({ generation: 2, payload: bytes(2), other: "unreadable" });
    // The current slot (1) turns unreadable instead: slot 0 is answered, and the other is not torn.
    const s1 = metaSlotOffset(sb, 1);
    store.bad = [s1, s1 + 4096];
    expect(await d.metaRead()).toEqual({ generation: 1, payload: bytes(1), other: "unreadable" });
    // A torn write in slot 1 (readable, checksum wrong) is "torn": a write that never landed.
    store.bad = null;
    const raw = new Uint8Array(4096);
    await store.read(s1, raw);
    raw[64]! ^= 0xff; // a payload byte: the CRC no longer matches
    await store.write(s1, raw, true);
    expect(await d.metaRead()).toEqual({ generation: 1, payload: bytes(1), other: "torn" });
  });

  test("META_WRITE refuses to write over an unreadable slot and changes nothing; a torn one is written", async () => {
    const { store, sb } = await formatted(new BadSectorStore(8 * MiB));
    const d = await openDrive(store, "x");
    await d.metaWrite(1, bytes(1)); // slot 0
    await d.metaWrite(2, bytes(2)); // slot 1; the next goes to slot 0
    const s0 = metaSlotOffset(sb, 0);
    store.bad = [s0, s0 + 4096];
    const before = new Uint8Array(8 * MiB);
    await MemoryStore.prototype.read.call(store, 0, before);
    const e = await d.metaWrite(3, bytes(3)).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(UnreadableSlotError);
    expect((e as Error).message).toContain("slot 0 is unreadable");
    const after = new Uint8Array(8 * MiB);
    await MemoryStore.prototype.read.call(store, 0, after);
    expect(after).toEqual(before);
    // Once readable again (a torn slot, say), writing over it is the normal path.
    store.bad = null;
    await d.metaWrite(3, bytes(3));
    expect(await d.metaRead()).toEqual({ generation: 3, payload: bytes(3), other: "older" });
  });
});

test("the repair blanks both slots: the drive takes metadata writes again, from generation 1", async () => {
  const { store, sb } = await formatted(new BadSectorStore(8 * MiB));
  const d = await openDrive(store, "x");
  await d.metaWrite(1, bytes(1));
  await d.metaWrite(2, bytes(2));
  const s0 = metaSlotOffset(sb, 0);
  store.bad = [s0, s0 + 4096]; // slot 0's first block: where the next write would go
  expect(await d.metaWrite(3, bytes(3)).catch((e: unknown) => e)).toBeInstanceOf(UnreadableSlotError);
  await blankMetaSlots(store);
  expect(store.bad).toBeNull();
  expect(await d.metaRead()).toEqual({ generation: 0, payload: null, other: "older" });
  await d.metaWrite(1, bytes(9));
  expect(await d.metaRead()).toEqual({ generation: 1, payload: bytes(9), other: "older" });
});

describe("over the wire", () => {
  let h: TargetHarness | null = null;
  afterEach(() => {
    h?.stop();
    h = null;
  });

  test("META_READ carries the other slot's state; a META_WRITE over an unreadable slot is REFUSED", async () => {
    const { store, sb } = await formatted(new BadSectorStore(8 * MiB));
    const d = await openDrive(store, "x");
    h = await startTarget([d]);
    const s = await openSession(h.env, h.address, { version: 1, role: "toma", name: "t1" });
    const u = uuidBytes(d);
    await s.metaWrite(u, 1, bytes(1));
    expect((await s.metaRead(u)).other).toBe("older");
    const s1 = metaSlotOffset(sb, 1);
    store.bad = [s1, s1 + 4096];
    expect(await s.metaRead(u)).toEqual({ generation: 1, payload: bytes(1), other: "unreadable" });
    expect(await statusOf(s.metaWrite(u, 2, bytes(2)))).toBe(Status.REFUSED);
    store.bad = null;
    expect((await s.metaRead(u)).generation).toBe(1);
    s.close();
  });

  test("a TOMA's new session is served only after its earlier session's META_WRITE landed", async () => {
    // Gate only the metadata slot writes, so the old session's META_WRITE is held on the drive.
    const store = new GatedStore(8 * MiB);
    await formatted(store);
    const d = await openDrive(store, "gated");
    h = await startTarget([d]);
    const hello = { version: 1 as const, role: "toma" as const, name: "toma-a" };
    const u = uuidBytes(d);
    const old = await openSession(h.env, h.address, hello);
    store.gated = true;
    const oldWrite = old.metaWrite(u, 7, bytes(7)).catch((e: unknown) => e);
    await until(() => store.blocked === 1);

    // The TOMA restarts: its new process connects while the old write is still on its way.
    let served = false;
    const fresh = openSession(h.env, h.address, hello).then((s) => {
      served = true;
      return s;
    });
    await until(() => old.closed);
    await Bun.sleep(50);
    expect(served).toBe(false);

    store.open();
    const s2 = await fresh;
    await oldWrite;
    // The new session's first read sees the old write (it landed before the session was served),
    // and nothing of the old session can land after it.
    expect(await s2.metaRead(u)).toEqual({ generation: 7, payload: bytes(7), other: "older" });
    s2.close();
  });
});
