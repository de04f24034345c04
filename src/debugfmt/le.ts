/**
 * Little-endian integers at fixed offsets, byte by byte: no DataView (which makes JSC materialise
 * the ArrayBuffer of every view it is given) and no allocation. u64 values are JavaScript numbers
 * and must be safe integers (≤ 2^53 − 1), as everywhere on nvmesh drives.
 */
export const MAX_U64_SAFE = Number.MAX_SAFE_INTEGER;
const TWO32 = 0x1_0000_0000;

export function getU16(b: Uint8Array, o: number): number {
  return b[o]! | (b[o + 1]! << 8);
}

export function getU32(b: Uint8Array, o: number): number {
  return (b[o]! | (b[o + 1]! << 8) | (b[o + 2]! << 16) | (b[o + 3]! << 24)) >>> 0;
}

/** The u64 at o, or -1 when it does not fit a safe integer. */
export function getU64(b: Uint8Array, o: number): number {
  const hi = getU32(b, o + 4);
  if (hi > 0x1f_ffff) return -1;
  return hi * TWO32 + getU32(b, o);
}

export function putU16(b: Uint8Array, o: number, v: number): void {
  b[o] = v & 0xff;
  b[o + 1] = (v >>> 8) & 0xff;
}

export function putU32(b: Uint8Array, o: number, v: number): void {
  b[o] = v & 0xff;
  b[o + 1] = (v >>> 8) & 0xff;
  b[o + 2] = (v >>> 16) & 0xff;
  b[o + 3] = (v >>> 24) & 0xff;
}

export function putU64(b: Uint8Array, o: number, v: number): void {
  putU32(b, o, v % TWO32);
  putU32(b, o + 4, Math.floor(v / TWO32));
}

/** True when bytes [start, end) are all zero. */
export function isZeroRange(b: Uint8Array, start: number, end: number): boolean {
  let i = start;
  for (const last4 = end - 4; i <= last4; i += 4) if ((b[i]! | b[i + 1]! | b[i + 2]! | b[i + 3]!) !== 0) return false;
  for (; i < end; i++) if (b[i] !== 0) return false;
  return true;
}

export function isU64(v: number): boolean {
  return Number.isSafeInteger(v) && v >= 0;
}

export function isU32(v: number): boolean {
  return Number.isInteger(v) && v >= 0 && v <= 0xffff_ffff;
}
