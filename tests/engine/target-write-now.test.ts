/**
 * A plain WRITE the drive can take without waiting (DriveStore.writeNow: page-aligned, into the
 * page cache) is written and answered by execute() at once, as a frame, straight from the payload
 * it was given; everything that must wait (FUA, DIRTY/INTENT bits, a LOCK to take, an unaligned
 * write, a store without writeNow) still goes through the promise path; refusals and errors on the
 * immediate path are frames too, and change nothing; a fenced client's admission ends with the
 * immediate answer.
 */
import { afterAll, describe, expect, test } from "bun:test";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { formatDrive } from "../../src/engine/drive/format.ts";
import type { FormattedDrive } from "../../src/engine/drive/formatted-api.ts";
import { openDrive } from "../../src/engine/drive/formatted-drive.ts";
import { UringStore } from "../../src/engine/runtime/uring-store.ts";
import { answeredEpoch } from "../../src/engine/target/drive-table.ts";
import { execute } from "../../src/engine/target/execute.ts";
import { HEADER_BYTES, type Header, Flag, Op, Status, decodeHeader, emptyHeader } from "../../src/engine/wire/header.ts";
import { executeContext, executeRequester, FIXTURE_VOLUME, memoryDrive, pattern, randomUuidString, uuidBytes, wholeDrive } from "./target-fixture.ts";

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "nvmesh-write-now-"));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** A formatted drive on UringStore (buffered, inline writes): the store that has writeNow. */
async function uringDrive(name: string): Promise<FormattedDrive> {
  const p = path.join(tmp, name);
  const store = await UringStore.open(p, { create_size_bytes: 8 << 20 });
  await formatDrive(store, { drive_uuid: randomUuidString(), extent_size_bytes: 1024 * 1024 });
  return await openDrive(store, p);
}

function header(drive: FormattedDrive, opcode: Op, offset: number, length: number, flags = 0, client_id = 0, generation = 0): Header {
  return { ...emptyHeader(), opcode, request_id: 9, offset, length, flags, payload_len: opcode === Op.WRITE ? length : 0, drive_uuid: uuidBytes(drive), client_id, generation };
}

function answer(frame: Uint8Array): { h: Header; payload: Uint8Array } {
  const h = decodeHeader(frame);
  if (typeof h === "string") throw new Error(h);
  return { h, payload: frame.subarray(HEADER_BYTES) };
}

async function readBack(drive: FormattedDrive, offset: number, length: number): Promise<Uint8Array> {
  const got = new Uint8Array(length);
  await drive.data.read(offset, got);
  return got;
}

describe("WRITE written and answered at once", () => {
  test("a page-aligned write is a frame carrying the cache epoch; the payload is not kept", async () => {
    const drive = await uringDrive("plain.img");
    const { ctx, table } = executeContext(drive);
    const data = pattern(1, 8192);
    const sent = data.slice();
    const r = execute(ctx, executeRequester("toma"), header(drive, Op.WRITE, 65536, 8192), sent, false);
    expect(r).toBeInstanceOf(Uint8Array);
    const { h } = answer(r as Uint8Array);
    expect(h.status).toBe(Status.OK);
    expect(h.request_id).toBe(9);
    expect(h.generation).toBe(answeredEpoch(table.get(uuidBytes(drive))!));
    // The caller's buffer is free the moment execute returned (a socket decoder reuses it).
    sent.fill(0xee);
    expect(await readBack(drive, 65536, 8192)).toEqual(data);
    await drive.close();
  });

  test("what must wait goes through the promise, and lands the same", async () => {
    const drive = await uringDrive("waits.img");
    const { ctx } = executeContext(drive);
    const cases: [string, number, number, number][] = [
      ["FUA", Flag.FUA, 0, 4096],
      ["DIRTY", Flag.DIRTY, 4096, 4096],
      ["INTENT", Flag.INTENT, 8192, 4096],
      ["LOCK", Flag.LOCK, 1 << 20, 4096],
      ["unaligned", 0, 12288 + 512, 1024],
    ];
    for (const [what, flags, offset, length] of cases) {
      const data = pattern(2 + flags, length);
      const sent = data.slice();
      const r = execute(ctx, executeRequester("client"), header(drive, Op.WRITE, offset, length, flags, 3, 1), sent, false);
      expect(r, what).toBeInstanceOf(Promise);
      sent.fill(0); // the promise path copied what it needs before returning
      expect(answer(await r).h.status, what).toBe(Status.OK);
      expect(await readBack(drive, offset, length), what).toEqual(data);
    }
    await drive.close();
  });

  test("a store without writeNow answers through the promise", async () => {
    const drive = await memoryDrive();
    const { ctx } = executeContext(drive);
    const r = execute(ctx, executeRequester("toma"), header(drive, Op.WRITE, 0, 4096), pattern(3, 4096), false);
    expect(r).toBeInstanceOf(Promise);
    expect(answer(await r).h.status).toBe(Status.OK);
    expect(await readBack(drive, 0, 4096)).toEqual(pattern(3, 4096));
  });

  test("an out-of-range WRITE is refused at once, as a frame", async () => {
    const drive = await uringDrive("range.img");
    const { ctx } = executeContext(drive);
    const r = execute(ctx, executeRequester("toma"), header(drive, Op.WRITE, drive.data.size_bytes, 4096), pattern(4, 4096), false);
    expect(r).toBeInstanceOf(Uint8Array);
    expect(answer(r as Uint8Array).h.status).toBe(Status.OUT_OF_RANGE);
    await drive.close();
  });

  test("a fenced client: unregistered is refused and writes nothing; registered is written and leaves nothing admitted", async () => {
    const drive = await uringDrive("fenced.img");
    const { ctx, table } = executeContext(drive, true);
    const before = await readBack(drive, 0, 4096);
    const refused = execute(ctx, executeRequester("client"), header(drive, Op.WRITE, 0, 4096, 0, 5, 1), pattern(5, 4096), false);
    expect(answer(refused as Uint8Array).h.status).toBe(Status.REFUSED);
    expect(await readBack(drive, 0, 4096)).toEqual(before);
    const d = table.get(uuidBytes(drive))!;
    expect(d.fence.apply({ replace: true, volumes: [wholeDrive(drive)], set: [{ client_id: 5, min_generation: 1, volumes: [FIXTURE_VOLUME.uuid] }], remove: [], remove_volumes: [] })).toBeNull();
    const r = execute(ctx, executeRequester("client"), header(drive, Op.WRITE, 0, 4096, 0, 5, 1), pattern(5, 4096), false);
    expect(r).toBeInstanceOf(Uint8Array);
    expect(answer(r as Uint8Array).h.status).toBe(Status.OK);
    expect(await readBack(drive, 0, 4096)).toEqual(pattern(5, 4096));
    // A FENCE refusing generation 1 now has nothing to wait for.
    expect(d.admitted.drain(() => true)).toBeNull();
    // A stale generation is refused at once and writes nothing.
    const stale = execute(ctx, executeRequester("client"), header(drive, Op.WRITE, 0, 4096, 0, 5, 0), pattern(6, 4096), false);
    expect(answer(stale as Uint8Array).h.status).not.toBe(Status.OK);
    expect(await readBack(drive, 0, 4096)).toEqual(pattern(5, 4096));
    await drive.close();
  });
});

describe("UringStore.writeNow", () => {
  test("writes aligned ranges now; declines unaligned ones, writing nothing; refuses bad ranges", async () => {
    const p = path.join(tmp, "store.img");
    const s = await UringStore.open(p, { create_size_bytes: 4 << 20 });
    const data = pattern(7, 65536);
    expect(s.writeNow(1 << 20, data)).toBe(true);
    const got = new Uint8Array(65536);
    await s.read(1 << 20, got);
    expect(got).toEqual(data);
    expect(s.writeNow(100, pattern(8, 4096))).toBe(false);
    await s.read(0, got.subarray(0, 8192));
    expect(got.subarray(0, 8192)).toEqual(new Uint8Array(8192));
    expect(() => s.writeNow(4 << 20, new Uint8Array(4096))).toThrow();
    await s.close();
    expect(() => s.writeNow(0, new Uint8Array(4096))).toThrow();
    const ring = await UringStore.open(path.join(tmp, "ring.img"), { create_size_bytes: 1 << 20, inline_writes: false });
    expect(ring.writeNow(0, new Uint8Array(4096))).toBe(false);
    await ring.close();
  });
});
