/**
 * Which drives the TOMA's next hard-state record goes to, with which seq, and when the TOMA must
 * become amnesic instead (rule W of docs/toma-cluster.md, "The write rule"). Pure bookkeeping: the
 * runtime reads the drives, asks plan(), writes to every planned drive, reports completed().
 *
 *   anchor   the last record known to have landed on every drive it lists;
 *   pending  the records issued since, none of which completed.
 * A new record must share a drive with the anchor and with every pending record: then whichever
 * of them may have landed somewhere, the new one, once complete, sits on a drive after it, and a
 * later start can never trust a record older than one the TOMA relied on.
 */
import { assert } from "../../engine/assert.ts";
import { plantedBugs } from "../../engine/planted-bugs.ts";
import type { WrittenSet } from "./record-trust.ts";

/**
 * Drives whose slot generation is at least this are never written: our seq must exceed it, and
 * the seq space (2^53) must not be exhausted by a drive that arrived from elsewhere.
 */
export const GENERATION_LIMIT = 2 ** 52;
/** Distinct pending drive sets kept; past this the TOMA gives up (amnesia) rather than grow. */
export const MAX_PENDING = 32;

export type Plan =
  | { ok: true; seq: number; drives: string[]; anchor_seq: number }
  /**
   * No record can be written now. `wait`: because drives the rule needs are absent (every own
   * drive, or every drive of a record the next must meet): the same drives coming back (a target
   * restarting) make it writable again, and waiting is safe (nothing is sent meanwhile). Else
   * the TOMA must become amnesic now.
   */
  | { ok: false; reason: string; wait: boolean };

export type WriteOutcome =
  /** Landed on every planned drive: the new anchor; messages depending on it may go. */
  | "complete"
  /** Not everywhere: pending; plan the next record (without the drives that failed). */
  | "pending"
  /** The start write did not reach every drive of the trusted record and its anchor. */
  | "amnesic";

export class RecordWriter {
  private anchor: WrittenSet | null;
  private pending: WrittenSet[];
  private last_seq: number;
  private in_flight: WrittenSet | null = null;
  /**
   * Until the first write of a trusted start completes: the drives of the trusted record and of
   * its anchor, which that write must all reach (W5). Landing there is what makes every record
   * issued before this start, and still lying on absent drives, untrustable for good.
   */
  private start_cover: ReadonlySet<string> | null;

  /** start: from the trust decision, or null for a new incarnation (nothing to stay after). */
  constructor(start: { anchor: WrittenSet; pending: WrittenSet[] } | null, seq_floor: number) {
    this.anchor = start?.anchor ?? null;
    this.pending = start ? [...start.pending] : [];
    this.last_seq = seq_floor;
    this.start_cover = start ? new Set([start.anchor, ...start.pending].flatMap((w) => w.drives)) : null;
  }

  /** The drive set of the last complete record (the runtime rewrites when the live set differs). */
  anchorDrives(): readonly string[] | null {
    return this.anchor?.drives ?? null;
  }

  /**
   * Plans the next record over the live drives (uuid → slot generation read or last written).
   * Not ok: no set of live drives satisfies the rule; the TOMA must become amnesic now.
   */
  plan(live: ReadonlyMap<string, number>): Plan {
    assert(this.in_flight === null, "a record write is already in flight");
    const drives = [...live].filter(([, g]) => g < GENERATION_LIMIT).map(([d]) => d).sort();
    if (drives.length === 0) return { ok: false, reason: "no own drive left to write to", wait: true };
    // Forgetting a pending record would be unsafe; keeping an unbounded list is not allowed either.
    if (this.pending.length > MAX_PENDING) return { ok: false, reason: `${this.pending.length} record writes in a row did not complete`, wait: false };
    const chosen = new Set(drives);
    const uncovered = [...(this.start_cover ?? [])].filter((d) => !chosen.has(d));
    if (uncovered.length > 0) return { ok: false, reason: `the start record cannot reach drive(s) ${uncovered.join(", ")} of the trusted record`, wait: false };
    const must_meet = plantedBugs.record_intersect_previous_only
      ? [this.pending[this.pending.length - 1] ?? this.anchor].filter((x) => x !== null)
      : [...(this.anchor ? [this.anchor] : []), ...this.pending];
    for (const w of must_meet) {
      if (!w.drives.some((d) => chosen.has(d))) {
        return { ok: false, reason: `no live drive holds record ${w.seq} (drives ${w.drives.join(", ")})`, wait: true };
      }
    }
    const seq = Math.max(this.last_seq, ...drives.map((d) => live.get(d)!)) + 1;
    this.last_seq = seq;
    this.in_flight = { seq, drives };
    return { ok: true, seq, drives, anchor_seq: this.anchor?.seq ?? 0 };
  }

  /** The write of `seq` ended; `acked` are the drives that acknowledged it durable. */
  completed(seq: number, acked: ReadonlySet<string>): WriteOutcome {
    const w = this.in_flight;
    assert(w !== null && w.seq === seq, "completed() for a record not in flight");
    this.in_flight = null;
    const cover = this.start_cover;
    this.start_cover = null;
    if (cover && ![...cover].every((d) => acked.has(d))) return "amnesic";
    if (w.drives.every((d) => acked.has(d))) {
      this.anchor = w;
      this.pending = [];
      return "complete";
    }
    const key = w.drives.join(",");
    if (!this.pending.some((p) => p.drives.join(",") === key)) this.pending.push(w);
    return "pending";
  }
}
