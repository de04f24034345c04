/**
 * The metadata slot codec: pure functions over bytes. Two slots alternate; each holds a header
 * and an opaque payload (the TOMA's CBOR cluster state). Byte layout: docs/on-drive-format.md.
 *
 * A slot names its own index and its drive, so a write that landed in the wrong slot or came from
 * another drive's image is rejected rather than trusted.
 */
import { crc32c } from "../crc32c.ts";
import { uuidFromString } from "../uuid.ts";
import { DriveFormatError } from "./formatted-api.ts";
import { BLOCK_BYTES, type Invalid, isInvalid } from "./superblock.ts";

export const META_MAGIC = "NVMSMETA";
export const META_HEADER_BYTES = 64;
/** Bytes [0, CRC_OFFSET) of the header, then the payload, are covered by the CRC. */
const CRC_OFFSET = 40;

export interface MetaSlotContent {
  /** 0 only for the empty slots written by format; then payload is null. */
  generation: number;
  /** A copy owned by the caller (decode never returns a view of the bytes it was given). */
  payload: Uint8Array<ArrayBuffer> | null;
}

export interface SlotContext {
  slot_index: 0 | 1;
  drive_uuid: string;
  meta_slot_bytes: number;
}

export function maxMetaPayloadBytes(meta_slot_bytes: number): number {
  return meta_slot_bytes - META_HEADER_BYTES;
}

/** Bytes the slot occupies on the drive: header + payload, rounded up to whole blocks. */
export function metaSlotWriteBytes(payload_len: number): number {
  return Math.ceil((META_HEADER_BYTES + payload_len) / BLOCK_BYTES) * BLOCK_BYTES;
}

export function encodeMetaSlot(content: { generation: number; payload: Uint8Array | null }, ctx: SlotContext): Uint8Array {
  const { generation, payload } = content;
  if (!Number.isSafeInteger(generation) || generation < 0) throw new Error(`bad generation ${generation}`);
  if ((generation === 0) !== (payload === null)) throw new Error("generation 0 if and only if payload is null");
  const len = payload?.length ?? 0;
  if (len > maxMetaPayloadBytes(ctx.meta_slot_bytes)) {
    throw new Error(`metadata payload of ${len} bytes exceeds the slot's ${maxMetaPayloadBytes(ctx.meta_slot_bytes)}`);
  }
  const b = new Uint8Array(metaSlotWriteBytes(len));
  const dv = new DataView(b.buffer);
  b.set(new TextEncoder().encode(META_MAGIC), 0);
  dv.setBigUint64(8, BigInt(generation), true);
  dv.setUint32(16, len, true);
  dv.setUint32(20, ctx.slot_index, true);
  b.set(uuidFromString(ctx.drive_uuid), 24);
  if (payload) b.set(payload, META_HEADER_BYTES);
  dv.setUint32(CRC_OFFSET, slotCrc(b, len), true);
  return b;
}

function slotCrc(b: Uint8Array, len: number): number {
  return crc32c(b.subarray(META_HEADER_BYTES, META_HEADER_BYTES + len), crc32c(b.subarray(0, CRC_OFFSET)));
}

export function hasMetaMagic(bytes: Uint8Array): boolean {
  if (bytes.length < 8) return false;
  for (let i = 0; i < 8; i++) if (bytes[i] !== META_MAGIC.charCodeAt(i)) return false;
  return true;
}

/**
 * How many bytes must be read to decode this slot, judged from its first block; the first block
 * alone when the header is not trustworthy enough to say (decode will then name the reason).
 */
export function metaSlotReadBytes(header: Uint8Array, ctx: SlotContext): number {
  if (header.length < META_HEADER_BYTES || !hasMetaMagic(header)) return BLOCK_BYTES;
  const len = new DataView(header.buffer, header.byteOffset, META_HEADER_BYTES).getUint32(16, true);
  if (len > maxMetaPayloadBytes(ctx.meta_slot_bytes)) return BLOCK_BYTES;
  return metaSlotWriteBytes(len);
}

/** Validates and decodes one slot; never throws. */
export function checkMetaSlot(bytes: Uint8Array, ctx: SlotContext): MetaSlotContent | Invalid {
  if (bytes.length < META_HEADER_BYTES) return { invalid: `slot truncated: ${bytes.length} bytes` };
  if (!hasMetaMagic(bytes)) {
    return { invalid: bytes.subarray(0, META_HEADER_BYTES).every((x) => x === 0) ? "slot is blank" : "no slot magic" };
  }
  const dv = new DataView(bytes.buffer, bytes.byteOffset, META_HEADER_BYTES);
  const len = dv.getUint32(16, true);
  const max = maxMetaPayloadBytes(ctx.meta_slot_bytes);
  if (len > max) return { invalid: `payload length ${len} exceeds the slot's ${max}` };
  if (bytes.length < META_HEADER_BYTES + len) return { invalid: `slot truncated: ${bytes.length} bytes for a ${len}-byte payload` };
  const stored = dv.getUint32(CRC_OFFSET, true);
  if (stored !== slotCrc(bytes, len)) return { invalid: "slot checksum mismatch (torn or corrupt write)" };
  const gen = dv.getBigUint64(8, true);
  if (gen > BigInt(Number.MAX_SAFE_INTEGER)) return { invalid: `generation ${gen} beyond 2^53` };
  const generation = Number(gen);
  const index = dv.getUint32(20, true);
  if (index !== ctx.slot_index) return { invalid: `slot ${ctx.slot_index} holds a write meant for slot ${index}` };
  const want = uuidFromString(ctx.drive_uuid);
  for (let i = 0; i < 16; i++) if (bytes[24 + i] !== want[i]) return { invalid: "slot belongs to another drive" };
  for (let i = 44; i < META_HEADER_BYTES; i++) if (bytes[i] !== 0) return { invalid: `reserved slot byte ${i} is not zero` };
  if (generation === 0 && len !== 0) return { invalid: "generation 0 with a payload" };
  return { generation, payload: generation === 0 ? null : bytes.slice(META_HEADER_BYTES, META_HEADER_BYTES + len) };
}

/** As checkMetaSlot, but throws DriveFormatError (and nothing else) with the reason. */
export function decodeMetaSlot(bytes: Uint8Array, ctx: SlotContext): MetaSlotContent {
  const r = checkMetaSlot(bytes, ctx);
  if (isInvalid(r)) throw new DriveFormatError(`metadata slot ${ctx.slot_index}: ${r.invalid}`);
  return r;
}

/**
 * Which slot holds the drive's metadata, given what each decoded to: the recovery table of
 * docs/on-drive-format.md. Returns the chosen content and the slot the next write goes to.
 */
export function chooseMetaSlot(
  slots: [MetaSlotContent | Invalid, MetaSlotContent | Invalid],
  drive_uuid: string,
): { current: MetaSlotContent; next_slot: 0 | 1 } {
  const [a, b] = slots;
  if (isInvalid(a) && isInvalid(b)) {
    throw new DriveFormatError(
      `drive ${drive_uuid}: both metadata slots are unusable (slot 0: ${a.invalid}; slot 1: ${b.invalid}); refusing to treat the drive as empty`,
    );
  }
  if (isInvalid(b)) return { current: a as MetaSlotContent, next_slot: 1 };
  if (isInvalid(a)) return { current: b, next_slot: 0 };
  if (a.generation === b.generation && !(a.generation === 0 || sameBytes(a.payload, b.payload))) {
    throw new DriveFormatError(`drive ${drive_uuid}: both metadata slots claim generation ${a.generation} with different contents`);
  }
  if (b.generation > a.generation) return { current: b, next_slot: 0 };
  // On a tie (only the two empty slots format writes) the first write goes to slot 0.
  return { current: a, next_slot: a.generation > b.generation ? 1 : 0 };
}

function sameBytes(x: Uint8Array | null, y: Uint8Array | null): boolean {
  if (x === null || y === null) return x === y;
  return x.length === y.length && x.every((v, i) => v === y[i]);
}
