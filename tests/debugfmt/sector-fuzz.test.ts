/**
 * The decoder reads what a damaged drive holds: it must never throw, always classify, never call
 * a damaged sector ok, and anything it accepts must re-encode to exactly the same bytes.
 */
import { describe, expect, test } from "bun:test";
import { decodeSector, encodeSector, type HistoryEntry, resealSector, SECTOR_BYTES, type SectorDecode } from "../../src/debugfmt/sector.ts";
import { bytes, fields, verifyWrite } from "./fixtures.ts";

const CLASSES = new Set(["empty", "not_debug", "bad_magic", "unknown_version", "checksum_bad", "data_mismatch", "torn", "bad_field", "wrong_size"]);

let rng = 0x2545f491;
function rand(n: number): number {
  rng ^= rng << 13;
  rng >>>= 0;
  rng ^= rng >>> 17;
  rng ^= rng << 5;
  rng >>>= 0;
  return rng % n;
}

function decodeChecked(b: Uint8Array, at = 0): SectorDecode {
  let d: SectorDecode;
  try {
    d = decodeSector(b, at);
  } catch (e) {
    throw new Error(`decodeSector threw on ${Buffer.from(b).toString("hex").slice(0, 64)}...: ${(e as Error).stack}`);
  }
  if (d.ok) {
    // Canonical: what is accepted re-encodes to the same bytes.
    const { data, data_crc: _c, record_tag: _t, ...f } = d.fields;
    const again = encodeSector(f, data);
    expect(Buffer.compare(Buffer.from(again), Buffer.from(b.subarray(at, at + SECTOR_BYTES)))).toBe(0);
  } else {
    expect(CLASSES.has(d.class)).toBe(true);
    expect(d.reason.length).toBeGreaterThan(0);
  }
  return d;
}

const history: HistoryEntry[] = Array.from({ length: 20 }, (_, i) => ({
  kind: i % 2 ? "predicted" : "remembered",
  client_id: i + 1,
  generation: i % 2 ? 0 : 5,
  seq: i % 2 ? 0 : 100 - i,
  step: i,
  data_crc: 0x1000 + i,
  topo_state: i % 2 ? "none" : "normal",
  legs_mask: i % 2 ? 0 : 3,
  op: "write",
}));

const samples = (): Uint8Array[] => [
  encodeSector(fields(), bytes(512, 1)),
  encodeSector(fields({ history }), bytes(512, 2)),
  verifyWrite({ worker: 1, step: 40, leg: 1, first_lba: 0 }).bytes.subarray(0, SECTOR_BYTES),
];

describe("decodeSector never throws", () => {
  test("random bytes (20,000 sectors), and random bytes behind a valid magic and version", () => {
    for (let i = 0; i < 20_000; i++) decodeChecked(bytes(SECTOR_BYTES, i + 1));
    const template = samples()[1]!;
    for (let i = 0; i < 5_000; i++) {
      const b = bytes(SECTOR_BYTES, 77_000 + i);
      b.set(template.subarray(512, 530), 512); // chunk 1 magic, tag, crc, version
      if (i % 2) b.set(template.subarray(1024, 1040), 1024);
      if (i % 3) b.set(template.subarray(1536, 1552), 1536);
      decodeChecked(b);
    }
  });

  test("every single-bit flip of valid sectors is detected (never ok) and classified", () => {
    for (const s of samples()) {
      const counts: Record<string, number> = {};
      for (let bit = 0; bit < SECTOR_BYTES * 8; bit++) {
        const b = s.slice();
        b[bit >> 3] = b[bit >> 3]! ^ (1 << (bit & 7));
        const d = decodeChecked(b);
        expect(d.ok).toBe(false);
        if (!d.ok) counts[d.class] = (counts[d.class] ?? 0) + 1;
      }
      // Flips in the data chunk read as changed data, in the tags and fields as damage.
      expect(counts.data_mismatch).toBe(512 * 8);
      expect(counts.checksum_bad).toBeGreaterThan(0);
    }
  });

  test("random multi-byte damage, and swapped chunks between two sectors", () => {
    const ss = samples();
    for (let i = 0; i < 20_000; i++) {
      const b = ss[i % ss.length]!.slice();
      const n = 1 + rand(8);
      for (let k = 0; k < n; k++) b[rand(SECTOR_BYTES)] = rand(256);
      decodeChecked(b);
    }
    for (let i = 0; i < ss.length; i++) {
      for (let j = 0; j < ss.length; j++) {
        for (let mask = 1; mask < 16; mask++) {
          const b = ss[i]!.slice();
          for (let c = 0; c < 4; c++) if (mask & (1 << c)) b.set(ss[j]!.subarray(c * 512, c * 512 + 512), c * 512);
          const d = decodeChecked(b);
          if (i !== j && mask !== 15) expect(d.ok).toBe(false);
        }
      }
    }
  });

  test("truncation at every length, and offsets past the end", () => {
    const s = samples()[1]!;
    for (let n = 0; n < SECTOR_BYTES; n++) {
      const d = decodeChecked(s.subarray(0, n));
      expect(!d.ok && d.class).toBe("wrong_size");
    }
    const big = new Uint8Array(SECTOR_BYTES * 2);
    big.set(s, SECTOR_BYTES);
    expect(decodeChecked(big, SECTOR_BYTES).ok).toBe(true);
    expect(decodeChecked(big, SECTOR_BYTES + 1).ok).toBe(false);
    expect(decodeChecked(big, -1).ok).toBe(false);
    expect((decodeSector as (x: unknown) => SectorDecode)(null).ok).toBe(false);
  });

  test("every byte of the header and history set to every interesting value, resealed", () => {
    const values = [0, 1, 2, 7, 8, 0x1f, 0x20, 0x7f, 0x80, 0xfe, 0xff];
    for (const s of samples()) {
      const counts = { ok: 0, bad: 0 };
      for (let off = 528; off < 2044; off++) {
        if ((off >= 1024 && off < 1040) || (off >= 1536 && off < 1552)) continue; // tags: resealed anyway
        for (const v of values) {
          const b = s.slice();
          b[off] = v;
          resealSector(b);
          const d = decodeChecked(b);
          if (d.ok) counts.ok++;
          else {
            counts.bad++;
            // A resealed sector is bad_field, except through the version field (unknown_version)
            // and the data CRC field (data_mismatch).
            const expected = off < 530 ? "unknown_version" : off >= 532 && off < 536 ? "data_mismatch" : "bad_field";
            expect(`${off}: ${d.class}`).toBe(`${off}: ${expected}`);
          }
        }
      }
      expect(counts.ok).toBeGreaterThan(0);
      expect(counts.bad).toBeGreaterThan(0);
    }
  });
});
