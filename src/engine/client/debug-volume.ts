/**
 * A debug-format volume as a block device (docs/debug-format.md, "The data path"): logical
 * 512-byte sector i lives in physical bytes [i·2048, (i+1)·2048) of the volume's address space,
 * which the volume's layout (concatenated, RAID0, RAID1, RAID10) maps to drives unchanged.
 *
 * - write: one 2048-byte debug sector per logical sector, made when each piece is planned and
 *   per leg (each copy records its own leg, the topology generation and state the piece was
 *   planned with, the legs it goes to, whether the writer held the lock, and a seq that numbers
 *   this client's sends, so that seq and generation grow together for a correct client).
 * - write_zeroes and trim: encoded zero data whose header names the op (a block's history
 *   survives them); the parts of a partial sector at either end are written as data (zeroing)
 *   or left alone (trim is only a hint).
 * - read: each physical sector is decoded (src/debugfmt/read.ts): its data, zeros for a never
 *   written sector, or EIO (logged with the block) for anything that means corruption.
 * - unaligned requests: the partial sectors at either end are read, merged and rewritten whole
 *   (read-modify-write), one at a time per volume.
 */
import { readSector } from "../../debugfmt/read.ts";
import { DATA_BYTES, type OpKind, SECTOR_BYTES, SECTOR_RATIO, type SectorFields, type TopoState } from "../../debugfmt/sector.ts";
import { encodePieceForLeg, ioSectorFields, type PieceState } from "../../debugfmt/write.ts";
import { checkRange, DriveIoError, type DriveStore } from "../drive/store.ts";
import type { Logger } from "../env.ts";
import type { SetTopology } from "../layout/types.ts";
import type { EvilSchedule, Sabotage } from "./debug-evil.ts";
import type { LegPiece, LegPlan, LegWriter } from "./leg-writer.ts";

/** The volume's own address space, 4 × the logical one (VolumeDevice). */
export interface PhysicalVolume {
  readonly size_bytes: number;
  readonly describe: string;
  /** Copies of each block: legs per mirror set, 1 unmirrored. */
  readonly leg_count: number;
  read(offset: number, dst: Uint8Array): Promise<void>;
  writeLegs(offset: number, length: number, fua: boolean, legs: LegWriter): Promise<void>;
  flush(): Promise<void>;
  close(): Promise<void>;
}

export interface DebugVolumeOptions {
  volume_uuid: string;
  /** Who writes now (the TOMA may give the daemon a new id): id and a name of ≤ 16 bytes. */
  writer: () => { client_id: number; client_name: string };
  log: Logger;
  /** Predicted history entries per verify sector (default 4). */
  history_depth?: number;
  /** TEST-ONLY sabotage (debug-evil.ts); null in production. */
  evil?: EvilSchedule | null;
  /**
   * The counter of this client's sends to the volume. The daemon keeps one per volume for its
   * whole life, so a detach and a new attach never reuse a (client, seq): forensics identifies
   * a write by it, and reads the order of a client's generations from it.
   */
  seq?: { value: number };
}

/** Logical sectors per physical request: 4 MiB of physical I/O at most at once. */
const CHUNK_SECTORS = 2048;

export function topoStateOf(t: SetTopology | null): TopoState {
  if (t === null) return "none";
  if (t.legs.includes("DEAD")) return "degraded";
  if (t.legs.includes("W")) return "rebuild";
  if (t.legs.includes("WL")) return "dual_lock";
  return "normal";
}

/** The legs a write of this topology goes to (every leg that is not DEAD). */
function writtenLegs(t: SetTopology | null): number {
  if (t === null) return 1;
  let mask = 0;
  t.legs.forEach((r, i) => {
    if (r !== "DEAD") mask |= 1 << i;
  });
  return mask;
}

export class DebugVolume implements DriveStore {
  readonly size_bytes: number;
  readonly describe: string;
  private closed = false;
  /** Numbers every planned send of this client on this volume (LegWriter.plan). */
  private readonly seq: { value: number };
  /** Read-modify-writes of partial sectors, one at a time. */
  private rmwTail: Promise<void> = Promise.resolve();

  constructor(
    private readonly inner: PhysicalVolume,
    private readonly opts: DebugVolumeOptions,
  ) {
    if (inner.size_bytes % SECTOR_BYTES !== 0) throw new Error(`debug volume: physical size ${inner.size_bytes} is not a multiple of ${SECTOR_BYTES}`);
    this.size_bytes = inner.size_bytes / SECTOR_RATIO;
    this.seq = opts.seq ?? { value: 0 };
    this.describe = `${inner.describe}, debug format`;
  }

  // ---- reads ------------------------------------------------------------------------------------

  async read(offset: number, dst: Uint8Array): Promise<void> {
    checkRange(this, this.closed, offset, dst.length);
    const end = offset + dst.length;
    for (let lba = Math.floor(offset / DATA_BYTES); lba * DATA_BYTES < end; lba += CHUNK_SECTORS) {
      const n = Math.min(CHUNK_SECTORS, Math.ceil(end / DATA_BYTES) - lba);
      const phys = new Uint8Array(n * SECTOR_BYTES);
      await this.inner.read(lba * SECTOR_BYTES, phys);
      for (let i = 0; i < n; i++) {
        const at = (lba + i) * DATA_BYTES;
        const from = Math.max(at, offset);
        const to = Math.min(at + DATA_BYTES, end);
        const r = readSector(phys, i * SECTOR_BYTES, { volume_uuid: this.opts.volume_uuid, lba: lba + i });
        if (r.kind === "error") {
          this.opts.log.error("debug sector is corrupt: read fails", { volume: this.opts.volume_uuid, lba: lba + i, reason: r.reason });
          throw new DriveIoError(`LBA ${lba + i}: ${r.reason}`, "EIO");
        }
        const part = dst.subarray(from - offset, to - offset);
        if (r.kind === "zero") {
          if (r.note !== null) this.opts.log.debug("debug sector of another volume read as zeros", { lba: lba + i, note: r.note });
          part.fill(0);
        } else part.set(r.data.subarray(from - at, to - at));
      }
    }
  }

  // ---- writes -----------------------------------------------------------------------------------

  async write(offset: number, src: Uint8Array, fua: boolean): Promise<void> {
    checkRange(this, this.closed, offset, src.length);
    if (src.length === 0) return;
    if (offset % DATA_BYTES === 0 && src.length % DATA_BYTES === 0) {
      return await this.writeSectors(offset / DATA_BYTES, src.length / DATA_BYTES, src, "write", fua);
    }
    await this.readModifyWrite(offset, src, fua);
  }

  async writeZeroes(offset: number, length: number, fua: boolean): Promise<void> {
    await this.zeroOp(offset, length, fua, "write_zeroes");
  }

  async trim(offset: number, length: number): Promise<void> {
    await this.zeroOp(offset, length, false, "trim");
  }

  async flush(): Promise<void> {
    if (this.closed) throw new DriveIoError("volume detached", "ECLOSED");
    await this.inner.flush();
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.inner.close();
  }

  /** write_zeroes / trim: whole sectors as encoded zero data; partial ones zeroed, or left (trim). */
  private async zeroOp(offset: number, length: number, fua: boolean, op: "write_zeroes" | "trim"): Promise<void> {
    checkRange(this, this.closed, offset, length);
    if (length === 0) return;
    const end = offset + length;
    const a = Math.ceil(offset / DATA_BYTES) * DATA_BYTES;
    const b = Math.floor(end / DATA_BYTES) * DATA_BYTES;
    if (a >= b) {
      if (op === "write_zeroes") await this.readModifyWrite(offset, new Uint8Array(length), fua);
      return;
    }
    if (op === "write_zeroes" && offset < a) await this.readModifyWrite(offset, new Uint8Array(a - offset), fua);
    await this.writeSectors(a / DATA_BYTES, (b - a) / DATA_BYTES, null, op, fua);
    if (op === "write_zeroes" && b < end) await this.readModifyWrite(b, new Uint8Array(end - b), fua);
  }

  /** The whole sectors around [offset, offset + src.length), merged with src, written whole. */
  private readModifyWrite(offset: number, src: Uint8Array, fua: boolean): Promise<void> {
    const run = async () => {
      const first = Math.floor(offset / DATA_BYTES);
      const end = Math.ceil((offset + src.length) / DATA_BYTES);
      const buf = new Uint8Array((end - first) * DATA_BYTES);
      if (offset % DATA_BYTES !== 0) await this.read(first * DATA_BYTES, buf.subarray(0, DATA_BYTES));
      if ((offset + src.length) % DATA_BYTES !== 0 && (end - 1 > first || offset % DATA_BYTES === 0)) {
        await this.read((end - 1) * DATA_BYTES, buf.subarray(buf.length - DATA_BYTES));
      }
      buf.set(src, offset - first * DATA_BYTES);
      await this.writeSectors(first, end - first, buf, "write", fua);
    };
    const mine = this.rmwTail.then(run);
    this.rmwTail = mine.catch(() => {});
    return mine;
  }

  /** Logical sectors [first_lba, first_lba + sectors) as one I/O (sent in chunks). */
  private async writeSectors(first_lba: number, sectors: number, data: Uint8Array | null, op: OpKind, fua: boolean): Promise<void> {
    const sabotage = this.opts.evil?.next() ?? null;
    const { client_id, client_name } = this.opts.writer();
    const logical = this.size_bytes / DATA_BYTES;
    for (let done = 0; done < sectors; done += CHUNK_SECTORS) {
      const n = Math.min(CHUNK_SECTORS, sectors - done);
      const lba = first_lba + done;
      const chunk = data === null ? null : data.subarray(done * DATA_BYTES, (done + n) * DATA_BYTES);
      const fields = ioSectorFields(
        { volume_uuid: this.opts.volume_uuid, client_id, client_name },
        // The piece's own state (seq, generation, topology, legs, lock) is set per send below.
        { op, fua, first_lba: lba, sectors: n, seq: 0, generation: 0, topo_state: "none", leg_count: 1, legs_mask: 1, locked: false, history_depth: this.opts.history_depth },
        chunk,
      );
      // Each header describes the whole I/O, of which this chunk is a part.
      fields.forEach((f, i) => {
        f.io_first_lba = first_lba;
        f.io_sectors = sectors;
        f.io_index = done + i;
      });
      let at = lba;
      if (sabotage?.misdirect_by_half) at = (lba + Math.floor(logical / 2 / 8) * 8) % logical;
      if (at + n > logical) at = 0; // a misdirected I/O that would run off the end lands at the start
      await this.inner.writeLegs(at * SECTOR_BYTES, n * SECTOR_BYTES, fua, this.legWriter(fields, chunk, sabotage));
    }
  }

  /** What each planned piece of one chunk sends to each leg. */
  private legWriter(fields: SectorFields[], data: Uint8Array | null, sabotage: Sabotage | null): LegWriter {
    const leg_count = this.inner.leg_count;
    return {
      plan: (piece: LegPiece): LegPlan => {
        if (piece.request_offset % SECTOR_BYTES !== 0 || piece.length % SECTOR_BYTES !== 0) {
          throw new Error(`debug volume: piece ${piece.request_offset}+${piece.length} is not made of whole debug sectors`);
        }
        const seq = ++this.seq.value;
        const range = { from: piece.request_offset / SECTOR_BYTES, count: piece.length / SECTOR_BYTES };
        let legs_mask = writtenLegs(piece.topology);
        let skip_legs = 0;
        const last = 1 << (leg_count - 1);
        if (sabotage?.skip_last_leg && leg_count > 1 && (legs_mask & ~last) !== 0) {
          skip_legs = last;
          legs_mask &= ~last;
        }
        const state = {
          seq,
          generation: Math.max(0, piece.generation - (sabotage?.generation_lag ?? 0)),
          topo_state: topoStateOf(piece.topology),
          leg_count,
          legs_mask,
        };
        const tear = sabotage?.tear_last_sector === true && range.from + range.count === fields.length;
        return {
          bytes: (leg, locked) => {
            const legState: PieceState = { ...state, leg_index: leg, locked: leg_count > 1 && locked };
            const legData = sabotage?.alter_other_legs && leg > 0 && data !== null ? alterData(data) : data;
            let out: Uint8Array;
            try {
              out = encodePieceForLeg(fields, legData, range, legState);
            } catch (e) {
              // A record the encoder refuses is a bug here: fail the write now, never retry it.
              throw new DriveIoError(`debug format: ${(e as Error).message}`, "EIO");
            }
            // Torn: the last debug sector lands only its data and header chunks.
            return tear ? out.subarray(0, out.length - SECTOR_BYTES / 2) : out;
          },
          ...(skip_legs !== 0 ? { skip_legs } : {}),
          ...(sabotage?.skip_lock ? { skip_lock: true } : {}),
        };
      },
    };
  }
}

/** A copy of data with one byte of each sector's stream (after the verify stamp) changed. */
function alterData(data: Uint8Array): Uint8Array {
  const out = data.slice();
  for (let at = 0; at < out.length; at += DATA_BYTES) out[at + 100] = out[at + 100]! ^ 0x5a;
  return out;
}
