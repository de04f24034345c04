/**
 * The order of writes of one block, rebuilt from what its copies carry: each copy's header is its
 * newest write and its history the earlier ones, newest first. Copies on different legs (or
 * several damaged copies) are merged into one timeline, oldest first, that says on which legs each
 * write is the current record.
 *
 * Identity of a write: an exact record (a header, or a "remembered" history entry) is (client id,
 * seq, data CRC); a "predicted" entry has no seq and is (pattern seed, worker, step, data CRC),
 * which a header of verify data also carries.
 */
import type { DebugSector, HistoryEntry, OpKind, TopoState } from "./sector.ts";

export interface WriteRecord {
  /** "header": the copy's current record; "history": an entry of its history. */
  source: "header" | "history";
  exact: boolean;
  client_id: number;
  client_name: string | null;
  /** null when unknown (predicted entries). */
  generation: number | null;
  seq: number | null;
  seed_id: number | null;
  worker: number | null;
  step: number | null;
  data_crc: number;
  topo_state: TopoState;
  legs_mask: number;
  op: OpKind;
}

export function headerRecord(s: DebugSector): WriteRecord {
  return {
    source: "header",
    exact: true,
    client_id: s.client_id,
    client_name: s.client_name,
    generation: s.generation,
    seq: s.seq,
    seed_id: s.pattern?.seed_id ?? null,
    worker: s.pattern?.worker ?? null,
    step: s.pattern?.step ?? null,
    data_crc: s.data_crc,
    topo_state: s.topo_state,
    legs_mask: s.legs_mask,
    op: s.op,
  };
}

export function historyRecord(s: DebugSector, h: HistoryEntry): WriteRecord {
  const predicted = h.kind === "predicted";
  return {
    source: "history",
    exact: !predicted,
    client_id: h.client_id,
    client_name: null,
    generation: predicted ? null : h.generation,
    seq: predicted ? null : h.seq,
    seed_id: predicted ? (s.pattern?.seed_id ?? null) : null,
    worker: predicted ? (s.pattern?.worker ?? null) : null,
    step: predicted || h.step !== 0 ? h.step : null,
    data_crc: h.data_crc,
    topo_state: h.topo_state,
    legs_mask: h.legs_mask,
    op: h.op,
  };
}

/** The copy's writes, newest first: its header, then its history. */
export function chainOf(s: DebugSector): WriteRecord[] {
  return [headerRecord(s), ...s.history.map((h) => historyRecord(s, h))];
}

/** Whether two records name the same write. */
export function sameWrite(a: WriteRecord, b: WriteRecord): boolean {
  if (a.data_crc !== b.data_crc) return false;
  if (a.exact && b.exact) return a.client_id === b.client_id && a.seq === b.seq;
  return a.seed_id !== null && a.seed_id === b.seed_id && a.worker === b.worker && a.step !== null && a.step === b.step;
}

/** Index in s's history of the entry that names write w, or -1. */
export function historyIndexOf(s: DebugSector, w: WriteRecord): number {
  return s.history.findIndex((h) => sameWrite(historyRecord(s, h), w));
}

export interface TimelineEntry {
  write: WriteRecord;
  /** Copies whose current record this write is. */
  current_on: string[];
  /** Copies that know this write (as their record or in their history). */
  known_by: string[];
}

/**
 * Merges the chains of several copies into one order, oldest first. Each chain is totally
 * ordered; a write known to several copies anchors them, and a copy's writes that the timeline
 * does not know yet go right after its previous anchor.
 */
export function mergeTimeline(copies: { name: string; sector: DebugSector }[]): TimelineEntry[] {
  const out: TimelineEntry[] = [];
  for (const { name, sector } of copies) {
    const chain = chainOf(sector).reverse();
    let last = -1;
    chain.forEach((w, i) => {
      const isCurrent = i === chain.length - 1;
      let j = -1;
      for (let k = last + 1; k < out.length; k++) {
        if (sameWrite(out[k]!.write, w)) {
          j = k;
          break;
        }
      }
      if (j < 0) {
        out.splice(last + 1, 0, { write: w, current_on: [], known_by: [] });
        j = last + 1;
      } else if (w.exact && !out[j]!.write.exact) {
        // Prefer the exact description of a write over a predicted one.
        out[j]!.write = w;
      }
      if (isCurrent) out[j]!.current_on.push(name);
      if (!out[j]!.known_by.includes(name)) out[j]!.known_by.push(name);
      last = j;
    });
  }
  return out;
}

export function writeText(w: WriteRecord): string {
  // A predicted entry's client id is its predictor's; the pattern's worker is what it knows.
  if (!w.exact && w.worker !== null) return `worker ${w.worker} step ${w.step} (predicted)`;
  const who = w.client_name ? `client ${w.client_id} (${w.client_name})` : `client ${w.client_id}`;
  const parts = [who];
  if (w.seq !== null) parts.push(`seq ${w.seq}`);
  if (w.generation !== null) parts.push(`generation ${w.generation}`);
  if (w.step !== null) parts.push(`step ${w.step}`);
  if (!w.exact) parts.push("(predicted)");
  return parts.join(" ");
}
