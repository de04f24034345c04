/** The scanner's slicing-by-8 CRC32C gives exactly the values of src/engine/crc32c.ts. */
import { expect, test } from "bun:test";
import { crc32c } from "../../src/engine/crc32c.ts";
import { crc32cRange } from "../../src/debugfmt/crc32c-sliced.ts";
import { bytes } from "./fixtures.ts";

test("same CRC as the engine's for every length 0..300 and random ranges, and continuation", () => {
  const b = bytes(9000, 42);
  for (let n = 0; n <= 300; n++) expect(crc32cRange(b, 0, n)).toBe(crc32c(b.subarray(0, n)));
  for (let i = 0; i < 2000; i++) {
    const s = (i * 7919) % 4000;
    const e = s + ((i * 104729) % 5000);
    expect(crc32cRange(b, s, e)).toBe(crc32c(b.subarray(s, e)));
    const m = s + ((e - s) >> 1);
    expect(crc32cRange(b, m, e, crc32cRange(b, s, m))).toBe(crc32c(b.subarray(s, e)));
  }
  // The standard check value of CRC-32C.
  expect(crc32cRange(new TextEncoder().encode("123456789"), 0, 9)).toBe(0xe3069283);
});
