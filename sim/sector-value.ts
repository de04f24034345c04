/**
 * What the simulated workload writes into each 512-byte sector, so that a read tells the checker
 * exactly which write it returned and whether the sector is whole and in its right place:
 *   0..4   write id (u32 LE; a sector of zeroes is the initial value, id 0)
 *   4..8   volume index
 *   8..16  sector number within the volume (u64 LE)
 *   16..508 filler derived from (id, sector)
 *   508..512 CRC-32C of bytes 0..508
 */
import { crc32c } from "../src/engine/crc32c.ts";

export const SECTOR = 512;

export type SectorReading =
  | { kind: "value"; id: number }
  | { kind: "misplaced"; id: number; volume: number; sector: number }
  | { kind: "garbage" };

function filler(id: number, sector: number, out: DataView): void {
  let x = (Math.imul(id, 0x9e3779b1) ^ Math.imul(sector + 1, 0x85ebca6b)) >>> 0;
  for (let i = 16; i < 508; i += 4) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out.setUint32(i, x >>> 0, true);
  }
}

/** Fills `dst` (a whole number of sectors) with write `id`'s content for sectors from `first`. */
export function encodeSectors(dst: Uint8Array, id: number, volume: number, first: number): void {
  for (let off = 0, s = first; off < dst.length; off += SECTOR, s++) {
    const sec = dst.subarray(off, off + SECTOR);
    const dv = new DataView(sec.buffer, sec.byteOffset, SECTOR);
    dv.setUint32(0, id, true);
    dv.setUint32(4, volume, true);
    dv.setBigUint64(8, BigInt(s), true);
    filler(id, s, dv);
    dv.setUint32(508, crc32c(sec.subarray(0, 508)), true);
  }
}

const scratch = new Uint8Array(SECTOR);

/** Decodes one sector read from `volume` at `sector`. */
export function decodeSector(sec: Uint8Array, volume: number, sector: number): SectorReading {
  let zero = true;
  for (let i = 0; i < SECTOR; i++) {
    if (sec[i] !== 0) {
      zero = false;
      break;
    }
  }
  if (zero) return { kind: "value", id: 0 };
  const dv = new DataView(sec.buffer, sec.byteOffset, SECTOR);
  if (dv.getUint32(508, true) !== crc32c(sec.subarray(0, 508))) return { kind: "garbage" };
  const id = dv.getUint32(0, true);
  const vol = dv.getUint32(4, true);
  const s = Number(dv.getBigUint64(8, true));
  // The CRC holds, so the filler is checked too (a whole, well-formed sector of another write).
  encodeSectors(scratch, id, vol, s);
  for (let i = 16; i < 508; i++) if (scratch[i] !== sec[i]) return { kind: "garbage" };
  if (vol !== volume || s !== sector) return { kind: "misplaced", id, volume: vol, sector: s };
  return { kind: "value", id };
}
