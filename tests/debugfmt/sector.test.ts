/**
 * The debug sector codec: round trip, the encoder's assertions, and every classification the
 * decoder makes, each from a sector damaged the way the class describes.
 */
import { describe, expect, test } from "bun:test";
import { crc32c } from "../../src/engine/crc32c.ts";
import { crc32cRange } from "../../src/debugfmt/crc32c-sliced.ts";
import { putU16, putU32, putU64 } from "../../src/debugfmt/le.ts";
import {
  decodeSector,
  encodeSector,
  type HistoryEntry,
  OFF,
  resealSector,
  SECTOR_BYTES,
  type SectorClass,
  shortClientName,
} from "../../src/debugfmt/sector.ts";
import { bytes, fields, sector } from "./fixtures.ts";

const H = (over: Partial<HistoryEntry> = {}): HistoryEntry => ({
  kind: "remembered",
  client_id: 5,
  generation: 2,
  seq: 900,
  step: 0,
  data_crc: 0xdeadbeef,
  topo_state: "degraded",
  legs_mask: 1,
  op: "write",
  ...over,
});

function expectClass(b: Uint8Array, cls: SectorClass, reason?: RegExp) {
  const d = decodeSector(b);
  if (d.ok) throw new Error(`expected ${cls}, decoded ok`);
  expect(d.class).toBe(cls);
  if (reason) expect(d.reason).toMatch(reason);
  return d;
}

describe("round trip", () => {
  test("every field survives encode → decode, and the data is a view of the input", () => {
    const history = [H(), H({ kind: "predicted", client_id: 9, generation: 0, seq: 0, step: 77, topo_state: "none", legs_mask: 0 })];
    for (let i = 2; i < 24; i++) history.push(H({ seq: 900 - i, step: i, op: i % 3 === 0 ? "trim" : "write_zeroes" }));
    const f = fields({
      client_name: "nœud-ü", // multi-byte UTF-8
      lba: 2 ** 52 + 5,
      io_first_lba: 2 ** 52,
      io_index: 5,
      io_sectors: 6,
      generation: 2 ** 40,
      seq: Number.MAX_SAFE_INTEGER,
      topo_state: "dual_lock",
      leg_count: 8,
      legs_mask: 0b1010_0001,
      leg_index: 7,
      fua: true,
      op: "write_zeroes",
      pattern: { seed_id: 0xffff_ffff, worker: 3, step: 2 ** 50, workers: 4, blocks: 1000, block_sectors: 8, base_lba: 16 },
      history,
    });
    const data = bytes(512, 1);
    const enc = encodeSector(f, data);
    expect(enc.length).toBe(SECTOR_BYTES);
    const d = decodeSector(enc);
    if (!d.ok) throw new Error(`${d.class}: ${d.reason}`);
    const { data: got, data_crc, record_tag, ...rest } = d.fields;
    expect(rest).toEqual(f);
    expect([...got]).toEqual([...data]);
    expect(got.buffer).toBe(enc.buffer);
    expect(data_crc).toBe(crc32c(data));
    expect(record_tag).toBe(crc32c(enc.subarray(OFF.version, OFF.fields_end)));
    expect(crc32c(enc.subarray(0, 2044))).toBe(enc[2044]! | (enc[2045]! << 8) | (enc[2046]! << 16) | ((enc[2047]! << 24) >>> 0));
  });

  test("encode into a larger buffer at an offset, decode from there", () => {
    const buf = new Uint8Array(3 * SECTOR_BYTES).fill(0xaa);
    encodeSector(fields({ lba: 4097, io_index: 1 }), bytes(512, 2), buf, SECTOR_BYTES);
    expect(buf[0]).toBe(0xaa);
    expect(buf[2 * SECTOR_BYTES]).toBe(0xaa);
    const d = decodeSector(buf, SECTOR_BYTES);
    expect(d.ok && d.fields.lba).toBe(4097);
  });

  test("shortClientName keeps whole characters within 16 bytes", () => {
    expect(shortClientName("a-very-long-hostname.example")).toBe("a-very-long-host");
    expect(shortClientName("ééééééééé")).toBe("éééééééé"); // 9 × 2 bytes → 8 fit
    expect(shortClientName("a\0b")).toBe("ab");
  });
});

describe("the encoder refuses what a writer must not write", () => {
  const bad: [string, Parameters<typeof fields>[0], RegExp][] = [
    ["nil volume", { volume_uuid: "00000000-0000-0000-0000-000000000000" }, /nil/],
    ["upper-case uuid", { volume_uuid: "0F1E2D3C-4B5A-4978-8695-A4B3C2D1E0F9" }, /uuid/],
    ["lba beyond 2^53", { lba: 2 ** 53, io_first_lba: 2 ** 53 - 4 }, /lba/],
    ["lba not first + index", { lba: 4101 }, /io_first_lba/],
    ["io_index past the I/O", { io_index: 8, lba: 4104 }, /io_index/],
    ["leg index not targeted", { legs_mask: 0b10 }, /does not contain/],
    ["leg index past leg_count", { leg_index: 2 }, /leg_index/],
    ["nine legs", { leg_count: 9 }, /leg_count/],
    ["name too long", { client_name: "x".repeat(17) }, /longer/],
    ["unknown state", { topo_state: "limbo" as never }, /topo_state/],
    ["seed 0 with a pattern", { pattern: { seed_id: 0, worker: 0, step: 0, workers: 1, blocks: 1, block_sectors: 1, base_lba: 0 } }, /seed_id/],
    ["worker past workers", { pattern: { seed_id: 1, worker: 2, step: 0, workers: 2, blocks: 1, block_sectors: 1, base_lba: 0 } }, /worker/],
    ["25 history entries", { history: Array.from({ length: 25 }, () => H()) }, /history/],
    ["history crc not u32", { history: [H({ data_crc: 2 ** 32 })] }, /data_crc/],
  ];
  for (const [name, over, re] of bad) {
    test(name, () => {
      expect(() => encodeSector(fields(over), bytes(512, 3))).toThrow(re);
    });
  }
  test("data must be 512 bytes", () => {
    expect(() => encodeSector(fields(), new Uint8Array(511))).toThrow(/512/);
  });
});

describe("classification", () => {
  test("ok", () => {
    expect(decodeSector(sector()).ok).toBe(true);
  });

  test("empty: all zero", () => {
    expectClass(new Uint8Array(SECTOR_BYTES), "empty");
  });

  test("not_debug: foreign data without any chunk magic", () => {
    expectClass(bytes(SECTOR_BYTES, 5), "not_debug");
  });

  test("wrong_size: fewer than 2048 bytes", () => {
    expectClass(sector().subarray(0, 2047), "wrong_size", /2047 bytes/);
    expectClass(new Uint8Array(0), "wrong_size", /0 bytes/);
  });

  test("bad_magic: the header chunk's magic is gone while the others have theirs", () => {
    const b = sector();
    b[513] = b[513]! ^ 0x20;
    expectClass(b, "bad_magic", /header chunk/);
  });

  test("unknown_version", () => {
    const b = sector();
    putU16(b, OFF.version, 2);
    expectClass(b, "unknown_version", /version 2/);
  });

  test("checksum_bad: a flipped bit in the history chunk names that chunk; the header is still given", () => {
    const b = sector({ history: [H()] });
    b[1100] = b[1100]! ^ 4;
    const d = expectClass(b, "checksum_bad", /history 1-12 \(chunk 2\)/);
    expect(d.fields?.client_id).toBe(7);
  });

  test("checksum_bad: the sector CRC field alone", () => {
    const b = sector();
    b[2046] = b[2046]! ^ 1;
    expectClass(b, "checksum_bad", /sector checksum field/);
  });

  test("checksum_bad: a damaged header chunk gives no fields", () => {
    const b = sector();
    b[700] = b[700]! ^ 1; // reserved area of chunk 1
    const d = expectClass(b, "checksum_bad", /header \(chunk 1\)/);
    expect(d.fields).toBeNull();
  });

  test("data_mismatch: data changed after the write (metadata intact)", () => {
    const b = sector();
    b[17] = b[17]! ^ 0x80;
    const d = expectClass(b, "data_mismatch", /changed after/);
    expect(d.fields?.seq).toBe(1234);
  });

  test("data_mismatch: the writer's own header does not describe its data (every CRC right)", () => {
    const b = sector();
    putU32(b, OFF.data_crc, 12345);
    resealSector(b);
    expectClass(b, "data_mismatch", /written so by its writer/);
  });

  test("torn: chunks 2-3 of another write under this header", () => {
    const a = sector({ seq: 1 });
    const other = sector({ seq: 2, history: [H()] });
    a.set(other.subarray(1024), 1024);
    const d = expectClass(a, "torn", /header \(chunk 1\) from write 0x[0-9a-f]{8}; history 1-12 \(chunk 2\), history 13-24 \(chunk 3\) from write/);
    expect(d.fields?.seq).toBe(1);
  });

  test("torn: the second half never landed on a blank sector", () => {
    const b = sector();
    b.fill(0, 1024);
    expectClass(b, "torn", /history 1-12 \(chunk 2\), history 13-24 \(chunk 3\) blank/);
  });

  test("torn: only chunks 2-3 landed (header chunk blank)", () => {
    const b = sector();
    b.fill(0, 0, 1024);
    expectClass(b, "torn", /header \(chunk 1\).*blank/);
  });

  test("torn: the data chunk still holds the previous write's data (named from the history)", () => {
    const old = bytes(512, 10);
    const b = sector({ history: [H({ data_crc: crc32c(old) })] }, bytes(512, 11));
    b.set(old, 0);
    expectClass(b, "torn", /earlier write in history entry 0 \(client 5 seq 900/);
  });

  test("torn: blank data under an intact header", () => {
    const b = sector();
    b.fill(0, 0, 512);
    expectClass(b, "torn", /data \(chunk 0\) blank/);
  });

  test("bad_field: a field out of range with every checksum right", () => {
    const cases: [number, number, RegExp][] = [
      [OFF.topo_state, 6, /topology state 6/],
      [OFF.op, 0, /op 0/],
      [OFF.leg_index, 3, /leg_index/],
      [OFF.history_count, 25, /history_count/],
      [OFF.io_flags, 2, /io flags/],
      [OFF.reserved_599, 1, /reserved/],
      [OFF.header_flags, 2, /header flags 2 unknown/],
      [900, 1, /reserved bytes of the header/],
      [1530, 1, /reserved bytes of chunk 2/],
    ];
    for (const [off, v, re] of cases) {
      const b = sector();
      b[off] = v;
      resealSector(b);
      expectClass(b, "bad_field", re);
    }
    const b = sector();
    putU64(b, OFF.seq, 0);
    b[OFF.seq + 7] = 0x01; // 2^56: not a safe integer
    resealSector(b);
    expectClass(b, "bad_field", /seq does not fit/);
  });

  test("the lock flag: header_flags bit 0, round-trips, and means nothing with one leg", () => {
    for (const locked of [true, false]) {
      const b = sector({ locked });
      expect(b[OFF.header_flags]).toBe(locked ? 1 : 0);
      const d = decodeSector(b);
      expect(d.ok && d.fields.locked).toBe(locked);
    }
    expect(() => encodeSector(fields({ leg_count: 1, legs_mask: 1, locked: true }), bytes(512, 3))).toThrow(/one leg/);
    const one = sector({ leg_count: 1, legs_mask: 1, locked: false });
    one[OFF.header_flags] = 1;
    resealSector(one);
    expectClass(one, "bad_field", /one leg/);
  });

  test("bad_field: history entries past history_count must be zero", () => {
    const b = sector({ history: [H()] });
    b[OFF.history_count] = 0;
    resealSector(b);
    expectClass(b, "bad_field", /beyond history_count/);
  });

  test("the data CRC and the sector CRC come from one pass (CRC continuation)", () => {
    const b = sector();
    const dataCrc = crc32cRange(b, 0, 512);
    expect(crc32cRange(b, 512, 2044, dataCrc)).toBe(crc32c(b.subarray(0, 2044)));
  });
});
