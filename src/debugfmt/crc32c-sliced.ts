/**
 * CRC-32C (Castagnoli) over a byte range, slicing-by-8: the same values as src/engine/crc32c.ts
 * (tests/debugfmt/crc32c-sliced.test.ts holds them equal), about 4.5x faster in Bun (1.7 GB/s
 * against 380 MB/s on this machine). Every debug sector is checksummed on every write and every
 * scan, so the forensic scan of a 1 GiB drive would spend most of its time in the byte-at-a-time
 * loop otherwise.
 *
 * `crc32cRange(bytes, start, end, seed)` continues a CRC: crc32cRange(b, m, n, crc32cRange(b, 0, m))
 * equals the CRC of bytes [0, n), which lets one pass give both the data CRC and the sector CRC.
 */
const POLY = 0x82f63b78;
const T = new Uint32Array(256 * 8);
for (let i = 0; i < 256; i++) {
  let c = i;
  for (let k = 0; k < 8; k++) c = c & 1 ? POLY ^ (c >>> 1) : c >>> 1;
  T[i] = c >>> 0;
}
for (let i = 0; i < 256; i++) {
  for (let s = 1; s < 8; s++) {
    const p = T[(s - 1) * 256 + i]!;
    T[s * 256 + i] = (T[p & 0xff]! ^ (p >>> 8)) >>> 0;
  }
}

export function crc32cRange(d: Uint8Array, start: number, end: number, seed = 0): number {
  let c = ~seed;
  let i = start;
  const last8 = end - 8;
  while (i <= last8) {
    const a = c ^ (d[i]! | (d[i + 1]! << 8) | (d[i + 2]! << 16) | (d[i + 3]! << 24));
    c =
      T[1792 + (a & 0xff)]! ^
      T[1536 + ((a >>> 8) & 0xff)]! ^
      T[1280 + ((a >>> 16) & 0xff)]! ^
      T[1024 + (a >>> 24)]! ^
      T[768 + d[i + 4]!]! ^
      T[512 + d[i + 5]!]! ^
      T[256 + d[i + 6]!]! ^
      T[d[i + 7]!]!;
    i += 8;
  }
  while (i < end) c = T[(c ^ d[i++]!) & 0xff]! ^ (c >>> 8);
  return ~c >>> 0;
}
