/**
 * A READ the page cache can answer is answered by execute() at once, as a frame rather than a
 * promise (DriveStore.readNow); a store without readNow, or data not cached, goes through the
 * promise path; errors on the immediate path are frames too; and a fenced client's admission
 * ends with the immediate answer (a FENCE waiting on it must not wait forever).
 */
import { afterAll, describe, expect, test } from "bun:test";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import type { FormattedDrive } from "../../src/engine/drive/formatted-api.ts";
import { execute } from "../../src/engine/target/execute.ts";
import { HEADER_BYTES, type Header, Op, Status, decodeHeader, emptyHeader } from "../../src/engine/wire/header.ts";
import { libc, POSIX_FADV_DONTNEED } from "../../src/ffi/libc.ts";
import { FileStore } from "../../src/engine/runtime/file-store.ts";
import { DriveIoError } from "../../src/engine/drive/store.ts";
import { executeContext, executeRequester, FIXTURE_VOLUME, fileDrive, memoryDrive, pattern, uuidBytes, wholeDrive } from "./target-fixture.ts";

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "nvmesh-read-now-"));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

function readHeader(drive: FormattedDrive, offset: number, length: number, client_id = 0, generation = 0): Header {
  return { ...emptyHeader(), opcode: Op.READ, request_id: 7, offset, length, drive_uuid: uuidBytes(drive), client_id, generation };
}

function answer(frame: Uint8Array): { h: Header; payload: Uint8Array } {
  const h = decodeHeader(frame);
  if (typeof h === "string") throw new Error(h);
  return { h, payload: frame.subarray(HEADER_BYTES) };
}

describe("READ answered from the page cache", () => {
  test("a file drive's cached data comes back as a frame, not a promise", async () => {
    const drive = await fileDrive(path.join(tmp, "cached.img"));
    const data = pattern(1, 8192);
    await drive.data.write(65536, data, false);
    const { ctx } = executeContext(drive);
    const r = execute(ctx, executeRequester("toma"), readHeader(drive, 65536, 8192), new Uint8Array(0), false);
    expect(r).toBeInstanceOf(Uint8Array);
    const { h, payload } = answer(r as Uint8Array);
    expect(h.status).toBe(Status.OK);
    expect(h.request_id).toBe(7);
    expect(payload).toEqual(data);
    await drive.close();
  });

  test("a store without readNow answers through the promise, with the same bytes", async () => {
    const drive = await memoryDrive();
    const data = pattern(2, 4096);
    await drive.data.write(0, data, false);
    const { ctx } = executeContext(drive);
    const r = execute(ctx, executeRequester("toma"), readHeader(drive, 0, 4096), new Uint8Array(0), false);
    expect(r).toBeInstanceOf(Promise);
    expect(answer(await r).payload).toEqual(data);
  });

  test("an out-of-range READ is refused at once, as a frame", async () => {
    const drive = await fileDrive(path.join(tmp, "range.img"));
    const { ctx } = executeContext(drive);
    const r = execute(ctx, executeRequester("toma"), readHeader(drive, drive.data.size_bytes, 4096), new Uint8Array(0), false);
    expect(r).toBeInstanceOf(Uint8Array);
    expect(answer(r as Uint8Array).h.status).toBe(Status.OUT_OF_RANGE);
    await drive.close();
  });

  test("a fenced client: unregistered is refused at once; registered is served and leaves nothing admitted", async () => {
    const drive = await fileDrive(path.join(tmp, "fenced.img"));
    await drive.data.write(0, pattern(3, 4096), false);
    const { ctx, table } = executeContext(drive, true);
    const refused = execute(ctx, executeRequester("client"), readHeader(drive, 0, 4096, 5, 1), new Uint8Array(0), false);
    expect(answer(refused as Uint8Array).h.status).toBe(Status.REFUSED);
    const d = table.get(uuidBytes(drive))!;
    expect(d.fence.apply({ replace: true, volumes: [wholeDrive(drive)], set: [{ client_id: 5, min_generation: 1, volumes: [FIXTURE_VOLUME.uuid] }], remove: [], remove_volumes: [] })).toBeNull();
    const r = execute(ctx, executeRequester("client"), readHeader(drive, 0, 4096, 5, 1), new Uint8Array(0), false);
    expect(r).toBeInstanceOf(Uint8Array);
    expect(answer(r as Uint8Array).payload).toEqual(pattern(3, 4096));
    // A FENCE refusing generation 1 now has nothing to wait for.
    expect(d.admitted.drain(() => true)).toBeNull();
    await drive.close();
  });
});

describe("FileStore.readNow", () => {
  test("copies cached bytes; declines pages that are not cached, which read() still returns", async () => {
    const p = path.join(tmp, "store.img");
    const s = await FileStore.open(p, { create_size_bytes: 4 << 20 });
    const data = pattern(4, 1 << 20);
    await s.write(1 << 20, data, true);
    const got = new Uint8Array(1 << 20);
    expect(s.readNow(1 << 20, got)).toBe(true);
    expect(got).toEqual(data);
    // Clean pages dropped from the cache: a read now would have to wait for the device.
    const fd = fs.openSync(p, "r");
    libc()!.fadvise(fd, 0, 4 << 20, POSIX_FADV_DONTNEED);
    fs.closeSync(fd);
    expect(s.readNow(1 << 20, got.fill(0))).toBe(false);
    await s.read(1 << 20, got);
    expect(got).toEqual(data);
    expect(() => s.readNow(4 << 20, new Uint8Array(1))).toThrow(DriveIoError);
    await s.close();
    expect(() => s.readNow(0, new Uint8Array(1))).toThrow(DriveIoError);
  });
});
