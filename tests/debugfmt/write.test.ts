/**
 * The data path's side of the debug format (write.ts): one volume I/O into debug sectors, with
 * the verify pattern's coordinates and predicted history taken from the data's own stamp.
 */
import { describe, expect, test } from "bun:test";
import { crc32c } from "../../src/engine/crc32c.ts";
import { blockAt, checkPatternSector, dataFor, ownedBlocks } from "../../src/debugfmt/pattern.ts";
import { decodeSector, SECTOR_BYTES } from "../../src/debugfmt/sector.ts";
import { type DebugIo, encodeIoForLeg, ioSectorFields } from "../../src/debugfmt/write.ts";
import { bytes, SPEC, VOLUME } from "./fixtures.ts";

const writer = { volume_uuid: VOLUME, client_id: 42, client_name: "c42" };
const io = (over: Partial<DebugIo> = {}): DebugIo => ({
  op: "write", fua: true, first_lba: 100, sectors: 3, seq: 9, generation: 6, topo_state: "rebuild", leg_count: 2, legs_mask: 3, locked: true, ...over,
});

function decodeAll(b: Uint8Array) {
  return Array.from({ length: b.length / SECTOR_BYTES }, (_, i) => {
    const d = decodeSector(b, i * SECTOR_BYTES);
    if (!d.ok) throw new Error(`${d.class}: ${d.reason}`);
    return d.fields;
  });
}

describe("ioSectorFields + encodeIoForLeg", () => {
  test("plain data: one sector per 512 bytes, the I/O summary in each, no pattern, no history", () => {
    const data = bytes(3 * 512, 1);
    const f = ioSectorFields(writer, io(), data);
    const legs = [0, 1].map((leg) => decodeAll(encodeIoForLeg(f, data, leg)));
    for (const [leg, sectors] of legs.entries()) {
      expect(sectors.map((s) => [s.lba, s.io_index, s.leg_index])).toEqual([[100, 0, leg], [101, 1, leg], [102, 2, leg]]);
      for (const [i, s] of sectors.entries()) {
        expect(s).toMatchObject({ io_first_lba: 100, io_sectors: 3, seq: 9, generation: 6, topo_state: "rebuild", legs_mask: 3, fua: true, op: "write", pattern: null, history: [], client_id: 42, client_name: "c42" });
        expect(s.data_crc).toBe(crc32c(data.subarray(i * 512, i * 512 + 512)));
      }
    }
  });

  test("verify data: the stamp gives the pattern fields and the predicted history, which a reader accepts", () => {
    const step = 3 * ownedBlocks(SPEC, 1) + 5; // pass 3 of worker 1
    const block = blockAt(SPEC, { worker: 1, step });
    const data = new Uint8Array(2 * 512);
    for (let i = 0; i < 2; i++) data.set(dataFor({ ...SPEC, worker: 1, step }, block * 2 + i), i * 512);
    const f = ioSectorFields(writer, io({ first_lba: block * 2, sectors: 2, history_depth: 2 }), data);
    for (const s of decodeAll(encodeIoForLeg(f, data, 1))) {
      expect(s.pattern).toEqual({ ...SPEC, worker: 1, step });
      expect(s.history.length).toBe(2);
      expect(checkPatternSector(s, { spec: SPEC })).toEqual([]);
    }
  });

  test("stamped data written at another LBA (a copy) is recorded as plain data", () => {
    const data = dataFor({ ...SPEC, worker: 1, step: 3 }, 7);
    const f = ioSectorFields(writer, io({ first_lba: 8, sectors: 1 }), data);
    expect(f[0]!.pattern).toBeNull();
  });

  test("write_zeroes and trim: zero data, the op recorded", () => {
    for (const op of ["write_zeroes", "trim"] as const) {
      const f = ioSectorFields(writer, io({ op, sectors: 2 }), null);
      const s = decodeAll(encodeIoForLeg(f, null, 0));
      expect(s.map((x) => x.op)).toEqual([op, op]);
      expect(s.every((x) => x.data.every((b) => b === 0))).toBe(true);
    }
  });

  test("an out buffer is filled in place; wrong sizes are refused", () => {
    const data = bytes(512, 3);
    const f = ioSectorFields(writer, io({ sectors: 1 }), data);
    const out = new Uint8Array(SECTOR_BYTES);
    expect(encodeIoForLeg(f, data, 0, out)).toBe(out);
    expect(() => encodeIoForLeg(f, data, 0, new Uint8Array(100))).toThrow(/needs 2048/);
    expect(() => ioSectorFields(writer, io({ sectors: 2 }), data)).toThrow(/1024 data bytes/);
    expect(() => ioSectorFields(writer, io({ op: "trim" }), data)).toThrow(/no data/);
    expect(() => encodeIoForLeg(f, data, 2)).toThrow(/leg_index 2/);
  });
});
