/**
 * The TOMA's hard state on its own server's drives (docs/toma-cluster.md, "Hard state on the
 * TOMA's own drives"): at start, read both slots of every own drive and decide which record to
 * trust (record-trust.ts); while running, write each durable state as a record to every live own
 * drive in parallel (record-writer.ts) and report when it is durable. Reaches the drives only
 * through SlotIo, so the same code runs over a real target session, a drive opened in the test,
 * or the simulator.
 */
import { assert } from "../../engine/assert.ts";
import { type Env, sleep } from "../../engine/env.ts";
import type { MetaReadAnswer } from "../../engine/wire/control.ts";
import { withTimeout } from "../target-link.ts";
import { encodeRecord, type HardStateRecord } from "../consensus/hard-state-record.ts";
import { decideTrust, type SlotRead, type SlotView, type TrustDecision, viewSlot } from "../consensus/record-trust.ts";
import { RecordWriter } from "../consensus/record-writer.ts";
import type { CurrentSlot } from "../consensus/single-toma-state.ts";
import type { DurableState } from "../consensus/types.ts";

/** The own server's drives, as the TOMA reaches them (its own target's session). */
export interface SlotIo {
  /** The own drives served right now. */
  drives(): string[];
  read(drive_uuid: string): Promise<MetaReadAnswer>;
  write(drive_uuid: string, generation: number, payload: Uint8Array): Promise<void>;
}

export interface HardStateTimings {
  /** A drive's read or write not answered within this counts as failed. */
  request_timeout_ms: number;
  /** First wait before writing again after a write that did not reach every drive; doubles. */
  retry_min_ms: number;
  retry_max_ms: number;
}

export const DEFAULT_HARD_STATE_TIMINGS: HardStateTimings = { request_timeout_ms: 5000, retry_min_ms: 100, retry_max_ms: 2000 };

/** What the start found: the trust decision and what every present drive showed. */
export interface StartRead {
  decision: TrustDecision;
  views: SlotView[];
  /** Slot generation per present drive (the writer's floor for each). */
  generations: Map<string, number>;
  /** Own drives listed whose slots could not be read. */
  failed: string[];
  /** The current slot of every drive read (the single-TOMA takeover looks at them). */
  current: CurrentSlot[];
}

/** Reads both slots of every own drive; a drive whose read fails is absent for the trust rule. */
export async function readOwnDrives(env: Env, io: SlotIo, toma_id: string, cluster_uuid: string | null, t = DEFAULT_HARD_STATE_TIMINGS): Promise<StartRead> {
  const drives = io.drives();
  const answers = await Promise.all(
    drives.map(async (d) => {
      try {
        return { d, a: await withTimeout(env, io.read(d), t.request_timeout_ms, `META_READ of drive ${d}`) };
      } catch (e) {
        env.log.warn("own drive's metadata unreadable: left out of the hard-state decision", { drive: d, error: (e as Error).message });
        return null;
      }
    }),
  );
  const views: SlotView[] = [];
  const generations = new Map<string, number>();
  const failed: string[] = [];
  const current: CurrentSlot[] = [];
  for (const [i, x] of answers.entries()) {
    if (x === null) {
      failed.push(drives[i]!);
      continue;
    }
    const read: SlotRead = {
      drive_uuid: x.d,
      current: { generation: x.a.generation, payload: x.a.payload },
      // A target that does not say what the other slot holds cannot show the drive clean.
      other: x.a.other ?? "unreadable",
    };
    views.push(viewSlot(read, toma_id));
    generations.set(x.d, x.a.generation);
    current.push({ drive_uuid: x.d, generation: x.a.generation, payload: x.a.payload });
  }
  return { decision: decideTrust(views, { cluster_uuid }), views, generations, failed, current };
}

export type PersistOutcome = { ok: true; seq: number } | { ok: false; amnesic: string };

/**
 * Writes records for one node id (cluster, toma, incarnation), one at a time: W1–W4 of the
 * write rule. `persist` resolves once a record of the state landed on every drive it lists (then
 * messages depending on it may go), or reports amnesia (then nothing of this node id may go).
 */
export class HardStateWriter {
  private readonly writer: RecordWriter;
  /** Slot generation per drive, as last read or written. */
  private readonly generations: Map<string, number>;
  private amnesic: string | null = null;
  private writing = false;
  /** The last record that completed: what the drives hold (status, tests). */
  last: HardStateRecord | null = null;

  constructor(
    private readonly env: Env,
    private readonly io: SlotIo,
    readonly who: { cluster_uuid: string; toma_id: string; incarnation: string },
    start: { anchor: { seq: number; drives: string[] }; pending: { seq: number; drives: string[] }[] } | null,
    generations: Map<string, number>,
    private readonly timings: HardStateTimings = DEFAULT_HARD_STATE_TIMINGS,
  ) {
    const floor = Math.max(0, ...generations.values());
    this.writer = new RecordWriter(start, floor);
    this.generations = new Map(generations);
  }

  /** Why the last write waits for own drives to come back (null: it does not). */
  waiting: string | null = null;

  get amnesia(): string | null {
    return this.amnesic;
  }

  /** The drives the last complete record went to. */
  drives(): readonly string[] {
    return this.writer.anchorDrives() ?? [];
  }

  async persist(state: DurableState): Promise<PersistOutcome> {
    assert(!this.writing, "one hard-state write at a time");
    if (this.amnesic !== null) return { ok: false, amnesic: this.amnesic };
    this.writing = true;
    try {
      let backoff = this.timings.retry_min_ms;
      // Drives that failed the last attempt while others acknowledged it: left out of the next
      // one (a drive refusing every write, e.g. an unreadable slot, must not hold the TOMA up).
      let skip = new Set<string>();
      for (;;) {
        const listed = new Set((await this.usable()).filter((d) => !skip.has(d)));
        const live = new Map([...listed].map((d) => [d, this.generations.get(d) ?? 0] as const));
        const plan = this.writer.plan(live);
        if (!plan.ok && !plan.wait) return this.becomeAmnesic(plan.reason);
        if (!plan.ok) {
          // The own target restarting, most often: the same drives come back and the write goes
          // on. Nothing leaves meanwhile (the loop awaits this), so waiting is safe however long.
          if (this.waiting !== plan.reason) this.env.log.warn("hard state waits for own drives (this TOMA takes no part meanwhile)", { reason: plan.reason });
          this.waiting = plan.reason;
          await sleep(this.env, backoff);
          backoff = Math.min(backoff * 2, this.timings.retry_max_ms);
          skip = new Set();
          continue;
        }
        if (this.waiting !== null) this.env.log.info("own drives back: hard state written again", { drives: plan.drives.join(",") });
        this.waiting = null;
        const record: HardStateRecord = {
          kind: "nvmesh.toma.hard-state",
          format: 1,
          ...this.who,
          seq: plan.seq,
          drives: plan.drives,
          anchor_seq: plan.anchor_seq,
          term: state.term,
          vote: state.vote,
          commit: state.commit,
          snapshot: state.snapshot,
          entries: state.entries,
        };
        const bytes = encodeRecord(record);
        const acked = new Set<string>();
        await Promise.all(
          plan.drives.map(async (d) => {
            try {
              await withTimeout(this.env, this.io.write(d, plan.seq, bytes), this.timings.request_timeout_ms, `META_WRITE to drive ${d}`);
              acked.add(d);
              this.generations.set(d, plan.seq);
            } catch (e) {
              this.env.log.warn("hard-state record not written to an own drive", { drive: d, seq: plan.seq, error: (e as Error).message });
            }
          }),
        );
        const outcome = this.writer.completed(plan.seq, acked);
        if (outcome === "complete") {
          this.last = record;
          return { ok: true, seq: plan.seq };
        }
        if (outcome === "amnesic") return this.becomeAmnesic(`the start record did not reach every drive of the trusted record (seq ${plan.seq})`);
        skip = acked.size > 0 ? new Set(plan.drives.filter((d) => !acked.has(d))) : new Set();
        // Pending: the next record must meet this one and the anchor (the writer checks). Wait a
        // little: a target that just failed is most often back within a few retries.
        await sleep(this.env, backoff);
        backoff = Math.min(backoff * 2, this.timings.retry_max_ms);
      }
    } finally {
      this.writing = false;
    }
  }

  /**
   * The live own drives this TOMA may write its records to: every one but those holding another
   * TOMA's record of this cluster. Such a drive came from another server (moved, to be moved back,
   * or the other server's TOMA still needs what is on it); writing over it would cost that TOMA
   * its hard state, which it may need when the drive goes home (simulator seed 431 with
   * --toma-cluster: two of three TOMAs lost theirs that way and the cluster could not elect). Each
   * drive is read once when it appears (again when it comes back).
   */
  private async usable(): Promise<string[]> {
    const live = this.io.drives();
    for (const d of [...this.checked]) if (!live.includes(d)) this.checked.delete(d);
    for (const d of [...this.foreign.keys()]) if (!live.includes(d)) this.foreign.delete(d);
    await Promise.all(
      live
        .filter((d) => !this.checked.has(d))
        .map(async (d) => {
          try {
            const a = await withTimeout(this.env, this.io.read(d), this.timings.request_timeout_ms, `META_READ of drive ${d}`);
            const view = viewSlot({ drive_uuid: d, current: { generation: a.generation, payload: a.payload }, other: a.other ?? "unreadable" }, this.who.toma_id);
            this.generations.set(d, Math.max(this.generations.get(d) ?? 0, a.generation));
            if (view.foreign?.cluster_uuid === this.who.cluster_uuid) {
              this.foreign.set(d, view.foreign.toma_id);
              this.env.log.warn("own drive holds another TOMA's hard state of this cluster: not written over (it came from that server)", { drive: d, toma: view.foreign.toma_id });
            }
            this.checked.add(d);
          } catch {
            // Unread: not written this time (its generation is unknown); read again next time.
          }
        }),
    );
    return live.filter((d) => this.checked.has(d) && !this.foreign.has(d));
  }

  /** Drives read since they appeared, and those holding another TOMA's record of this cluster. */
  private readonly checked = new Set<string>();
  private readonly foreign = new Map<string, string>();

  private becomeAmnesic(reason: string): PersistOutcome {
    this.amnesic = reason;
    this.env.log.error("hard state lost: this TOMA is amnesic (its node id must not vote or acknowledge again)", { reason });
    return { ok: false, amnesic: reason };
  }
}
