/**
 * What the data path calls to turn one volume write into debug sectors: the client knows who it
 * is (volume, client id and name), the I/O (op, FUA, LBAs, its seq) and its topology (generation,
 * state, the legs it sends the I/O to). The verify pattern's coordinates and the predicted history
 * come from the data itself: verify data starts with a stamp (pattern.ts), so the client needs no
 * side channel from the workload and no read before the write.
 *
 *   const fields = ioSectorFields(writer, io, data);          // once per I/O
 *   for (const leg of legs) send(leg, encodeIoForLeg(fields, data, leg));
 *
 * write_zeroes and trim are stored as sectors of zero data whose header says so, so a block's
 * history survives them.
 */
import { crc32cRange } from "./crc32c-sliced.ts";
import { predictedHistory, readDataStamp } from "./pattern.ts";
import { DATA_BYTES, encodeSector, type OpKind, SECTOR_BYTES, type SectorFields, type TopoState } from "./sector.ts";

/** Who writes: fixed for a client's attachment of a volume. */
export interface DebugWriter {
  volume_uuid: string;
  client_id: number;
  /** At most 16 bytes of UTF-8 (shortClientName). */
  client_name: string;
}

/** One volume I/O as the client sends it. */
export interface DebugIo {
  op: OpKind;
  fua: boolean;
  first_lba: number;
  sectors: number;
  /** The client's sequence number for this I/O. */
  seq: number;
  generation: number;
  topo_state: TopoState;
  leg_count: number;
  /** The legs this I/O is sent to. */
  legs_mask: number;
  /** Mirrors: the writer holds the block's lock(s) (false with one leg). */
  locked: boolean;
  /** Predicted history entries per sector of verify data (default 4, at most 24). */
  history_depth?: number;
}

export const DEFAULT_HISTORY_DEPTH = 4;

/**
 * The header fields of every sector of the I/O (leg_index set to the lowest targeted leg;
 * encodeIoForLeg sets the real one). data: sectors × 512 bytes; null for write_zeroes and trim.
 */
export function ioSectorFields(writer: DebugWriter, io: DebugIo, data: Uint8Array | null): SectorFields[] {
  if (io.op === "write" ? data === null || data.length !== io.sectors * DATA_BYTES : data !== null) {
    throw new Error(`debug write: ${io.op} of ${io.sectors} sectors needs ${io.op === "write" ? `${io.sectors * DATA_BYTES} data bytes` : "no data"}`);
  }
  const depth = io.history_depth ?? DEFAULT_HISTORY_DEPTH;
  const firstLeg = Math.max(0, Math.log2(io.legs_mask & -io.legs_mask));
  const out: SectorFields[] = [];
  for (let i = 0; i < io.sectors; i++) {
    const lba = io.first_lba + i;
    const stamp = data === null ? null : readDataStamp(data.subarray(i * DATA_BYTES, (i + 1) * DATA_BYTES));
    // Only data stamped for this very LBA is verify data of this sector; a stamp naming another
    // LBA is copied data, recorded as plain data (the reader's check will say so).
    const pattern = stamp !== null && stamp.lba === lba
      ? { seed_id: stamp.seed_id, worker: stamp.worker, step: stamp.step, workers: stamp.workers, blocks: stamp.blocks, block_sectors: stamp.block_sectors, base_lba: stamp.base_lba }
      : null;
    out.push({
      volume_uuid: writer.volume_uuid,
      lba,
      client_id: writer.client_id,
      client_name: writer.client_name,
      generation: io.generation,
      topo_state: io.topo_state,
      leg_count: io.leg_count,
      legs_mask: io.legs_mask,
      leg_index: firstLeg,
      op: io.op,
      fua: io.fua,
      locked: io.locked,
      io_first_lba: io.first_lba,
      io_sectors: io.sectors,
      io_index: i,
      seq: io.seq,
      pattern,
      history: pattern === null ? [] : safeHistory(pattern, lba, depth, writer.client_id),
    });
  }
  return out;
}

/** A stamp whose worker owns no block cannot have a history; that is for the reader to report. */
function safeHistory(pattern: NonNullable<SectorFields["pattern"]>, lba: number, depth: number, client_id: number) {
  try {
    return predictedHistory(pattern, lba, { depth, client_id });
  } catch {
    return [];
  }
}

const ZERO_SECTOR = new Uint8Array(DATA_BYTES);

/** The I/O's debug sectors for one leg: fields.length × 2048 bytes, into out if given. */
export function encodeIoForLeg(fields: SectorFields[], data: Uint8Array | null, leg_index: number, out?: Uint8Array): Uint8Array {
  const buf = out ?? new Uint8Array(fields.length * SECTOR_BYTES);
  if (buf.length < fields.length * SECTOR_BYTES) throw new Error(`debug write: out holds ${buf.length} bytes, needs ${fields.length * SECTOR_BYTES}`);
  fields.forEach((f, i) => {
    const d = data === null ? ZERO_SECTOR : data.subarray(i * DATA_BYTES, (i + 1) * DATA_BYTES);
    encodeSector({ ...f, leg_index }, d, buf, i * SECTOR_BYTES);
  });
  return buf;
}

/**
 * What one send of part of an I/O records beyond the I/O itself: the data path plans each piece
 * (a mirror re-plans it after a topology change) and numbers each send, so these are per piece.
 */
export interface PieceState {
  seq: number;
  generation: number;
  topo_state: TopoState;
  leg_count: number;
  legs_mask: number;
  leg_index: number;
  locked: boolean;
}

/**
 * Sectors [from, from + count) of the I/O (fields from ioSectorFields, data as given to it),
 * encoded for one leg with the piece's state: count × 2048 bytes, into out if given.
 */
export function encodePieceForLeg(
  fields: SectorFields[],
  data: Uint8Array | null,
  range: { from: number; count: number },
  state: PieceState,
  out?: Uint8Array,
): Uint8Array {
  const buf = out ?? new Uint8Array(range.count * SECTOR_BYTES);
  if (buf.length < range.count * SECTOR_BYTES) throw new Error(`debug write: out holds ${buf.length} bytes, needs ${range.count * SECTOR_BYTES}`);
  if (range.from < 0 || range.from + range.count > fields.length) throw new Error(`debug write: sectors ${range.from}+${range.count} outside the I/O's ${fields.length}`);
  for (let i = 0; i < range.count; i++) {
    const k = range.from + i;
    const d = data === null ? ZERO_SECTOR : data.subarray(k * DATA_BYTES, (k + 1) * DATA_BYTES);
    encodeSector({ ...fields[k]!, ...state }, d, buf, i * SECTOR_BYTES);
  }
  return buf;
}

/** The data CRC the header of this data will carry (what a history entry of it records). */
export function dataCrc(data: Uint8Array): number {
  return crc32cRange(data, 0, data.length);
}
