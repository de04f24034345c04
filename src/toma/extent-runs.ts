/**
 * A column's extents as runs, the form the cluster state and the commands carry on drives and on
 * the wire: the extent list [s, s+1, ..., s+n-1, t, ...] becomes the flat list [s, n, t, ...].
 * The allocator hands out contiguous extents where it can, so a leg of any size is usually one
 * run, and the encoded state grows with the number of legs, not with their size. The order is the
 * column's order (extent i of a column maps its i-th stretch of the volume), so runs are maximal
 * ascending stretches in that order, never sorted or merged across.
 *
 * In memory a column stays the plain extent list every reader indexes (allocator, layout,
 * topology): runs exist only at the encoding boundary, and the expansion is bounded before it
 * allocates anything (MAX_DECODED_EXTENTS), so a corrupt or hostile count cannot exhaust memory.
 */
import type { Decoded } from "./parse-cbor.ts";

/**
 * Extents one decoded state or command may list in total (every column, every retired list):
 * 2^24, 256 TiB of allocated space (mirror copies counted) at the default 16 MiB extents, 16 TiB
 * at 1 MiB extents. What bounds the memory a decoded state takes as plain extent lists.
 */
export const MAX_DECODED_EXTENTS = 1 << 24;
/** Numbers in one column's run list (two per run). */
export const MAX_RUN_NUMBERS = 1 << 21;

/** The canonical runs of an extent list: maximal ascending stretches, in order. */
export function toRuns(extents: readonly number[]): number[] {
  const runs: number[] = [];
  for (let i = 0; i < extents.length; ) {
    const start = extents[i]!;
    let n = 1;
    while (i + n < extents.length && extents[i + n] === start + n) n++;
    runs.push(start, n);
    i += n;
  }
  return runs;
}

/** Extents the runs list, or why they are not canonical runs; expands nothing. */
export function runsCount(runs: readonly number[]): Decoded<number> {
  if (runs.length % 2 !== 0) return { ok: false, error: `${runs.length} numbers: runs are (start, count) pairs` };
  let total = 0;
  for (let i = 0; i < runs.length; i += 2) {
    const start = runs[i]!;
    const count = runs[i + 1]!;
    if (!Number.isSafeInteger(start) || start < 0 || !Number.isSafeInteger(count) || count < 1) {
      return { ok: false, error: `run ${i / 2} (${start}, ${count}) is not a start and a positive count` };
    }
    if (!Number.isSafeInteger(start + count)) return { ok: false, error: `run ${i / 2} (${start}, ${count}) ends beyond any drive` };
    if (i > 0 && runs[i - 2]! + runs[i - 1]! === start) {
      return { ok: false, error: `run ${i / 2} continues the one before it: runs are maximal` };
    }
    total += count;
    if (total > MAX_DECODED_EXTENTS) return { ok: false, error: `runs list more than ${MAX_DECODED_EXTENTS} extents` };
  }
  return { ok: true, value: total };
}

/** The extent list of canonical runs (check them with runsCount first). */
export function fromRuns(runs: readonly number[]): number[] {
  const extents: number[] = [];
  for (let i = 0; i < runs.length; i += 2) {
    const start = runs[i]!;
    const end = start + runs[i + 1]!;
    for (let e = start; e < end; e++) extents.push(e);
  }
  return extents;
}

/**
 * Expands every run list of one decoded object, all or nothing: checks each list and the total
 * against MAX_DECODED_EXTENTS before allocating. `lists` names each list for the error.
 */
export function expandAll(lists: readonly { what: string; runs: readonly number[] }[]): Decoded<number[][]> {
  let total = 0;
  for (const l of lists) {
    const n = runsCount(l.runs);
    if (!n.ok) return { ok: false, error: `${l.what}: ${n.error}` };
    total += n.value;
    if (total > MAX_DECODED_EXTENTS) return { ok: false, error: `lists more than ${MAX_DECODED_EXTENTS} extents in all` };
  }
  return { ok: true, value: lists.map((l) => fromRuns(l.runs)) };
}
