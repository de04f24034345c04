/**
 * The debug physical sector: one 512-byte logical sector stored in 2048 bytes together with who
 * wrote it, in what state, the I/O it was part of, and the history of earlier writes of the same
 * block, under one checksum. Byte layout, field by field: docs/debug-format.md.
 *
 * The 2048 bytes are four 512-byte chunks (a drive may tear a write at any 512-byte boundary):
 *   chunk 0  data
 *   chunk 1  tag + header fields
 *   chunk 2  tag + history entries 0..11
 *   chunk 3  tag + history entries 12..23, then the sector CRC (CRC32C of bytes 0..2043)
 * Each tag holds the chunk's magic (with its index), the record tag (a CRC of the header fields,
 * the same in the three chunks) and a CRC of the chunk. When the sector CRC fails, the chunk
 * checks say which part is damaged and whether the parts belong to different writes (torn).
 *
 * `encodeSector` asserts its input (a bad record is a bug of the writer, not data);
 * `decodeSector` never throws and classifies what it finds.
 */
import { NIL_UUID, uuidFromString, uuidToString } from "../engine/uuid.ts";
import { crc32cRange } from "./crc32c-sliced.ts";
import { getU16, getU32, getU64, isU32, isU64, isZeroRange, putU16, putU32, putU64 } from "./le.ts";

export const SECTOR_BYTES = 2048;
export const DATA_BYTES = 512;
export const CHUNK_BYTES = 512;
/** Logical sectors per physical: what the data path multiplies offsets by. */
export const SECTOR_RATIO = SECTOR_BYTES / DATA_BYTES;
export const SECTOR_FORMAT_VERSION = 1;
export const HISTORY_MAX = 24;
export const HISTORY_PER_CHUNK = 12;
export const HISTORY_ENTRY_BYTES = 40;
export const MAX_LEGS = 8;
export const CLIENT_NAME_BYTES = 16;
/** header_flags bit 0: the writer held the lock(s) its mirror topology prescribes for the block. */
export const HEADER_FLAG_LOCKED = 1;

/** The chunk magics: "NVDBGSC" and the chunk's index. */
const MAGIC_PREFIX = [0x4e, 0x56, 0x44, 0x42, 0x47, 0x53, 0x43]; // "NVDBGSC"

/** Absolute byte offsets in the sector (docs/debug-format.md has the same table). */
export const OFF = {
  data: 0,
  // chunk 1: tag, then the header fields [VERSION, FIELDS_END)
  version: 528,
  header_flags: 530,
  data_crc: 532,
  volume_uuid: 536,
  lba: 552,
  client_id: 560,
  client_name: 568,
  generation: 584,
  topo_state: 592,
  legs_mask: 593,
  leg_index: 594,
  leg_count: 595,
  op: 596,
  io_flags: 597,
  history_count: 598,
  reserved_599: 599,
  io_first_lba: 600,
  io_sectors: 608,
  io_index: 612,
  seq: 616,
  seed_id: 624,
  worker: 628,
  step: 632,
  pattern_workers: 640,
  pattern_block_sectors: 644,
  pattern_blocks: 648,
  pattern_base_lba: 656,
  fields_end: 664,
  history_chunk2: 1040,
  history_chunk3: 1552,
  sector_crc: 2044,
} as const;

/** Per chunk k (1..3): where its tag is and which bytes its chunk CRC covers. */
const TAG_MAGIC = 0;
const TAG_RECORD = 8;
const TAG_CRC = 12;
const TAG_BYTES = 16;
const chunkStart = (k: number) => k * CHUNK_BYTES;
const chunkEnd = (k: number) => (k === 3 ? OFF.sector_crc : (k + 1) * CHUNK_BYTES);

export const TOPO_STATES = ["none", "normal", "degraded", "rebuild_init", "rebuild", "dual_lock"] as const;
export type TopoState = (typeof TOPO_STATES)[number];
export const OP_KINDS = ["write", "write_zeroes", "trim"] as const; // on disk: index + 1
export type OpKind = (typeof OP_KINDS)[number];
export const HISTORY_KINDS = ["remembered", "predicted"] as const; // on disk: index + 1
export type HistoryKind = (typeof HISTORY_KINDS)[number];

/**
 * One earlier write of this block. "remembered": the writer knew it exactly (all fields).
 * "predicted": computed from the verify pattern; step and data_crc are exact, client_id is the
 * writer's own, generation and seq are 0 (unknown), topo_state "none", legs_mask 0.
 */
export interface HistoryEntry {
  kind: HistoryKind;
  client_id: number;
  generation: number;
  seq: number;
  step: number;
  data_crc: number;
  topo_state: TopoState;
  legs_mask: number;
  op: OpKind;
}

/** Where the verify workload's data comes from; null for data that is not verify data. */
export interface PatternStamp {
  /** ≥ 1 (0 on disk means "not verify data"). */
  seed_id: number;
  worker: number;
  step: number;
  workers: number;
  blocks: number;
  block_sectors: number;
  base_lba: number;
}

export interface SectorFields {
  volume_uuid: string;
  /** Logical 512-byte sector number in the volume. */
  lba: number;
  client_id: number;
  /** At most 16 bytes of UTF-8 (see shortClientName). */
  client_name: string;
  /** The writer's topology generation. */
  generation: number;
  topo_state: TopoState;
  /** Legs of the mirror set (1 when the volume has one copy), at most 8. */
  leg_count: number;
  /** Bit i set: the writer sent this I/O to leg i. */
  legs_mask: number;
  /** The leg this copy was written to. */
  leg_index: number;
  op: OpKind;
  fua: boolean;
  /**
   * Mirrors (leg_count ≥ 2): the writer held every lock its topology prescribes for this block
   * while it wrote (header_flags bit 0). Always false with one leg: nothing is locked there.
   */
  locked: boolean;
  io_first_lba: number;
  io_sectors: number;
  /** This sector's index in the I/O: lba = io_first_lba + io_index. */
  io_index: number;
  /** Per-client sequence number of the I/O. */
  seq: number;
  pattern: PatternStamp | null;
  /** Newest first, at most HISTORY_MAX. */
  history: HistoryEntry[];
}

export interface DebugSector extends SectorFields {
  /** A view of the 512 data bytes inside the decoded buffer (not a copy). */
  data: Uint8Array;
  data_crc: number;
  /** CRC32C of the header field bytes: names this record in all three chunk tags. */
  record_tag: number;
}

export type SectorClass =
  | "empty"
  | "not_debug"
  | "bad_magic"
  | "unknown_version"
  | "checksum_bad"
  | "data_mismatch"
  | "torn"
  | "bad_field"
  | "wrong_size";

export type SectorDecode =
  | { ok: true; fields: DebugSector }
  /**
   * fields: what could still be trusted (an intact header chunk), else null. sealed: the sector
   * CRC was right, so what is wrong was written so by the writer (bad_field, data_mismatch).
   */
  | { ok: false; class: SectorClass; reason: string; fields: DebugSector | null; sealed?: true };

const utf8 = new TextEncoder();
const utf8Strict = new TextDecoder("utf-8", { fatal: true });

/**
 * The last few byte strings decoded to text (a drive holds few distinct volumes and clients, and
 * a scan decodes millions of sectors): compared byte by byte, which is far cheaper than building
 * the string again.
 */
class TextCache {
  private readonly keys: Uint8Array[] = [];
  private readonly values: (string | null)[] = [];
  private next = 0;
  constructor(
    private readonly size: number,
    private readonly decode: (b: Uint8Array) => string | null,
  ) {}
  get(bytes: Uint8Array, length = bytes.length): string | null {
    outer: for (let k = 0; k < this.keys.length; k++) {
      const key = this.keys[k]!;
      if (key.length !== length) continue;
      for (let i = 0; i < length; i++) if (key[i] !== bytes[i]) continue outer;
      return this.values[k]!;
    }
    const key = bytes.slice(0, length);
    const value = this.decode(key);
    this.keys[this.next] = key;
    this.values[this.next] = value;
    this.next = (this.next + 1) % this.size;
    return value;
  }
}

const uuidCache = new TextCache(16, (b) => uuidToString(b));
const clientNameCache = new TextCache(16, (b) => {
  try {
    return utf8Strict.decode(b);
  } catch {
    return null;
  }
});

/** The longest prefix of name that fits the 16-byte client name field (whole characters). */
export function shortClientName(name: string): string {
  const buf = new Uint8Array(CLIENT_NAME_BYTES);
  const { read } = utf8.encodeInto(name.replaceAll("\0", ""), buf);
  return name.replaceAll("\0", "").slice(0, read);
}

/** Why these fields cannot be encoded, or null: the encoder's assertion. */
export function fieldsProblem(f: SectorFields): string | null {
  if (!/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/.test(f.volume_uuid)) return `volume_uuid '${f.volume_uuid}' is not a lower-case uuid`;
  if (/^[0-]+$/.test(f.volume_uuid)) return "volume_uuid is nil";
  for (const k of ["lba", "client_id", "generation", "io_first_lba", "seq"] as const) {
    if (!isU64(f[k])) return `${k} ${f[k]} is not a u64 (safe integer)`;
  }
  if (utf8.encode(f.client_name).length > CLIENT_NAME_BYTES) return `client_name '${f.client_name}' is longer than ${CLIENT_NAME_BYTES} bytes`;
  if (f.client_name.includes("\0")) return "client_name contains NUL";
  return relationProblem(f);
}

/**
 * The checks of fields that bytes can violate even when each field decodes: ranges and the
 * relations between fields. Shared by the encoder and the decoder (which has checked the
 * formats: uuid, name, u64 fit, enum bytes, while reading).
 */
function relationProblem(f: SectorFields): string | null {
  if (!TOPO_STATES.includes(f.topo_state)) return `topo_state '${f.topo_state}' unknown`;
  if (!Number.isInteger(f.leg_count) || f.leg_count < 1 || f.leg_count > MAX_LEGS) return `leg_count ${f.leg_count} not in 1..${MAX_LEGS}`;
  if (!Number.isInteger(f.leg_index) || f.leg_index < 0 || f.leg_index >= f.leg_count) return `leg_index ${f.leg_index} not below leg_count ${f.leg_count}`;
  if (!Number.isInteger(f.legs_mask) || f.legs_mask <= 0 || f.legs_mask >= 1 << f.leg_count) return `legs_mask ${f.legs_mask} not a non-empty subset of ${f.leg_count} legs`;
  if ((f.legs_mask & (1 << f.leg_index)) === 0) return `legs_mask ${legsText(f.legs_mask)} does not contain this copy's leg ${f.leg_index}`;
  if (!OP_KINDS.includes(f.op)) return `op '${f.op}' unknown`;
  if (f.locked && f.leg_count < 2) return "locked is set on a volume with one leg (nothing is locked there)";
  if (!isU32(f.io_sectors) || f.io_sectors < 1) return `io_sectors ${f.io_sectors} not in 1..2^32-1`;
  if (!isU32(f.io_index) || f.io_index >= f.io_sectors) return `io_index ${f.io_index} not below io_sectors ${f.io_sectors}`;
  if (f.io_first_lba + f.io_index !== f.lba) return `lba ${f.lba} is not io_first_lba ${f.io_first_lba} + io_index ${f.io_index}`;
  if (f.pattern !== null) {
    const p = f.pattern;
    if (!isU32(p.seed_id) || p.seed_id < 1) return `pattern seed_id ${p.seed_id} not in 1..2^32-1`;
    if (!isU32(p.workers) || p.workers < 1) return `pattern workers ${p.workers} not in 1..2^32-1`;
    if (!isU32(p.worker) || p.worker >= p.workers) return `pattern worker ${p.worker} not below workers ${p.workers}`;
    if (!isU32(p.block_sectors) || p.block_sectors < 1) return `pattern block_sectors ${p.block_sectors} not in 1..2^32-1`;
    for (const k of ["step", "blocks", "base_lba"] as const) if (!isU64(p[k])) return `pattern ${k} ${p[k]} is not a u64`;
    if (p.blocks < 1) return "pattern blocks is 0";
  }
  if (f.history.length > HISTORY_MAX) return `history has ${f.history.length} entries, at most ${HISTORY_MAX}`;
  for (const [i, h] of f.history.entries()) {
    if (!HISTORY_KINDS.includes(h.kind)) return `history ${i}: kind '${h.kind}' unknown`;
    for (const k of ["client_id", "generation", "seq", "step"] as const) if (!isU64(h[k])) return `history ${i}: ${k} ${h[k]} is not a u64`;
    if (!isU32(h.data_crc)) return `history ${i}: data_crc ${h.data_crc} is not a u32`;
    if (!TOPO_STATES.includes(h.topo_state)) return `history ${i}: topo_state '${h.topo_state}' unknown`;
    if (!Number.isInteger(h.legs_mask) || h.legs_mask < 0 || h.legs_mask > 0xff) return `history ${i}: legs_mask ${h.legs_mask} not a byte`;
    if (!OP_KINDS.includes(h.op)) return `history ${i}: op '${h.op}' unknown`;
  }
  return null;
}

/**
 * Encodes one debug sector into out[at, at + 2048) and returns out. data: the 512 logical bytes.
 * Throws (a writer bug) when the fields are invalid.
 */
export function encodeSector(fields: SectorFields, data: Uint8Array, out: Uint8Array = new Uint8Array(SECTOR_BYTES), at = 0): Uint8Array {
  const problem = fieldsProblem(fields);
  if (problem !== null) throw new Error(`debug sector: ${problem}`);
  if (data.length !== DATA_BYTES) throw new Error(`debug sector: data must be ${DATA_BYTES} bytes, got ${data.length}`);
  if (at < 0 || at + SECTOR_BYTES > out.length) throw new Error(`debug sector: no room at ${at} in ${out.length} bytes`);
  const b = at === 0 && out.length === SECTOR_BYTES ? out : out.subarray(at, at + SECTOR_BYTES);
  b.fill(0);
  b.set(data, 0);
  const data_crc = crc32cRange(b, 0, DATA_BYTES);
  putU16(b, OFF.version, SECTOR_FORMAT_VERSION);
  putU16(b, OFF.header_flags, fields.locked ? HEADER_FLAG_LOCKED : 0);
  putU32(b, OFF.data_crc, data_crc);
  b.set(uuidFromString(fields.volume_uuid), OFF.volume_uuid);
  putU64(b, OFF.lba, fields.lba);
  putU64(b, OFF.client_id, fields.client_id);
  utf8.encodeInto(fields.client_name, b.subarray(OFF.client_name, OFF.client_name + CLIENT_NAME_BYTES));
  putU64(b, OFF.generation, fields.generation);
  b[OFF.topo_state] = TOPO_STATES.indexOf(fields.topo_state);
  b[OFF.legs_mask] = fields.legs_mask;
  b[OFF.leg_index] = fields.leg_index;
  b[OFF.leg_count] = fields.leg_count;
  b[OFF.op] = OP_KINDS.indexOf(fields.op) + 1;
  b[OFF.io_flags] = fields.fua ? 1 : 0;
  b[OFF.history_count] = fields.history.length;
  putU64(b, OFF.io_first_lba, fields.io_first_lba);
  putU32(b, OFF.io_sectors, fields.io_sectors);
  putU32(b, OFF.io_index, fields.io_index);
  putU64(b, OFF.seq, fields.seq);
  const p = fields.pattern;
  if (p !== null) {
    putU32(b, OFF.seed_id, p.seed_id);
    putU32(b, OFF.worker, p.worker);
    putU64(b, OFF.step, p.step);
    putU32(b, OFF.pattern_workers, p.workers);
    putU32(b, OFF.pattern_block_sectors, p.block_sectors);
    putU64(b, OFF.pattern_blocks, p.blocks);
    putU64(b, OFF.pattern_base_lba, p.base_lba);
  }
  fields.history.forEach((h, i) => writeHistoryEntry(b, historyOffset(i), h));
  const tag = crc32cRange(b, OFF.version, OFF.fields_end);
  for (let k = 1; k <= 3; k++) {
    const s = chunkStart(k);
    b.set(MAGIC_PREFIX, s + TAG_MAGIC);
    b[s + TAG_MAGIC + 7] = 0x30 + k;
    putU32(b, s + TAG_RECORD, tag);
    putU32(b, s + TAG_CRC, chunkCrc(b, k));
  }
  putU32(b, OFF.sector_crc, crc32cRange(b, DATA_BYTES, OFF.sector_crc, data_crc));
  return out;
}

/**
 * Recomputes the record tag, the chunk tags and CRCs and the sector CRC of b[at, at + 2048) over
 * its current bytes. For tests and for planting corruptions that a writer could have made (a field
 * it got wrong, with every checksum right); the data CRC field is left as it is.
 */
export function resealSector(b: Uint8Array, at = 0): void {
  const s = b.subarray(at, at + SECTOR_BYTES);
  const tag = crc32cRange(s, OFF.version, OFF.fields_end);
  for (let k = 1; k <= 3; k++) {
    const c = chunkStart(k);
    s.set(MAGIC_PREFIX, c + TAG_MAGIC);
    s[c + TAG_MAGIC + 7] = 0x30 + k;
    putU32(s, c + TAG_RECORD, tag);
    putU32(s, c + TAG_CRC, chunkCrc(s, k));
  }
  putU32(s, OFF.sector_crc, crc32cRange(s, 0, OFF.sector_crc));
}

function historyOffset(i: number): number {
  return i < HISTORY_PER_CHUNK ? OFF.history_chunk2 + i * HISTORY_ENTRY_BYTES : OFF.history_chunk3 + (i - HISTORY_PER_CHUNK) * HISTORY_ENTRY_BYTES;
}

function writeHistoryEntry(b: Uint8Array, o: number, h: HistoryEntry): void {
  putU64(b, o, h.client_id);
  putU64(b, o + 8, h.generation);
  putU64(b, o + 16, h.seq);
  putU64(b, o + 24, h.step);
  putU32(b, o + 32, h.data_crc);
  b[o + 36] = HISTORY_KINDS.indexOf(h.kind) + 1;
  b[o + 37] = TOPO_STATES.indexOf(h.topo_state);
  b[o + 38] = h.legs_mask;
  b[o + 39] = OP_KINDS.indexOf(h.op) + 1;
}

function chunkCrc(b: Uint8Array, k: number): number {
  const s = chunkStart(k);
  return crc32cRange(b, s + TAG_BYTES, chunkEnd(k), crc32cRange(b, s, s + TAG_CRC));
}

function hasChunkMagic(b: Uint8Array, k: number): boolean {
  const s = chunkStart(k);
  for (let i = 0; i < 7; i++) if (b[s + i] !== MAGIC_PREFIX[i]) return false;
  return b[s + 7] === 0x30 + k;
}

/** Which chunk magic, if any, chunk position k holds (another index means a misplaced chunk). */
function chunkMagicIndex(b: Uint8Array, k: number): number | null {
  const s = chunkStart(k);
  for (let i = 0; i < 7; i++) if (b[s + i] !== MAGIC_PREFIX[i]) return null;
  const idx = b[s + 7]! - 0x30;
  return idx >= 1 && idx <= 3 ? idx : null;
}

/** The state of one metadata chunk when the sector CRC has failed. */
type ChunkState = "intact" | "blank" | "damaged" | "misplaced";

const CHUNK_NAMES = ["data (chunk 0)", "header (chunk 1)", "history 1-12 (chunk 2)", "history 13-24 (chunk 3)"];

/**
 * Decodes and classifies 2048 bytes at b[at]. Never throws. The rules, in order:
 * wrong_size; empty (all zero); not_debug (no chunk magic anywhere); bad_magic (the header chunk
 * lost its magic while another chunk has one, and is not blank); unknown_version; then, with the
 * sector CRC good: bad_field (a field out of range, reserved bytes set, tags disagreeing) or
 * data_mismatch (the header's data CRC does not describe the data) or ok; with it bad: torn (every
 * chunk intact or blank, but they belong to different writes, or the data is blank or an older
 * write's data from the history), data_mismatch (metadata intact, data unexplained), else
 * checksum_bad (naming the damaged chunks).
 */
export function decodeSector(buf: Uint8Array, at = 0): SectorDecode {
  if (!(buf instanceof Uint8Array) || at < 0 || buf.length - at < SECTOR_BYTES) {
    const n = buf instanceof Uint8Array ? Math.max(0, buf.length - at) : 0;
    return { ok: false, class: "wrong_size", reason: `${n} bytes, a debug sector is ${SECTOR_BYTES}`, fields: null };
  }
  const b = at === 0 && buf.length === SECTOR_BYTES ? buf : buf.subarray(at, at + SECTOR_BYTES);
  const magic1 = hasChunkMagic(b, 1);
  if (!magic1) {
    if (isZeroRange(b, 0, SECTOR_BYTES)) return { ok: false, class: "empty", reason: "all zero", fields: null };
    const others = [2, 3].filter((k) => chunkMagicIndex(b, k) !== null);
    if (others.length === 0 && chunkMagicIndex(b, 1) === null) {
      return { ok: false, class: "not_debug", reason: "no debug sector magic in any chunk", fields: null };
    }
    if (!isZeroRange(b, chunkStart(1), chunkEnd(1)) || others.length === 0) {
      return { ok: false, class: "bad_magic", reason: `header chunk has no valid magic (chunks ${others.join(",") || "none"} have theirs)`, fields: null };
    }
    // A blank header chunk beside intact chunks: a write that landed in part.
    return tornOrDamaged(b, null);
  }
  const version = getU16(b, OFF.version);
  if (version !== SECTOR_FORMAT_VERSION) {
    return { ok: false, class: "unknown_version", reason: `format version ${version}, this nvmesh reads ${SECTOR_FORMAT_VERSION}`, fields: null };
  }
  const data_crc = crc32cRange(b, 0, DATA_BYTES);
  const sector_crc = crc32cRange(b, DATA_BYTES, OFF.sector_crc, data_crc);
  if (sector_crc === getU32(b, OFF.sector_crc)) {
    const parsed = parseFields(b, HISTORY_MAX);
    if (typeof parsed === "string") return { ok: false, class: "bad_field", reason: parsed, fields: null, sealed: true };
    const extra = sealedProblem(b, parsed);
    if (extra !== null) return { ok: false, class: "bad_field", reason: extra, fields: parsed, sealed: true };
    if (parsed.data_crc !== data_crc) {
      return {
        ok: false,
        class: "data_mismatch",
        reason: `the header's data checksum ${hex(parsed.data_crc)} does not match the data (${hex(data_crc)}) although the sector checksum is intact: written so by its writer`,
        fields: parsed,
        sealed: true,
      };
    }
    return { ok: true, fields: parsed };
  }
  return tornOrDamaged(b, data_crc);
}

/** Checks of a sector whose CRC is good that parseFields does not make: tags, magics, reserved. */
function sealedProblem(b: Uint8Array, f: DebugSector): string | null {
  for (let k = 2; k <= 3; k++) {
    if (!hasChunkMagic(b, k)) return `chunk ${k} has no valid magic`;
    if (getU32(b, chunkStart(k) + TAG_RECORD) !== f.record_tag) return `chunk ${k} names another record (tag ${hex(getU32(b, chunkStart(k) + TAG_RECORD))}, header ${hex(f.record_tag)})`;
  }
  if (!isZeroRange(b, OFF.history_chunk2 + HISTORY_PER_CHUNK * HISTORY_ENTRY_BYTES, chunkEnd(2))) return "reserved bytes of chunk 2 are not zero";
  if (!isZeroRange(b, OFF.history_chunk3 + HISTORY_PER_CHUNK * HISTORY_ENTRY_BYTES, OFF.sector_crc)) return "reserved bytes of chunk 3 are not zero";
  for (let i = f.history.length; i < HISTORY_MAX; i++) {
    const o = historyOffset(i);
    if (!isZeroRange(b, o, o + HISTORY_ENTRY_BYTES)) return `history entry ${i} is beyond history_count ${f.history.length} but not zero`;
  }
  return null;
}

/**
 * Reads the header fields of chunk 1 (and up to `limit` history entries) and checks them. Returns
 * the fields or why they are invalid. Assumes the magic and version were checked.
 */
function parseFields(b: Uint8Array, limit: number): DebugSector | string {
  const header_flags = getU16(b, OFF.header_flags);
  if ((header_flags & ~HEADER_FLAG_LOCKED) !== 0) return `header flags ${header_flags} unknown`;
  if (b[OFF.reserved_599] !== 0) return "reserved header byte 599 is not zero";
  if (!isZeroRange(b, OFF.fields_end, chunkEnd(1))) return "reserved bytes of the header chunk are not zero";
  const u64 = (name: string, o: number): number | string => {
    const v = getU64(b, o);
    return v < 0 ? `${name} does not fit a safe integer` : v;
  };
  const lba = u64("lba", OFF.lba);
  const client_id = u64("client_id", OFF.client_id);
  const generation = u64("generation", OFF.generation);
  const io_first_lba = u64("io_first_lba", OFF.io_first_lba);
  const seq = u64("seq", OFF.seq);
  const step = u64("step", OFF.step);
  const blocks = u64("pattern_blocks", OFF.pattern_blocks);
  const base_lba = u64("pattern_base_lba", OFF.pattern_base_lba);
  for (const v of [lba, client_id, generation, io_first_lba, seq, step, blocks, base_lba]) if (typeof v === "string") return v;
  const topo = b[OFF.topo_state]!;
  if (topo >= TOPO_STATES.length) return `topology state ${topo} unknown`;
  const op = b[OFF.op]!;
  if (op < 1 || op > OP_KINDS.length) return `op ${op} unknown`;
  const io_flags = b[OFF.io_flags]!;
  if ((io_flags & ~1) !== 0) return `io flags ${io_flags} unknown`;
  const history_count = b[OFF.history_count]!;
  if (history_count > HISTORY_MAX) return `history_count ${history_count} above ${HISTORY_MAX}`;
  const nameBytes = b.subarray(OFF.client_name, OFF.client_name + CLIENT_NAME_BYTES);
  const nameEnd = nameBytes.indexOf(0) < 0 ? CLIENT_NAME_BYTES : nameBytes.indexOf(0);
  if (!isZeroRange(nameBytes, nameEnd, CLIENT_NAME_BYTES)) return "client name has bytes after its NUL padding";
  const client_name = clientNameCache.get(nameBytes, nameEnd);
  if (client_name === null) return "client name is not UTF-8";
  const volume_uuid = uuidCache.get(b.subarray(OFF.volume_uuid, OFF.volume_uuid + 16))!;
  if (volume_uuid === NIL_UUID) return "volume_uuid is nil";
  const seed_id = getU32(b, OFF.seed_id);
  const worker = getU32(b, OFF.worker);
  const workers = getU32(b, OFF.pattern_workers);
  const block_sectors = getU32(b, OFF.pattern_block_sectors);
  let pattern: PatternStamp | null = null;
  if (seed_id === 0) {
    if (worker !== 0 || step !== 0 || workers !== 0 || block_sectors !== 0 || blocks !== 0 || base_lba !== 0) {
      return "pattern fields set while seed_id is 0 (not verify data)";
    }
  } else {
    pattern = { seed_id, worker, step: step as number, workers, blocks: blocks as number, block_sectors, base_lba: base_lba as number };
  }
  const history: HistoryEntry[] = [];
  for (let i = 0; i < Math.min(history_count, limit); i++) {
    const h = readHistoryEntry(b, historyOffset(i), i);
    if (typeof h === "string") return h;
    history.push(h);
  }
  const fields: DebugSector = {
    volume_uuid,
    lba: lba as number,
    client_id: client_id as number,
    client_name,
    generation: generation as number,
    topo_state: TOPO_STATES[topo]!,
    leg_count: b[OFF.leg_count]!,
    legs_mask: b[OFF.legs_mask]!,
    leg_index: b[OFF.leg_index]!,
    op: OP_KINDS[op - 1]!,
    fua: (io_flags & 1) === 1,
    locked: (header_flags & HEADER_FLAG_LOCKED) !== 0,
    io_first_lba: io_first_lba as number,
    io_sectors: getU32(b, OFF.io_sectors),
    io_index: getU32(b, OFF.io_index),
    seq: seq as number,
    pattern,
    history,
    data: b.subarray(0, DATA_BYTES),
    data_crc: getU32(b, OFF.data_crc),
    record_tag: getU32(b, chunkStart(1) + TAG_RECORD),
  };
  const problem = relationProblem(fields);
  if (problem !== null) return problem;
  if (crc32cRange(b, OFF.version, OFF.fields_end) !== fields.record_tag) return "the header's record tag does not match its fields";
  return fields;
}

function readHistoryEntry(b: Uint8Array, o: number, i: number): HistoryEntry | string {
  const vals = [getU64(b, o), getU64(b, o + 8), getU64(b, o + 16), getU64(b, o + 24)];
  if (vals.some((v) => v < 0)) return `history entry ${i} has a u64 beyond a safe integer`;
  const kind = b[o + 36]!;
  const topo = b[o + 37]!;
  const op = b[o + 39]!;
  if (kind < 1 || kind > HISTORY_KINDS.length) return `history entry ${i}: kind ${kind} unknown`;
  if (topo >= TOPO_STATES.length) return `history entry ${i}: topology state ${topo} unknown`;
  if (op < 1 || op > OP_KINDS.length) return `history entry ${i}: op ${op} unknown`;
  return {
    kind: HISTORY_KINDS[kind - 1]!,
    client_id: vals[0]!,
    generation: vals[1]!,
    seq: vals[2]!,
    step: vals[3]!,
    data_crc: getU32(b, o + 32),
    topo_state: TOPO_STATES[topo]!,
    legs_mask: b[o + 38]!,
    op: OP_KINDS[op - 1]!,
  };
}

/**
 * The sector CRC failed: find out which chunks are intact, and whether intact chunks come from
 * different writes. data_crc: CRC of the data chunk (null when not computed yet).
 */
function tornOrDamaged(b: Uint8Array, data_crc: number | null): SectorDecode {
  const state: ChunkState[] = ["intact", "intact", "intact", "intact"];
  const tags: (number | null)[] = [null, null, null, null];
  for (let k = 1; k <= 3; k++) {
    const idx = chunkMagicIndex(b, k);
    if (idx === null) {
      state[k] = isZeroRange(b, chunkStart(k), chunkEnd(k)) ? "blank" : "damaged";
    } else if (getU32(b, chunkStart(k) + TAG_CRC) !== chunkCrc(b, k)) {
      state[k] = "damaged";
    } else {
      state[k] = idx === k ? "intact" : "misplaced";
      tags[k] = getU32(b, chunkStart(k) + TAG_RECORD);
    }
  }
  // The record the header chunk describes, when that chunk is intact and its fields parse.
  let header: DebugSector | null = null;
  let headerProblem: string | null = null;
  if (state[1] === "intact") {
    const usable = state[2] === "intact" && tags[2] === tags[1] ? (state[3] === "intact" && tags[3] === tags[1] ? HISTORY_MAX : HISTORY_PER_CHUNK) : 0;
    const parsed = parseFields(b, usable);
    if (typeof parsed === "string") headerProblem = parsed;
    else header = parsed;
  }
  const dc = data_crc ?? crc32cRange(b, 0, DATA_BYTES);
  const dataBlank = isZeroRange(b, 0, DATA_BYTES);

  const damaged = [1, 2, 3].filter((k) => state[k] === "damaged" || state[k] === "misplaced");
  if (damaged.length > 0) {
    const what = damaged.map((k) => `${CHUNK_NAMES[k]}${state[k] === "misplaced" ? " holds another chunk's magic" : ""}`).join(", ");
    return { ok: false, class: "checksum_bad", reason: `damaged: ${what}`, fields: header };
  }
  if (state[1] === "intact" && header === null) {
    return { ok: false, class: "bad_field", reason: `${headerProblem} (and the sector checksum fails)`, fields: null };
  }
  // Every metadata chunk is intact or blank from here on.
  const blank = [1, 2, 3].filter((k) => state[k] === "blank");
  const present = [1, 2, 3].filter((k) => state[k] === "intact");
  const distinct = new Set(present.map((k) => tags[k]));
  if (blank.length > 0 || distinct.size > 1) {
    const parts: string[] = [];
    for (const t of distinct) {
      parts.push(`${present.filter((k) => tags[k] === t).map((k) => CHUNK_NAMES[k]).join(", ")} from write ${hex(t!)}`);
    }
    if (blank.length > 0) parts.push(`${blank.map((k) => CHUNK_NAMES[k]).join(", ")} blank`);
    return { ok: false, class: "torn", reason: `torn write: ${parts.join("; ")}`, fields: header };
  }
  // All three metadata chunks intact and of one record: look at the data.
  const h = header!;
  if (dc !== h.data_crc) {
    if (dataBlank) return { ok: false, class: "torn", reason: "torn write: data (chunk 0) blank under an intact header", fields: h };
    const older = h.history.findIndex((e) => e.data_crc === dc);
    if (older >= 0) {
      const e = h.history[older]!;
      return {
        ok: false,
        class: "torn",
        reason: `torn write: data (chunk 0) is the data of the earlier write in history entry ${older} (${entryText(e)}), the header is client ${h.client_id} seq ${h.seq}'s`,
        fields: h,
      };
    }
    return { ok: false, class: "data_mismatch", reason: `data does not match the header's checksum ${hex(h.data_crc)} (found ${hex(dc)}): changed after it was written`, fields: h };
  }
  return { ok: false, class: "checksum_bad", reason: "the sector checksum field is damaged; every chunk is intact", fields: h };
}

export function hex(v: number): string {
  return `0x${(v >>> 0).toString(16).padStart(8, "0")}`;
}

export function legsText(mask: number): string {
  const legs: number[] = [];
  for (let i = 0; i < MAX_LEGS; i++) if (mask & (1 << i)) legs.push(i);
  return `{${legs.join(",")}}`;
}

export function entryText(e: HistoryEntry): string {
  return e.kind === "predicted" ? `predicted step ${e.step}` : `client ${e.client_id} seq ${e.seq} generation ${e.generation}${e.step ? ` step ${e.step}` : ""}`;
}
