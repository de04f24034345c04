/**
 * Turns a byte range of a volume into the drive I/Os that serve it. Pure: the same function runs
 * in the client, the simulator and the tests. Segments never cross an extent (extents of one column
 * need not be contiguous on the drive) nor, for RAID0, a stripe unit.
 */
import { SECTOR_RATIO } from "../../debugfmt/sector.ts";
import { MAX_DECODED_EXTENTS, MAX_RUN_NUMBERS, RunIndex, runsCount } from "./extent-runs.ts";
import { LOCK_UNIT_BYTES, type VolumeLayout } from "./types.ts";

export interface Segment {
  column: number;
  drive_uuid: string;
  /** Offset in the drive's data area. */
  drive_offset: number;
  length: number;
  /** Offset of this segment within the volume request. */
  request_offset: number;
}

/**
 * Bytes of the layout's address space: the capacity, or for a debug-format volume 4 × the
 * capacity (each 512-byte sector is stored as a 2048-byte debug sector).
 */
export function physicalBytes(layout: Pick<VolumeLayout, "capacity_bytes" | "debug_format">): number {
  return layout.debug_format === true ? layout.capacity_bytes * SECTOR_RATIO : layout.capacity_bytes;
}

export function columnBytes(layout: VolumeLayout, column: number): number {
  return RunIndex.of(layout.columns[column]!.runs).count * layout.extent_size_bytes;
}

/**
 * Why the layout's columns are not canonical runs (extent-runs.ts), bounded before anything is
 * indexed: a list too long, malformed, or more extents in all than a cluster state may list.
 */
function runsProblem(layout: VolumeLayout): string | null {
  let total = 0;
  for (const [i, c] of layout.columns.entries()) {
    if (typeof c?.drive_uuid !== "string") return `column ${i} names no drive`;
    if (!Array.isArray(c.runs)) return `column ${i} has no runs list`;
    if (c.runs.length > MAX_RUN_NUMBERS) return `column ${i}: ${c.runs.length} numbers in its runs, above ${MAX_RUN_NUMBERS}`;
    if (c.runs.length === 0) return `column ${i} has no extents`;
    const n = runsCount(c.runs);
    if (!n.ok) return `column ${i}: ${n.error}`;
    total += n.value;
    if (total > MAX_DECODED_EXTENTS) return `columns list more than ${MAX_DECODED_EXTENTS} extents in all`;
  }
  return null;
}

/** Checks the invariants a layout must hold before any I/O is planned with it. */
export function layoutProblem(layout: VolumeLayout): string | null {
  const E = layout.extent_size_bytes;
  if (!Number.isInteger(E) || E <= 0) return "extent size must be a positive integer";
  if (!Number.isSafeInteger(layout.incarnation) || layout.incarnation < 1) return `incarnation ${layout.incarnation} is not a positive integer`;
  if (!Array.isArray(layout.columns) || layout.columns.length === 0) return "layout has no columns";
  const runs = runsProblem(layout);
  if (runs !== null) return runs;
  const capacity = physicalBytes(layout);
  if (layout.raid_level === "1" || layout.raid_level === "10") {
    const m = layout.mirrors;
    if (!Number.isInteger(m) || m < 2 || layout.columns.length % m !== 0) return `bad mirror count ${m}`;
    const sets = layout.columns.length / m;
    const S = layout.stripe_size_bytes;
    if (sets > 1 && (!Number.isInteger(S) || S <= 0 || E % S !== 0)) return `stripe size ${S} must divide the extent size ${E}`;
    const per = Math.min(...layout.columns.map((_c, i) => columnBytes(layout, i)));
    const need = sets > 1 ? Math.ceil(capacity / (S * sets)) * S : capacity;
    return need > per ? "legs too small for capacity" : null;
  }
  const total = layout.columns.reduce((s, _c, i) => s + columnBytes(layout, i), 0);
  if (layout.raid_level === "0") {
    const S = layout.stripe_size_bytes;
    if (!Number.isInteger(S) || S <= 0 || E % S !== 0) {
      return `stripe size ${S} must divide the extent size ${E}`;
    }
    const per = Math.min(...layout.columns.map((_c, i) => columnBytes(layout, i)));
    const W = layout.columns.length;
    if (Math.ceil(capacity / (S * W)) * S > per) return "columns too small for capacity";
  } else if (total < capacity) {
    return "columns too small for capacity";
  }
  return null;
}

/** Maps [offset, offset+length) of column `column` onto extent-bounded drive segments. */
function mapColumn(
  layout: VolumeLayout,
  column: number,
  col_offset: number,
  length: number,
  request_offset: number,
  out: Segment[],
): void {
  const E = layout.extent_size_bytes;
  const col = layout.columns[column]!;
  const index = RunIndex.of(col.runs);
  while (length > 0) {
    const idx = Math.floor(col_offset / E);
    const within = col_offset - idx * E;
    const at = index.at(idx);
    if (at === undefined) throw new Error(`column ${column} offset ${col_offset} beyond its extents`);
    const extent = at.extent;
    const n = Math.min(length, E - within);
    const last = out[out.length - 1];
    const drive_offset = extent * E + within;
    // Adjacent extents that are also adjacent on the drive become one I/O.
    if (
      last &&
      last.column === column &&
      last.drive_offset + last.length === drive_offset &&
      last.request_offset + last.length === request_offset
    ) {
      last.length += n;
    } else {
      out.push({ column, drive_uuid: col.drive_uuid, drive_offset, length: n, request_offset });
    }
    col_offset += n;
    request_offset += n;
    length -= n;
  }
}

/**
 * Plans volume bytes [offset, offset+length). The caller has already checked the range against
 * physicalBytes(layout). Segments are in request order.
 */
export function plan(layout: VolumeLayout, offset: number, length: number): Segment[] {
  const out: Segment[] = [];
  if (layout.raid_level === "0") {
    const S = layout.stripe_size_bytes;
    const W = layout.columns.length;
    let done = 0;
    while (done < length) {
      const o = offset + done;
      const stripe = Math.floor(o / S);
      const within = o - stripe * S;
      const column = stripe % W;
      const row = Math.floor(stripe / W);
      const n = Math.min(length - done, S - within);
      mapColumn(layout, column, row * S + within, n, done, out);
      done += n;
    }
    return out;
  }
  let col_start = 0;
  let done = 0;
  for (let c = 0; c < layout.columns.length && done < length; c++) {
    const size = columnBytes(layout, c);
    const o = offset + done;
    if (o < col_start + size) {
      const n = Math.min(length - done, col_start + size - o);
      mapColumn(layout, c, o - col_start, n, done, out);
      done += n;
    }
    col_start += size;
  }
  if (done < length) throw new Error(`range ${offset}+${length} beyond the layout`);
  return out;
}

/** Splits segments so that none exceeds max_bytes (the wire's per-frame I/O limit). */
export function limitSegments(segments: Segment[], max_bytes: number): Segment[] {
  if (segments.every((s) => s.length <= max_bytes)) return segments;
  const out: Segment[] = [];
  for (const s of segments) {
    for (let at = 0; at < s.length; at += max_bytes) {
      out.push({
        ...s,
        drive_offset: s.drive_offset + at,
        request_offset: s.request_offset + at,
        length: Math.min(max_bytes, s.length - at),
      });
    }
  }
  return out;
}

/** The distinct drives a volume uses, in column order. */
export function volumeDrives(layout: VolumeLayout): string[] {
  return [...new Set(layout.columns.map((c) => c.drive_uuid))];
}

/** One piece of a mirrored I/O: inside one stripe unit, one extent and one lock unit of one set. */
export interface MirrorPiece {
  set: number;
  /** Offset within each leg of the set (all legs of a set have the same geometry). */
  set_offset: number;
  length: number;
  request_offset: number;
  /** Per leg of the set, in leg order: where the piece lives. */
  legs: { drive_uuid: string; drive_offset: number }[];
  /** Lock unit of the piece (set_offset / LOCK_UNIT_BYTES): it picks the read/lock leg. */
  unit: number;
}

/** Plans [offset, offset+length) of a RAID1/RAID10 volume. */
export function planMirror(layout: VolumeLayout, offset: number, length: number): MirrorPiece[] {
  const m = layout.mirrors;
  const sets = layout.columns.length / m;
  const E = layout.extent_size_bytes;
  const S = sets > 1 ? layout.stripe_size_bytes : Number.MAX_SAFE_INTEGER;
  const out: MirrorPiece[] = [];
  let done = 0;
  while (done < length) {
    const o = offset + done;
    let set = 0;
    let set_offset = o;
    let room = length - done;
    if (sets > 1) {
      const stripe = Math.floor(o / S);
      const within = o - stripe * S;
      set = stripe % sets;
      set_offset = Math.floor(stripe / sets) * S + within;
      room = Math.min(room, S - within);
    }
    room = Math.min(room, E - (set_offset % E), LOCK_UNIT_BYTES - (set_offset % LOCK_UNIT_BYTES));
    const idx = Math.floor(set_offset / E);
    const legs = layout.columns.slice(set * m, set * m + m).map((c) => {
      const extent = RunIndex.of(c.runs).at(idx)?.extent;
      if (extent === undefined) throw new Error(`set ${set} offset ${set_offset} beyond its extents`);
      return { drive_uuid: c.drive_uuid, drive_offset: extent * E + (set_offset % E) };
    });
    out.push({ set, set_offset, length: room, request_offset: done, legs, unit: Math.floor(set_offset / LOCK_UNIT_BYTES) });
    done += room;
  }
  return out;
}
