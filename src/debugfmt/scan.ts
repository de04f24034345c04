/**
 * The forensic scan of a drive's data area: every 2048-byte physical sector decoded and
 * classified, misplaced sectors found from their neighbours, and with a peer (the other leg of a
 * mirror) the two copies of every block compared. Read-only by construction: it only ever calls
 * `read` on what it is given. The rules are documented in docs/debug-format.md ("Forensics").
 *
 * Streaming: the area is read in large chunks (4 MiB), the next one while the current one is
 * decoded, so the scan runs near the speed of the drive or of the decoder, whichever is slower.
 * Memory is bounded: a few chunks, a few windows of sector summaries, and at most `max_problems`
 * problem records (counts stay exact beyond that).
 */
import { type DataArea } from "./drive-area.ts";
import { compareLegs, type Culprit, type LegVerdictClass } from "./legs.ts";
import { GenerationOrder, type StaleRule } from "./order.ts";
import { checkPatternSector, readDataStamp } from "./pattern.ts";
import { type DebugSector, decodeSector, SECTOR_BYTES, type SectorClass, type TopoState } from "./sector.ts";
import { mergeTimeline, type TimelineEntry, writeText, headerRecord } from "./timeline.ts";

/** What the scanner reads from: a drive store, or anything with the same read. */
export interface ReadableDrive {
  readonly size_bytes: number;
  readonly describe: string;
  read(offset: number, dst: Uint8Array): Promise<void>;
}

export interface ScanSource {
  /** How the file is named in results (its path). */
  name: string;
  drive: ReadableDrive;
  area: DataArea;
}

export interface ScanOptions {
  /** Only this volume's sectors count; others are "other_volume" (unless misplaced into it). */
  volume_uuid?: string;
  /** The other leg of a mirror: compared position by position. */
  peer?: ScanSource;
  /** Bytes read at once (multiple of 16 KiB); default 4 MiB. */
  chunk_bytes?: number;
  /** Positions per placement window; default 8 (16 KiB of drive, 4 KiB of volume). */
  run_sectors?: number;
  /** Problem records kept; counts are exact beyond. Default 10,000. */
  max_problems?: number;
  /** Check verify data against its pattern (data, block, history steps); default true. */
  pattern_check?: boolean;
  /**
   * Where each position's block belongs, when the volume layout is known (the data path will
   * provide it); then placement is checked exactly instead of from the neighbours.
   */
  placement?: (source: string, position: number) => { volume_uuid: string; lba: number } | null;
  /**
   * With a peer and the layouts: the peer's position of the other leg of the block at each
   * position of the scanned file (null: none there). Legs are then compared block by block,
   * whatever extents each leg got; without it, position by position.
   */
  peer_position?: (position: number) => number | null;
  /**
   * With placement: the volumes the layouts describe. A sector of any other volume found in their
   * extents is a leftover of a deleted volume (its extents were reused), counted as other_volume.
   */
  known_volumes?: ReadonlySet<string>;
}

/** One class per physical sector of a file. */
export const FILE_CLASSES = [
  "ok",
  "empty",
  "foreign",
  "other_volume",
  "not_debug",
  "bad_magic",
  "unknown_version",
  "checksum_bad",
  "data_mismatch",
  "torn",
  "bad_field",
  "misdirected",
  "pattern_mismatch",
  "unlocked_write",
  "unreadable",
] as const;
export type FileClass = (typeof FILE_CLASSES)[number];
/** Classes that are not problems: data as it should be, or not ours to judge. */
export const BENIGN_CLASSES: readonly FileClass[] = ["ok", "empty", "foreign", "other_volume"];

export const PEER_CLASSES = ["write_hole", "skipped_leg", "stale_generation", "legs_differ"] as const;
export type PeerClass = (typeof PEER_CLASSES)[number];
export type ProblemClass = Exclude<FileClass, "ok" | "empty" | "foreign" | "other_volume"> | PeerClass;

export interface WriterInfo {
  client_id: number;
  client_name: string;
  seq: number;
  generation: number;
  topo_state: TopoState;
  leg_index: number;
  legs_mask: number;
}

export interface Problem {
  class: ProblemClass;
  /** The file of the sector; for a leg comparison the scanned file (the peer is peer_file). */
  file: string;
  peer_file?: string;
  /** Physical sector index in the data area, and byte offset in the file. */
  position: number;
  offset_bytes: number;
  lba: number | null;
  volume_uuid: string | null;
  /** Who wrote the record found there (of the newer copy, for a leg comparison). */
  writer: WriterInfo | null;
  /** Whose fault it is, when the evidence names someone. */
  culprit: Culprit | null;
  reason: string;
  /** Leg comparisons: the file holding the newer write, and the block's writes, oldest first. */
  newer_file?: string | null;
  timeline?: TimelineEntry[];
}

export interface FileReport {
  file: string;
  describe: string;
  area: DataArea;
  sectors: number;
  counts: Record<FileClass, number>;
  problems: number;
  /** Sectors whose position could not be checked (no consistent neighbours, no layout). */
  placement_unverified: number;
  /** Sectors written with a topology generation their writer had already left (order.ts). */
  stale_generation: number;
}

export interface PeerReport {
  compared: number;
  same: number;
  counts: Record<PeerClass, number>;
  /** Positions where one side is damaged and the other holds a good copy. */
  one_side_damaged: number;
  /** Positions where both hold good sectors of different blocks (other placement, or misplaced). */
  unaligned: number;
  /** Positions scanned on one file only (the other area is shorter). */
  unpaired: number;
}

export interface ClientReport {
  client_id: number;
  client_name: string;
  sectors: number;
  generation_min: number;
  generation_max: number;
  seq_max: number;
}

export interface VolumeReport {
  volume_uuid: string;
  sectors: number;
  lba_min: number;
  lba_max: number;
}

export interface ScanResult {
  files: FileReport[];
  peer: PeerReport | null;
  problems_total: number;
  /** The first max_problems problems, by file position. */
  problems: Problem[];
  problems_truncated: boolean;
  clients: ClientReport[];
  volumes: VolumeReport[];
  /** Writers whose generation went back as their seq grew, and from which seq (order.ts). */
  stale_rules: StaleRule[];
}

const DEFAULT_CHUNK_BYTES = 4 << 20;
const DEFAULT_RUN_SECTORS = 8;
const DEFAULT_MAX_PROBLEMS = 10_000;
/** Windows without a key of their own waiting for a keyed neighbour; beyond, judged without it. */
const MAX_WAITING_WINDOWS = 1024;

/** A non-empty sector, as far as the scan needs it after its chunk buffer is reused. */
interface Slot {
  position: number;
  cls: FileClass;
  reason: string;
  /** A header that can be trusted (sealed, or its chunk intact). Its data view must not be
   * read after classification: the chunk buffer is reused. */
  fields: DebugSector | null;
  /** What is wrong was written so by the writer. */
  writer_fault: boolean;
  notes: string[];
  /** A sector of a volume that no longer exists, in an extent another volume now uses. */
  leftover?: boolean;
}

interface Window {
  slots: Slot[];
  key: string | null;
}

function keyOf(volume_uuid: string, lba: number, position: number): string {
  return `${volume_uuid}|${lba - position}`;
}

function slotKey(s: Slot): string | null {
  return s.fields === null ? null : keyOf(s.fields.volume_uuid, s.fields.lba, s.position);
}

function writerOf(f: DebugSector | null): WriterInfo | null {
  if (f === null) return null;
  return {
    client_id: f.client_id,
    client_name: f.client_name,
    seq: f.seq,
    generation: f.generation,
    topo_state: f.topo_state,
    leg_index: f.leg_index,
    legs_mask: f.legs_mask,
  };
}

function zeroCounts<T extends string>(names: readonly T[]): Record<T, number> {
  return Object.fromEntries(names.map((n) => [n, 0])) as Record<T, number>;
}

/** Collects problems: exact count, first `max` kept. */
class ProblemSink {
  total = 0;
  kept: Problem[] = [];
  constructor(private readonly max: number) {}
  add(p: Problem): void {
    this.total++;
    if (this.kept.length < this.max) this.kept.push(p);
  }
}

class Summaries {
  clients = new Map<number, ClientReport>();
  volumes = new Map<string, VolumeReport>();
  readonly order = new GenerationOrder();
  add(f: DebugSector): void {
    const c = this.clients.get(f.client_id);
    if (c === undefined) {
      this.clients.set(f.client_id, { client_id: f.client_id, client_name: f.client_name, sectors: 1, generation_min: f.generation, generation_max: f.generation, seq_max: f.seq });
    } else {
      c.sectors++;
      if (f.generation < c.generation_min) c.generation_min = f.generation;
      if (f.generation > c.generation_max) c.generation_max = f.generation;
      if (f.seq > c.seq_max) c.seq_max = f.seq;
    }
    const v = this.volumes.get(f.volume_uuid);
    if (v === undefined) this.volumes.set(f.volume_uuid, { volume_uuid: f.volume_uuid, sectors: 1, lba_min: f.lba, lba_max: f.lba });
    else {
      v.sectors++;
      if (f.lba < v.lba_min) v.lba_min = f.lba;
      if (f.lba > v.lba_max) v.lba_max = f.lba;
    }
  }
}

/** Reads chunk after chunk of a data area into two alternating buffers. */
class ChunkReader {
  private readonly bufs: Uint8Array[];
  readonly chunks: number;

  constructor(
    private readonly src: ScanSource,
    private readonly chunk_bytes: number,
    readonly total_sectors: number,
  ) {
    this.bufs = [new Uint8Array(chunk_bytes), new Uint8Array(chunk_bytes)];
    this.chunks = Math.ceil((total_sectors * SECTOR_BYTES) / chunk_bytes);
  }

  /** Chunk c: its bytes, and the sectors that could not be read (zero-filled) with why. */
  async load(c: number): Promise<{ bytes: Uint8Array; unreadable: Map<number, string> | null }> {
    const per = this.chunk_bytes / SECTOR_BYTES;
    const first = c * per;
    const count = Math.max(0, Math.min(per, this.total_sectors - first));
    const bytes = this.bufs[c % 2]!.subarray(0, count * SECTOR_BYTES);
    const base = this.src.area.offset_bytes + first * SECTOR_BYTES;
    try {
      await this.src.drive.read(base, bytes);
      return { bytes, unreadable: null };
    } catch {
      // Decode as much as can be read: retry sector by sector, zero what fails.
      const unreadable = new Map<number, string>();
      for (let i = 0; i < count; i++) {
        const dst = bytes.subarray(i * SECTOR_BYTES, (i + 1) * SECTOR_BYTES);
        try {
          await this.src.drive.read(base + i * SECTOR_BYTES, dst);
        } catch (e) {
          dst.fill(0);
          unreadable.set(first + i, (e as Error).message);
        }
      }
      return { bytes, unreadable };
    }
  }
}

/**
 * Reads, for a chunk of the scanned file, the peer's sectors of the same blocks (positions from
 * ScanOptions.peer_position), in the scanned file's order: runs of consecutive peer positions are
 * read at once.
 */
class MappedReader {
  private readonly buf: Uint8Array;
  private readonly q: Float64Array;

  constructor(
    private readonly src: ScanSource,
    per: number,
    private readonly map: (position: number) => number | null,
  ) {
    this.buf = new Uint8Array(per * SECTOR_BYTES);
    this.q = new Float64Array(per);
  }

  /** q[i]: the peer position of position first + i (−1: none); bytes[i·2048..]: its sector. */
  async load(first: number, count: number): Promise<{ q: Float64Array; bytes: Uint8Array; unreadable: Set<number> }> {
    const sectors = Math.floor(this.src.area.bytes / SECTOR_BYTES);
    for (let i = 0; i < count; i++) {
      const q = this.map(first + i);
      this.q[i] = q === null || q >= sectors ? -1 : q;
    }
    const unreadable = new Set<number>();
    for (let i = 0; i < count; ) {
      if (this.q[i]! < 0) {
        i++;
        continue;
      }
      let j = i + 1;
      while (j < count && this.q[j] === this.q[j - 1]! + 1) j++;
      try {
        await this.src.drive.read(this.src.area.offset_bytes + this.q[i]! * SECTOR_BYTES, this.buf.subarray(i * SECTOR_BYTES, j * SECTOR_BYTES));
      } catch {
        for (let k = i; k < j; k++) unreadable.add(k);
      }
      i = j;
    }
    return { q: this.q, bytes: this.buf, unreadable };
  }
}

/** The peer's sector at `at` as the leg comparison needs it (decoded on its own). */
function peekSide(scan: FileScan, bytes: Uint8Array, at: number, position: number, unreadable: boolean): { scan: FileScan; slot: Slot | null; empty: boolean } {
  if (unreadable) return { scan, slot: { position, cls: "unreadable", reason: "unreadable", fields: null, writer_fault: false, notes: [] }, empty: false };
  const d = decodeSector(bytes, at);
  if (!d.ok && d.class === "empty") return { scan, slot: null, empty: true };
  const cls: FileClass = d.ok ? "ok" : d.class === "wrong_size" ? "checksum_bad" : d.class;
  return { scan, slot: { position, cls, reason: "", fields: d.ok ? d.fields : null, writer_fault: false, notes: [] }, empty: false };
}

/** The per-file state: classification, placement windows, extents, counts. */
class FileScan {
  readonly counts = zeroCounts(FILE_CLASSES);
  placement_unverified = 0;
  problems = 0;
  stale_generation = 0;
  private window: Window | null = null;
  private windowIndex = -1;
  /** Placement pipeline: the last keyed window already judged, the newest keyed window (judged
   * once the next keyed one arrives), and the unkeyed windows after it. */
  private prevKeyed: Window | null = null;
  private lastKeyed: Window | null = null;
  private unkeyed: Window[] = [];
  private extentIndex = -1;
  private extentDebug = 0;
  private extentForeign: number[] = [];
  private extentForeignCount = 0;

  constructor(
    readonly src: ScanSource,
    readonly sectors: number,
    private readonly opts: Required<Pick<ScanOptions, "run_sectors" | "pattern_check">> & ScanOptions,
    private readonly sink: ProblemSink,
    private readonly summaries: Summaries,
  ) {}

  /**
   * Classifies the sector at bytes[at] (position `position`) as far as it alone tells, and
   * returns its slot, or what it is when nothing more is needed (empty, non-debug data).
   */
  classify(bytes: Uint8Array, words: Uint32Array, at: number, position: number, unreadable: string | undefined): Slot | "empty" | "foreign" {
    this.enterExtent(position);
    if (unreadable !== undefined) {
      return this.place({ position, cls: "unreadable", reason: `unreadable: ${unreadable}`, fields: null, writer_fault: false, notes: [] });
    }
    // Fast path for blank space: 512 words of zero.
    const w0 = at >>> 2;
    let zero = true;
    for (let i = w0; i < w0 + SECTOR_BYTES / 4; i++) {
      if (words[i] !== 0) {
        zero = false;
        break;
      }
    }
    if (zero) {
      this.counts.empty++;
      return "empty";
    }
    const d = decodeSector(bytes, at);
    if (!d.ok && d.class === "not_debug") {
      this.extentForeignCount++;
      if (this.extentForeign.length < this.opts.max_problems!) this.extentForeign.push(position);
      return "foreign";
    }
    this.extentDebug++;
    let slot: Slot;
    if (d.ok) {
      const f = d.fields;
      slot = { position, cls: "ok", reason: "", fields: f, writer_fault: false, notes: [] };
      if (this.opts.pattern_check && f.pattern !== null) {
        const problems = checkPatternSector(f, { history_data: false });
        if (problems.length > 0) {
          slot.cls = "pattern_mismatch";
          slot.reason = `verify data not as its pattern says: ${problems.map((p) => p.detail).join("; ")}`;
          slot.writer_fault = true;
        }
      }
      // Every mirror write locks its block first (docs/mirroring.md); the writer records it did.
      if (f.leg_count >= 2 && !f.locked) {
        const also = slot.cls === "ok" ? "" : `; also ${slot.reason}`;
        slot.cls = "unlocked_write";
        slot.reason = `client ${f.client_id}${f.client_name ? ` (${f.client_name})` : ""} wrote seq ${f.seq} to leg ${f.leg_index} of a mirror without holding the block's lock (topology ${f.topo_state}, generation ${f.generation})${also}`;
        slot.writer_fault = true;
      }
    } else {
      const cls: FileClass = d.class === "empty" || d.class === "wrong_size" ? "checksum_bad" : d.class;
      let reason = d.reason;
      if (cls === "data_mismatch" && d.fields !== null) {
        const stamp = readDataStamp(bytes.subarray(at, at + 512));
        if (stamp !== null) reason += `; the data is verify data of worker ${stamp.worker} step ${stamp.step} for LBA ${stamp.lba}`;
      }
      slot = { position, cls, reason, fields: d.fields, writer_fault: d.sealed === true, notes: [] };
    }
    return this.place(slot);
  }

  /** Puts a slot into its placement window. */
  private place(slot: Slot): Slot {
    const wi = Math.floor(slot.position / this.opts.run_sectors);
    if (wi !== this.windowIndex) {
      if (this.window !== null) this.closeWindow(this.window);
      this.window = { slots: [], key: null };
      this.windowIndex = wi;
    }
    this.window!.slots.push(slot);
    return slot;
  }

  private closeWindow(w: Window): void {
    w.key = majorityKey(w.slots);
    if (w.key === null) {
      this.unkeyed.push(w);
      if (this.unkeyed.length > MAX_WAITING_WINDOWS) this.judgeUnkeyed(this.unkeyed.shift()!, this.lastKeyed ?? this.prevKeyed, null);
      return;
    }
    if (this.lastKeyed !== null) this.judgeKeyed(this.lastKeyed, this.prevKeyed, w);
    for (const u of this.unkeyed) this.judgeUnkeyed(u, this.lastKeyed ?? this.prevKeyed, w);
    this.unkeyed = [];
    if (this.lastKeyed !== null) this.prevKeyed = this.lastKeyed;
    this.lastKeyed = w;
  }

  /** A window with a key: its own key, unless both keyed neighbours agree on another. */
  private judgeKeyed(w: Window, prev: Window | null, next: Window | null): void {
    const runKey = prev !== null && next !== null && prev.key === next.key && prev.key !== w.key ? prev.key : w.key;
    this.judge(w, runKey, runKey !== w.key);
  }

  private judgeUnkeyed(w: Window, prev: Window | null, next: Window | null): void {
    const runKey = prev !== null && next !== null && prev.key === next.key ? prev.key : null;
    this.judge(w, runKey, false);
  }

  private judge(w: Window, runKey: string | null, wholeWindow: boolean): void {
    for (const s of w.slots) {
      const key = slotKey(s);
      if (this.opts.placement !== undefined) {
        if (s.fields !== null && this.opts.known_volumes?.has(s.fields.volume_uuid) === false) {
          s.leftover = true;
        } else if (s.fields !== null) {
          const want = this.opts.placement(this.src.name, s.position);
          if (want === null) this.placement_unverified++;
          else if (want.volume_uuid !== s.fields.volume_uuid || want.lba !== s.fields.lba) {
            this.misdirect(s, `header says LBA ${s.fields.lba} of volume ${s.fields.volume_uuid}, the layout puts LBA ${want.lba} of volume ${want.volume_uuid} here`);
          }
        }
      } else if (key !== null) {
        if (runKey === null) this.placement_unverified++;
        else if (key !== runKey) {
          const [vol, d] = runKey.split("|") as [string, string];
          const expected = s.position + Number(d);
          const whole = wholeWindow ? " (the whole window disagrees with the neighbours on both sides)" : "";
          const sameVol = vol === s.fields!.volume_uuid ? "" : ` of volume ${vol}`;
          this.misdirect(s, `header says LBA ${s.fields!.lba}, but its neighbours put LBA ${expected}${sameVol} here${whole}: written to the wrong place`);
        }
      }
      this.finish(s);
    }
  }

  private misdirect(s: Slot, why: string): void {
    s.reason = s.cls === "ok" ? why : `${why}; also ${s.cls}: ${s.reason}`;
    s.cls = "misdirected";
    s.writer_fault = true;
  }

  /** Counts a judged slot and records its problem. */
  private finish(s: Slot): void {
    const f = s.fields;
    if (s.leftover === true) {
      this.counts.other_volume++;
      return;
    }
    if (f !== null && this.opts.volume_uuid !== undefined && f.volume_uuid !== this.opts.volume_uuid && s.cls !== "misdirected") {
      this.counts.other_volume++;
      return;
    }
    this.counts[s.cls]++;
    if (f !== null && SEALED.includes(s.cls)) this.summaries.order.add(f);
    if (s.cls === "ok") {
      this.summaries.add(f!);
      return;
    }
    if (f !== null) this.summaries.add(f);
    this.problems++;
    const reason = s.notes.length > 0 ? `${s.reason}; ${s.notes.join("; ")}` : s.reason;
    this.sink.add({
      class: s.cls as ProblemClass,
      file: this.src.name,
      position: s.position,
      offset_bytes: this.src.area.offset_bytes + s.position * SECTOR_BYTES,
      lba: f?.lba ?? null,
      volume_uuid: f?.volume_uuid ?? null,
      writer: writerOf(f),
      // A torn sector names the writer of its header chunk: that 2048-byte write did not land whole.
      culprit: f !== null && (s.writer_fault || s.cls === "torn") ? { client_id: f.client_id, client_name: f.client_name } : null,
      reason,
    });
  }

  private enterExtent(position: number): void {
    const e = Math.floor((position * SECTOR_BYTES) / this.src.area.extent_bytes);
    if (e !== this.extentIndex) {
      this.closeExtent();
      this.extentIndex = e;
    }
  }

  /** Non-debug data is a problem inside an extent that holds debug sectors, else not ours. */
  private closeExtent(): void {
    if (this.extentIndex >= 0 && this.extentForeignCount > 0) {
      if (this.extentDebug > 0) {
        this.counts.not_debug += this.extentForeignCount;
        this.problems += this.extentForeignCount;
        for (const position of this.extentForeign) {
          this.sink.add({
            class: "not_debug",
            file: this.src.name,
            position,
            offset_bytes: this.src.area.offset_bytes + position * SECTOR_BYTES,
            lba: null,
            volume_uuid: null,
            writer: null,
            culprit: null,
            reason: `not a debug sector, inside extent ${this.extentIndex} which holds ${this.extentDebug} debug sectors: overwritten by something else`,
          });
        }
        // Problems beyond the kept list still count.
        this.sink.total += this.extentForeignCount - this.extentForeign.length;
      } else {
        this.counts.foreign += this.extentForeignCount;
      }
    }
    this.extentDebug = 0;
    this.extentForeign = [];
    this.extentForeignCount = 0;
  }

  /** After the last sector: judge what is still waiting. */
  end(): void {
    if (this.window !== null) this.closeWindow(this.window);
    this.window = null;
    if (this.lastKeyed !== null) this.judgeKeyed(this.lastKeyed, this.prevKeyed, null);
    for (const u of this.unkeyed) this.judgeUnkeyed(u, this.lastKeyed ?? this.prevKeyed, null);
    this.unkeyed = [];
    this.closeExtent();
  }

  report(): FileReport {
    return {
      file: this.src.name,
      describe: this.src.drive.describe,
      area: this.src.area,
      sectors: this.sectors,
      counts: this.counts,
      problems: this.problems,
      placement_unverified: this.placement_unverified,
      stale_generation: this.stale_generation,
    };
  }
}

/** The key shared by more than half of the window's sectors with headers, and by at least 2. */
function majorityKey(slots: Slot[]): string | null {
  let n = 0;
  const counts = new Map<string, number>();
  for (const s of slots) {
    const k = slotKey(s);
    if (k === null) continue;
    n++;
    counts.set(k, (counts.get(k) ?? 0) + 1);
  }
  for (const [k, c] of counts) if (c >= 2 && c * 2 > n) return k;
  return null;
}

const TRUSTED: readonly FileClass[] = ["ok", "pattern_mismatch", "unlocked_write"];
/** Classes of sectors that decoded whole (sector CRC right): their writer's record is exact. */
const SEALED: readonly FileClass[] = ["ok", "pattern_mismatch", "unlocked_write", "misdirected"];

/** Compares the two legs' sectors at one position (both classified, before placement). */
function comparePosition(
  a: { scan: FileScan; slot: Slot | null; empty: boolean },
  b: { scan: FileScan; slot: Slot | null; empty: boolean },
  position: number,
  report: PeerReport,
  sink: ProblemSink,
  volume: string | undefined,
  placement: ScanOptions["placement"],
  peer_position: number = position,
): void {
  // Only a mirrored volume's sectors have a copy on another leg.
  const good = (x: typeof a) => x.slot !== null && TRUSTED.includes(x.slot.cls) && x.slot.fields !== null && x.slot.fields.leg_count >= 2;
  const ga = good(a);
  const gb = good(b);
  if (!ga && !gb) return;
  const only = ga ? a : b;
  const other = ga ? b : a;
  const f = (ga ? a : b).slot!.fields!;
  if (volume !== undefined && f.volume_uuid !== volume) return;
  if (placement !== undefined) {
    // With the layouts known: the other file's position must be a leg of the same block.
    const want = placement(other.scan.src.name, other === a ? position : peer_position);
    if (want === null || want.volume_uuid !== f.volume_uuid || want.lba !== f.lba) {
      report.unaligned++;
      return;
    }
  }
  if (ga && gb) {
    const fa = a.slot!.fields!;
    const fb = b.slot!.fields!;
    if (fa.volume_uuid !== fb.volume_uuid || fa.lba !== fb.lba) {
      report.unaligned++;
      return;
    }
  } else if (!other.empty) {
    // One side damaged (or foreign), the other good: the damaged side's own problem says so.
    report.one_side_damaged++;
    if (other.slot !== null) other.slot.notes.push(`the other leg (${only.scan.src.name}) holds a good copy: ${writeText(headerRecord(f))}`);
    return;
  }
  report.compared++;
  const verdict = compareLegs({ sector: ga ? a.slot!.fields : null, leg: null }, { sector: gb ? b.slot!.fields : null, leg: null });
  if (verdict.class === "same") {
    report.same++;
    return;
  }
  const cls = verdict.class as Exclude<LegVerdictClass, "same">;
  report.counts[cls]++;
  const newer = verdict.newer === "a" ? a : verdict.newer === "b" ? b : null;
  const copies = [a, b].filter(good).map((x) => ({ name: x.scan.src.name, sector: x.slot!.fields! }));
  sink.add({
    class: cls,
    file: a.scan.src.name,
    peer_file: b.scan.src.name,
    position,
    offset_bytes: a.scan.src.area.offset_bytes + position * SECTOR_BYTES,
    lba: f.lba,
    volume_uuid: f.volume_uuid,
    writer: writerOf(newer?.slot?.fields ?? f),
    culprit: verdict.culprit,
    reason: verdict.reason,
    newer_file: newer?.scan.src.name ?? null,
    timeline: mergeTimeline(copies),
  });
}

/** Scans one file, or two legs side by side. */
export async function scan(src: ScanSource, opts: ScanOptions = {}): Promise<ScanResult> {
  const chunk_bytes = opts.chunk_bytes ?? DEFAULT_CHUNK_BYTES;
  const run_sectors = opts.run_sectors ?? DEFAULT_RUN_SECTORS;
  if (!Number.isInteger(run_sectors) || run_sectors < 1) throw new Error(`run_sectors ${run_sectors} must be a positive integer`);
  if (!Number.isInteger(chunk_bytes) || chunk_bytes % (SECTOR_BYTES * run_sectors) !== 0 || chunk_bytes <= 0) {
    throw new Error(`chunk_bytes ${chunk_bytes} must be a positive multiple of ${SECTOR_BYTES * run_sectors}`);
  }
  const full: Required<Pick<ScanOptions, "run_sectors" | "pattern_check">> & ScanOptions = {
    ...opts,
    run_sectors,
    pattern_check: opts.pattern_check ?? true,
    max_problems: opts.max_problems ?? DEFAULT_MAX_PROBLEMS,
  };
  const sink = new ProblemSink(full.max_problems!);
  const summaries = new Summaries();
  const sources = opts.peer ? [src, opts.peer] : [src];
  const scans = sources.map((s) => new FileScan(s, Math.floor(s.area.bytes / SECTOR_BYTES), full, sink, summaries));
  const readers = scans.map((s) => new ChunkReader(s.src, chunk_bytes, s.sectors));
  const peer: PeerReport | null = opts.peer
    ? { compared: 0, same: 0, counts: zeroCounts(PEER_CLASSES), one_side_damaged: 0, unaligned: 0, unpaired: 0 }
    : null;
  const per = chunk_bytes / SECTOR_BYTES;
  const peerReader = opts.peer && opts.peer_position ? new MappedReader(opts.peer, per, opts.peer_position) : null;
  const chunks = Math.max(...readers.map((r) => r.chunks));
  const load = (c: number) => Promise.all(readers.map((r) => (c < r.chunks ? r.load(c) : null)));
  let next = load(0);
  for (let c = 0; c < chunks; c++) {
    const cur = await next;
    if (c + 1 < chunks) next = load(c + 1);
    const words = cur.map((x) => (x === null ? null : new Uint32Array(x.bytes.buffer, x.bytes.byteOffset, x.bytes.length >>> 2)));
    const counts = cur.map((x) => (x === null ? 0 : x.bytes.length / SECTOR_BYTES));
    const n = Math.max(...counts);
    const mapped = peerReader !== null ? await peerReader.load(c * per, counts[0]!) : null;
    for (let i = 0; i < n; i++) {
      const position = c * per + i;
      const sides = scans.map((s, k) => {
        if (i >= counts[k]!) return null;
        const x = cur[k]!;
        const r = s.classify(x.bytes, words[k]!, i * SECTOR_BYTES, position, x.unreadable?.get(position));
        return { scan: s, slot: typeof r === "string" ? null : r, empty: r === "empty" };
      });
      if (peer !== null && mapped !== null) {
        // Block by block: the peer's leg of this block, wherever the layout put it.
        const q = mapped.q[i]!;
        const a = sides[0];
        if (a === null || a === undefined) continue;
        if (q < 0) {
          if (a.slot?.fields && a.slot.fields.leg_count >= 2) peer.unpaired++;
          continue;
        }
        const b = peekSide(scans[1]!, mapped.bytes, i * SECTOR_BYTES, q, mapped.unreadable.has(i));
        comparePosition(a, b, position, peer, sink, opts.volume_uuid, opts.placement, q);
      } else if (peer !== null) {
        if (sides[0] === null || sides[1] === null) peer.unpaired++;
        else comparePosition(sides[0]!, sides[1]!, position, peer, sink, opts.volume_uuid, opts.placement);
      }
    }
  }
  for (const s of scans) s.end();
  const stale_rules = summaries.order.finish();
  if (stale_rules.length > 0) await staleWritesPass(scans, readers, summaries.order, sink, chunk_bytes, opts.volume_uuid);
  sink.kept.sort((x, y) => x.position - y.position || x.file.localeCompare(y.file));
  return {
    files: scans.map((s) => s.report()),
    peer,
    problems_total: sink.total,
    problems: sink.kept,
    problems_truncated: sink.total > sink.kept.length,
    clients: [...summaries.clients.values()].sort((x, y) => x.client_id - y.client_id),
    volumes: [...summaries.volumes.values()],
    stale_rules,
  };
}

/**
 * Second pass, only when some writer's generation went back (order.ts): lists each sector written
 * with the stale generation. A second read of the files costs less than remembering every
 * sector's (client, generation, seq) from the first.
 */
async function staleWritesPass(
  scans: FileScan[],
  readers: ChunkReader[],
  order: GenerationOrder,
  sink: ProblemSink,
  chunk_bytes: number,
  volume_uuid: string | undefined,
): Promise<void> {
  const per = chunk_bytes / SECTOR_BYTES;
  for (const [k, scan] of scans.entries()) {
    const reader = readers[k]!;
    for (let c = 0; c < reader.chunks; c++) {
      const { bytes } = await reader.load(c);
      const words = new Uint32Array(bytes.buffer, bytes.byteOffset, bytes.length >>> 2);
      for (let i = 0; i < bytes.length / SECTOR_BYTES; i++) {
        const at = i * SECTOR_BYTES;
        if (words[at >>> 2] === 0 && isEmptyAt(words, at)) continue;
        const d = decodeSector(bytes, at);
        if (!d.ok) continue;
        const f = d.fields;
        if (volume_uuid !== undefined && f.volume_uuid !== volume_uuid) continue;
        const rule = order.stale(f);
        if (rule === null) continue;
        const position = c * per + i;
        scan.stale_generation++;
        scan.problems++;
        const who = `client ${f.client_id}${f.client_name ? ` (${f.client_name})` : ""}`;
        sink.add({
          class: "stale_generation",
          file: scan.src.name,
          position,
          offset_bytes: scan.src.area.offset_bytes + position * SECTOR_BYTES,
          lba: f.lba,
          volume_uuid: f.volume_uuid,
          writer: writerOf(f),
          culprit: { client_id: f.client_id, client_name: f.client_name },
          reason: `${who} wrote seq ${f.seq} with topology generation ${f.generation} after its seq ${rule.after_seq} had used generation ${rule.newer_generation}: it wrote with a stale topology`,
        });
      }
    }
  }
}

function isEmptyAt(words: Uint32Array, at: number): boolean {
  const w0 = at >>> 2;
  for (let i = w0; i < w0 + SECTOR_BYTES / 4; i++) if (words[i] !== 0) return false;
  return true;
}

// --- one block's history ----------------------------------------------------------------------

export interface BlockCopy {
  file: string;
  position: number;
  offset_bytes: number;
  class: SectorClass | "ok";
  reason: string;
  /** The copy's decoded record (data copied out): copies are found by their trusted header. */
  sector: DebugSector;
  /** Verify data: what the pattern check says (history data included). */
  pattern_problems: string[];
  /** Set by a caller that knows the layout: the copy is not where the layout puts its block. */
  placement_problem?: string;
}

/** One volume's copies of the block and its writes. */
export interface VolumeBlock {
  volume_uuid: string;
  copies: BlockCopy[];
  /** The writes of the block, oldest first, merged from every copy. */
  timeline: TimelineEntry[];
}

export interface BlockHistory {
  lba: number;
  volume_filter: string | null;
  /** One entry per volume that has a sector of this LBA (one, with a volume filter). */
  volumes: VolumeBlock[];
}

/** Finds every sector whose header names this LBA (and volume) in the sources, and merges their
 * histories into the block's timeline. */
export async function blockHistory(sources: ScanSource[], opts: { lba: number; volume_uuid?: string; chunk_bytes?: number }): Promise<BlockHistory> {
  const chunk_bytes = opts.chunk_bytes ?? DEFAULT_CHUNK_BYTES;
  const copies: BlockCopy[] = [];
  for (const src of sources) {
    const sectors = Math.floor(src.area.bytes / SECTOR_BYTES);
    const reader = new ChunkReader(src, chunk_bytes, sectors);
    const per = chunk_bytes / SECTOR_BYTES;
    let next = reader.load(0);
    for (let c = 0; c < reader.chunks; c++) {
      const cur = await next;
      if (c + 1 < reader.chunks) next = reader.load(c + 1);
      const words = new Uint32Array(cur.bytes.buffer, cur.bytes.byteOffset, cur.bytes.length >>> 2);
      for (let i = 0; i < cur.bytes.length / SECTOR_BYTES; i++) {
        const at = i * SECTOR_BYTES;
        if (words[at >>> 2] === 0 && isEmptyAt(words, at)) continue;
        const d = decodeSector(cur.bytes, at);
        const f = d.ok ? d.fields : d.fields;
        if (f === null || f.lba !== opts.lba || (opts.volume_uuid !== undefined && f.volume_uuid !== opts.volume_uuid)) continue;
        const sector = { ...f, data: f.data.slice() };
        const pattern_problems = sector.pattern !== null && (d.ok || d.class === "torn" || d.class === "data_mismatch") ? checkPatternSector(sector).map((p) => `${p.kind}: ${p.detail}`) : [];
        const position = c * per + i;
        copies.push({
          file: src.name,
          position,
          offset_bytes: src.area.offset_bytes + position * SECTOR_BYTES,
          class: d.ok ? "ok" : d.class,
          reason: d.ok ? "" : d.reason,
          sector,
          pattern_problems,
        });
      }
    }
  }
  const volumes: VolumeBlock[] = [];
  for (const c of copies) {
    const v = c.sector!.volume_uuid;
    let g = volumes.find((x) => x.volume_uuid === v);
    if (g === undefined) volumes.push((g = { volume_uuid: v, copies: [], timeline: [] }));
    g.copies.push(c);
  }
  for (const g of volumes) g.timeline = mergeTimeline(g.copies.map((c) => ({ name: `${c.file}@${c.position}`, sector: c.sector! })));
  return { lba: opts.lba, volume_filter: opts.volume_uuid ?? null, volumes };
}
