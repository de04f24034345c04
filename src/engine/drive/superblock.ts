/**
 * The superblock codec and the drive geometry: pure functions over bytes, shared by the real
 * drive, the simulator, the forensic tools and the fuzzers. Byte layout: docs/on-drive-format.md.
 *
 * A copy lives in the first 4096 bytes of the drive and an identical backup in the last whole
 * 4096-byte block, so one torn or unreadable sector never loses the drive's identity.
 */
import { crc32c } from "../crc32c.ts";
import { isNilUuid, uuidFromString, uuidToString } from "../uuid.ts";
import { DriveFormatError } from "./formatted-api.ts";

export const SUPERBLOCK_BYTES = 4096;
export const SUPERBLOCK_MAGIC = "NVMESHSB";
export const FORMAT_VERSION = 1;
export const BLOCK_BYTES = 4096;
const MiB = 1 << 20;
/** Metadata, bitmap and data start on 1 MiB boundaries (flash erase blocks, RAID chunks). */
export const REGION_ALIGN_BYTES = MiB;
export const DEFAULT_EXTENT_SIZE_BYTES = 16 * MiB;
export const MIN_EXTENT_SIZE_BYTES = MiB;
export const MAX_EXTENT_SIZE_BYTES = 1 << 30;
export const META_SLOT_BYTES = MiB;
export const MAX_META_SLOT_BYTES = 64 * MiB;
/** One write-intent bit per 1 MiB of data area: fine enough that a resync after a crash copies
 * little, coarse enough that the bitmap of a 16 TiB drive is 2 MiB. */
export const BITMAP_REGION_BYTES = MiB;

/** Bytes [0, CRC_OFFSET) are covered by the CRC stored at CRC_OFFSET; the rest must be zero. */
const CRC_OFFSET = 128;
export const SUPERBLOCK_USED_BYTES = CRC_OFFSET + 4;

export interface Geometry {
  size_bytes: number;
  block_bytes: number;
  extent_size_bytes: number;
  meta_offset: number;
  meta_slot_bytes: number;
  bitmap_offset: number;
  bitmap_bytes: number;
  bitmap_region_bytes: number;
  data_offset: number;
  extent_count: number;
}

const GEOMETRY_FIELDS: readonly (keyof Geometry)[] = [
  "size_bytes", "block_bytes", "extent_size_bytes", "meta_offset", "meta_slot_bytes",
  "bitmap_offset", "bitmap_bytes", "bitmap_region_bytes", "data_offset", "extent_count",
];

export interface Superblock extends Geometry {
  format_version: number;
  flags: number;
  /** Lower-case text form. */
  drive_uuid: string;
  /** NIL_UUID while unclaimed. */
  cluster_uuid: string;
}

export type Invalid = { invalid: string };

export function isInvalid(x: unknown): x is Invalid {
  return typeof x === "object" && x !== null && "invalid" in x;
}

const alignUp = (x: number, a: number) => Math.ceil(x / a) * a;
const alignDown = (x: number, a: number) => Math.floor(x / a) * a;
const isPow2 = (x: number) => Number.isSafeInteger(x) && x > 0 && 2 ** Math.round(Math.log2(x)) === x;

/** Where the backup superblock of a drive of this size lives: its last whole 4096-byte block. */
export function backupSuperblockOffset(size_bytes: number): number {
  return alignDown(size_bytes, SUPERBLOCK_BYTES) - SUPERBLOCK_BYTES;
}

/** Offset of metadata slot 0 or 1. */
export function metaSlotOffset(g: Geometry, slot: 0 | 1): number {
  return g.meta_offset + slot * g.meta_slot_bytes;
}

/** Smallest drive that holds one extent of this size. */
export function minDriveBytes(extent_size_bytes: number): number {
  // Found by the same arithmetic as computeGeometry, walking up until one extent fits.
  let size = 3 * REGION_ALIGN_BYTES + extent_size_bytes;
  while (isInvalid(computeGeometry(size, extent_size_bytes))) size += REGION_ALIGN_BYTES;
  while (!isInvalid(computeGeometry(size - BLOCK_BYTES, extent_size_bytes))) size -= BLOCK_BYTES;
  return size;
}

/** The layout a drive of size_bytes gets when formatted, or why it cannot be formatted. */
export function computeGeometry(size_bytes: number, extent_size_bytes: number): Geometry | Invalid {
  if (!isPow2(extent_size_bytes) || extent_size_bytes < MIN_EXTENT_SIZE_BYTES || extent_size_bytes > MAX_EXTENT_SIZE_BYTES) {
    return { invalid: `extent size ${extent_size_bytes} must be a power of two between 1 MiB and 1 GiB` };
  }
  if (!Number.isSafeInteger(size_bytes) || size_bytes < 0) return { invalid: `bad drive size ${size_bytes}` };
  const meta_offset = REGION_ALIGN_BYTES;
  const bitmap_offset = meta_offset + 2 * META_SLOT_BYTES;
  const end = backupSuperblockOffset(size_bytes);
  // Size the bitmap for the most the data area could be; data_offset then depends on it only.
  const upper_data_bytes = Math.max(0, end - bitmap_offset);
  const bitmap_bytes = Math.max(BLOCK_BYTES, alignUp(Math.ceil(upper_data_bytes / BITMAP_REGION_BYTES / 8), BLOCK_BYTES));
  const data_offset = alignUp(bitmap_offset + bitmap_bytes, REGION_ALIGN_BYTES);
  const extent_count = Math.floor(Math.max(0, end - data_offset) / extent_size_bytes);
  if (extent_count < 1) {
    return { invalid: `drive of ${size_bytes} bytes is too small for one extent of ${extent_size_bytes} bytes after the metadata (data starts at ${data_offset})` };
  }
  return {
    size_bytes,
    block_bytes: BLOCK_BYTES,
    extent_size_bytes,
    meta_offset,
    meta_slot_bytes: META_SLOT_BYTES,
    bitmap_offset,
    bitmap_bytes,
    bitmap_region_bytes: BITMAP_REGION_BYTES,
    data_offset,
    extent_count,
  };
}

/**
 * Checks a geometry read from a drive before anything is trusted: alignment, no overlaps,
 * everything inside the drive. Returns null when sane, else the first reason.
 */
export function checkGeometry(g: Geometry): string | null {
  for (const k of GEOMETRY_FIELDS) {
    const v = g[k];
    if (!Number.isSafeInteger(v) || v < 0) return `${k} ${v} is not a safe integer`;
  }
  if (g.block_bytes !== BLOCK_BYTES) return `block size ${g.block_bytes}, expected ${BLOCK_BYTES}`;
  if (!isPow2(g.extent_size_bytes) || g.extent_size_bytes < MIN_EXTENT_SIZE_BYTES || g.extent_size_bytes > MAX_EXTENT_SIZE_BYTES) {
    return `extent size ${g.extent_size_bytes} is not a power of two between 1 MiB and 1 GiB`;
  }
  if (g.meta_offset < SUPERBLOCK_BYTES || g.meta_offset % BLOCK_BYTES) return `meta_offset ${g.meta_offset} overlaps the superblock or is unaligned`;
  if (g.meta_slot_bytes < 2 * BLOCK_BYTES || g.meta_slot_bytes > MAX_META_SLOT_BYTES || g.meta_slot_bytes % BLOCK_BYTES) {
    return `meta_slot_bytes ${g.meta_slot_bytes} out of range or unaligned`;
  }
  const meta_end = g.meta_offset + 2 * g.meta_slot_bytes;
  if (g.bitmap_offset < meta_end || g.bitmap_offset % BLOCK_BYTES) return `bitmap_offset ${g.bitmap_offset} overlaps the metadata slots or is unaligned`;
  if (!isPow2(g.bitmap_region_bytes) || g.bitmap_region_bytes < BLOCK_BYTES) return `bitmap region ${g.bitmap_region_bytes} is not a power of two >= 4096`;
  if (g.bitmap_bytes % BLOCK_BYTES || g.bitmap_bytes === 0) return `bitmap_bytes ${g.bitmap_bytes} is zero or unaligned`;
  if (g.data_offset % REGION_ALIGN_BYTES || g.data_offset < g.bitmap_offset + g.bitmap_bytes) {
    return `data_offset ${g.data_offset} overlaps the bitmap or is not 1 MiB aligned`;
  }
  if (g.extent_count < 1) return "extent_count is 0";
  const data_bytes = g.extent_count * g.extent_size_bytes;
  if (!Number.isSafeInteger(g.data_offset + data_bytes)) return "data area overflows";
  const end = backupSuperblockOffset(g.size_bytes);
  if (g.data_offset + data_bytes > end) return `data area ends at ${g.data_offset + data_bytes}, beyond ${end} where the backup superblock of a ${g.size_bytes}-byte drive lives`;
  if (g.bitmap_bytes * 8 * g.bitmap_region_bytes < data_bytes) return `bitmap of ${g.bitmap_bytes} bytes does not cover ${data_bytes} bytes of data`;
  return null;
}

export function encodeSuperblock(sb: Superblock): Uint8Array {
  const why = checkGeometry(sb);
  if (why !== null) throw new Error(`refusing to encode an invalid superblock: ${why}`);
  const b = new Uint8Array(SUPERBLOCK_BYTES);
  const dv = new DataView(b.buffer);
  b.set(new TextEncoder().encode(SUPERBLOCK_MAGIC), 0);
  dv.setUint32(8, sb.format_version, true);
  dv.setUint32(12, sb.flags, true);
  b.set(uuidFromString(sb.drive_uuid), 16);
  b.set(uuidFromString(sb.cluster_uuid), 32);
  const u64 = (off: number, v: number) => dv.setBigUint64(off, BigInt(v), true);
  u64(48, sb.size_bytes);
  dv.setUint32(56, sb.block_bytes, true);
  // 60..64 reserved, zero.
  u64(64, sb.extent_size_bytes);
  u64(72, sb.meta_offset);
  u64(80, sb.meta_slot_bytes);
  u64(88, sb.bitmap_offset);
  u64(96, sb.bitmap_bytes);
  u64(104, sb.bitmap_region_bytes);
  u64(112, sb.data_offset);
  u64(120, sb.extent_count);
  dv.setUint32(CRC_OFFSET, crc32c(b.subarray(0, CRC_OFFSET)), true);
  return b;
}

/** True when the bytes start with our magic, whatever the rest holds (torn, corrupt, newer). */
export function hasSuperblockMagic(bytes: Uint8Array): boolean {
  if (bytes.length < 8) return false;
  for (let i = 0; i < 8; i++) if (bytes[i] !== SUPERBLOCK_MAGIC.charCodeAt(i)) return false;
  return true;
}

/** Validates and decodes; never throws. Checks run in the order that names the likeliest cause. */
export function checkSuperblock(bytes: Uint8Array): Superblock | Invalid {
  if (bytes.length < SUPERBLOCK_BYTES) return { invalid: `superblock truncated: ${bytes.length} bytes` };
  if (!hasSuperblockMagic(bytes)) return { invalid: "no nvmesh superblock magic" };
  const dv = new DataView(bytes.buffer, bytes.byteOffset, SUPERBLOCK_BYTES);
  const stored = dv.getUint32(CRC_OFFSET, true);
  const actual = crc32c(bytes.subarray(0, CRC_OFFSET));
  if (stored !== actual) return { invalid: `superblock checksum mismatch (stored ${hex(stored)}, computed ${hex(actual)})` };
  const format_version = dv.getUint32(8, true);
  if (format_version !== FORMAT_VERSION) return { invalid: `format version ${format_version}, this build reads ${FORMAT_VERSION}` };
  const flags = dv.getUint32(12, true);
  if (flags !== 0) return { invalid: `unknown superblock flags ${hex(flags)}` };
  if (dv.getUint32(60, true) !== 0) return { invalid: "reserved superblock bytes 60..64 are not zero" };
  for (let i = SUPERBLOCK_USED_BYTES; i < SUPERBLOCK_BYTES; i++) {
    if (bytes[i] !== 0) return { invalid: `reserved superblock byte ${i} is not zero` };
  }
  const drive = bytes.subarray(16, 32);
  if (isNilUuid(drive)) return { invalid: "drive uuid is nil" };
  const u64 = (off: number) => {
    const v = dv.getBigUint64(off, true);
    return v > BigInt(Number.MAX_SAFE_INTEGER) ? -1 : Number(v);
  };
  const sb: Superblock = {
    format_version,
    flags,
    drive_uuid: uuidToString(drive),
    cluster_uuid: uuidToString(bytes.subarray(32, 48)),
    size_bytes: u64(48),
    block_bytes: dv.getUint32(56, true),
    extent_size_bytes: u64(64),
    meta_offset: u64(72),
    meta_slot_bytes: u64(80),
    bitmap_offset: u64(88),
    bitmap_bytes: u64(96),
    bitmap_region_bytes: u64(104),
    data_offset: u64(112),
    extent_count: u64(120),
  };
  const why = checkGeometry(sb);
  if (why !== null) return { invalid: `superblock geometry: ${why}` };
  return sb;
}

/** As checkSuperblock, but throws DriveFormatError (and nothing else) with the reason. */
export function decodeSuperblock(bytes: Uint8Array): Superblock {
  const r = checkSuperblock(bytes);
  if (isInvalid(r)) throw new DriveFormatError(r.invalid);
  return r;
}

const hex = (x: number) => `0x${x.toString(16).padStart(8, "0")}`;
