/**
 * The control-plane version block codec: pure functions over bytes. A target remembers, per
 * drive, the highest control-plane version a TOMA request carried (docs/toma-cluster.md, "Fenced
 * at the drives"), and refuses older ones. That number must outlive the target process: after a
 * restart, a deposed TOMA that reconnected first could otherwise push an old fence table and
 * re-admit a client the newer TOMA had fenced out and whose locks it had already recovered.
 *
 * Two copies in the unused space between the superblock and the metadata slots (4 KiB blocks at
 * 4096 and 8192), written alternately: a torn write leaves the other copy, whose version the
 * interrupted write had not been acknowledged above. Byte layout: docs/on-drive-format.md.
 */
import { crc32c } from "../crc32c.ts";
import { uuidFromString, uuidToString } from "../uuid.ts";
import { BLOCK_BYTES, type Invalid } from "./superblock.ts";

export const CONTROL_VERSION_MAGIC = "NVMCTLV1";
/** Where the two copies live; a drive whose metadata starts before their end cannot keep one. */
export const CONTROL_VERSION_OFFSETS = [BLOCK_BYTES, 2 * BLOCK_BYTES] as const;
export const CONTROL_VERSION_END = 3 * BLOCK_BYTES;
const CRC_OFFSET = 32;

export function encodeControlVersion(version: number, drive_uuid: string): Uint8Array {
  if (!Number.isSafeInteger(version) || version < 0) throw new RangeError(`bad control-plane version ${version}`);
  const b = new Uint8Array(BLOCK_BYTES);
  const dv = new DataView(b.buffer);
  b.set(new TextEncoder().encode(CONTROL_VERSION_MAGIC), 0);
  dv.setBigUint64(8, BigInt(version), true);
  b.set(uuidFromString(drive_uuid), 16);
  dv.setUint32(CRC_OFFSET, crc32c(b.subarray(0, CRC_OFFSET)), true);
  return b;
}

/**
 * A block's version, or why it holds none. Blank space (a drive formatted before the block
 * existed, or never written) is `{invalid}`, which the reader takes as "no version seen yet".
 */
export function decodeControlVersion(b: Uint8Array, drive_uuid: string): { version: number } | Invalid {
  if (b.length < BLOCK_BYTES) return { invalid: `control-version block of ${b.length} bytes` };
  const magic = new TextDecoder().decode(b.subarray(0, 8));
  if (magic !== CONTROL_VERSION_MAGIC) return { invalid: "no control-version magic" };
  const dv = new DataView(b.buffer, b.byteOffset, b.length);
  if (dv.getUint32(CRC_OFFSET, true) !== crc32c(b.subarray(0, CRC_OFFSET))) return { invalid: "control-version block CRC mismatch" };
  const owner = uuidToString(b.subarray(16, 32));
  if (owner !== drive_uuid) return { invalid: `control-version block of drive ${owner}` };
  for (let i = CRC_OFFSET + 4; i < BLOCK_BYTES; i++) if (b[i] !== 0) return { invalid: "control-version block: reserved bytes not zero" };
  const version = Number(dv.getBigUint64(8, true));
  if (!Number.isSafeInteger(version)) return { invalid: `control-version ${version} above 2^53` };
  return { version };
}
