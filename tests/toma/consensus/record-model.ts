/**
 * A model of one TOMA's hard-state records on its server's drives, to try to break the trust
 * theorem (docs/toma-cluster.md): at every start, the trusted record must be one issued at or after
 * the last record its incarnation relied on. Drives leave and come back in any order, move to
 * another server (whose TOMA overwrites them) and back, slots tear and rot; writes land, fail, land
 * with the acknowledgement lost, or land later within the run; the TOMA crashes at any point. The
 * real codec, trust rule and writer run; only the drives are simulated.
 *
 * Each record's `term` carries its issue number (the model's notion of "which state is newer").
 */
import { Prng } from "../../../sim/prng.ts";
import { votersConfig } from "../../../src/toma/consensus/config.ts";
import { encodeRecord, type HardStateRecord } from "../../../src/toma/consensus/hard-state-record.ts";
import { decideTrust, type SlotRead, viewSlot } from "../../../src/toma/consensus/record-trust.ts";
import { RecordWriter } from "../../../src/toma/consensus/record-writer.ts";

const CLUSTER = "0c0c0c0c-0000-4000-8000-000000000001";
const ME = "s1";

interface Drive {
  uuid: string;
  where: "here" | "away" | "elsewhere";
  gen: number;
  cur: Uint8Array | null;
  /** What the other slot held before it was last overwritten or damaged (for rot). */
  prev: { gen: number; cur: Uint8Array | null } | null;
  other: "older" | "torn" | "unreadable";
}

export interface RecordModelStats {
  starts: number;
  trusted_full: number;
  trusted_split: number;
  amnesic: number;
  resurrected: number;
  writes: number;
  violation: string | null;
}

export function runRecordModel(seed: number, steps = 300, log: (line: string) => void = () => {}): RecordModelStats {
  const rng = new Prng(seed);
  const stats: RecordModelStats = { starts: 0, trusted_full: 0, trusted_split: 0, amnesic: 0, resurrected: 0, writes: 0, violation: null };
  const drives: Drive[] = [];
  const n = rng.int(1, 5);
  for (let i = 0; i < n; i++) {
    drives.push({ uuid: `00000000-0000-4000-8000-${(i + 1).toString(16).padStart(12, "0")}`, where: "here", gen: 0, cur: null, prev: null, other: "older" });
  }
  let issue = 0;
  /** Per incarnation: the highest issue number of a record known complete. */
  const relied = new Map<string, number>();
  let delayed: { drive: Drive; seq: number; bytes: Uint8Array }[] = [];
  let incarnation = "";
  let writer: RecordWriter;
  let foreign_seq = 1;

  const newIncarnation = () => rng.u32().toString(16).padStart(8, "0") + rng.u32().toString(16).padStart(8, "0");

  const land = (d: Drive, seq: number, bytes: Uint8Array): boolean => {
    if (seq <= d.gen) return false; // the target's STALE rule (A1)
    if (d.other === "unreadable") return false; // the target never overwrites an unreadable slot
    d.prev = { gen: d.gen, cur: d.cur };
    d.gen = seq;
    d.cur = bytes;
    d.other = "older";
    return true;
  };

  const record = (plan: { seq: number; drives: string[]; anchor_seq: number }): HardStateRecord => ({
    kind: "nvmesh.toma.hard-state",
    format: 1,
    cluster_uuid: CLUSTER,
    toma_id: ME,
    incarnation,
    seq: plan.seq,
    drives: plan.drives,
    anchor_seq: plan.anchor_seq,
    term: ++issue,
    vote: null,
    commit: 0,
    snapshot: { index: 0, term: 0, config: votersConfig([]), data: new Uint8Array() },
    entries: [],
  });

  const write = (): void => {
    // A drive with an unreadable slot is never written again (the target refuses: overwriting
    // it could hide what it held); the TOMA reports it and leaves it out.
    const live = new Map(drives.filter((d) => d.where === "here" && d.other !== "unreadable").map((d) => [d.uuid, d.gen]));
    const plan = writer.plan(live);
    if (!plan.ok) {
      // W4: amnesic at once, in memory too; a new incarnation starts from nothing.
      stats.amnesic++;
      incarnation = newIncarnation();
      writer = new RecordWriter(null, Math.max(0, ...drives.filter((d) => d.where === "here").map((d) => d.gen)));
      if (live.size > 0) write();
      return;
    }
    stats.writes++;
    const rec = record(plan);
    const bytes = encodeRecord(rec);
    const acked = new Set<string>();
    const outcome: string[] = [];
    for (const uuid of plan.drives) {
      const d = drives.find((x) => x.uuid === uuid)!;
      const p = rng.float();
      if (p < 0.72) {
        if (land(d, plan.seq, bytes)) acked.add(uuid);
        outcome.push(`${short(uuid)}:${acked.has(uuid) ? "ok" : "stale"}`);
      } else if (p < 0.8) {
        land(d, plan.seq, bytes); // landed, acknowledgement lost
        outcome.push(`${short(uuid)}:landed-noack`);
      } else if (p < 0.86) {
        outcome.push(`${short(uuid)}:failed`);
      } else if (p < 0.92) {
        d.prev = null;
        d.other = "torn";
        outcome.push(`${short(uuid)}:torn`);
      } else {
        delayed.push({ drive: d, seq: plan.seq, bytes }); // still queued at the target
        outcome.push(`${short(uuid)}:delayed`);
      }
    }
    const done = writer.completed(plan.seq, acked);
    log(`write issue ${rec.term} seq ${plan.seq} inc ${incarnation.slice(0, 4)} anchor ${plan.anchor_seq} [${outcome.join(" ")}] ${done}`);
    if (done === "complete") relied.set(incarnation, Math.max(relied.get(incarnation) ?? 0, rec.term));
    if (done === "amnesic") {
      stats.amnesic++;
      incarnation = newIncarnation();
      writer = new RecordWriter(null, Math.max(0, ...drives.filter((d) => d.where === "here").map((d) => d.gen)));
    }
  };

  const start = (): void => {
    stats.starts++;
    // A4: a new process starts only once every write of the previous one landed or never will.
    for (const w of delayed) if (rng.chance(0.5)) log(`settle seq ${w.seq} to ${short(w.drive.uuid)}: ${land(w.drive, w.seq, w.bytes) ? "landed" : "stale"}`);
    delayed = [];
    const reads: SlotRead[] = drives
      .filter((d) => d.where === "here")
      .map((d) => ({ drive_uuid: d.uuid, current: { generation: d.gen, payload: d.cur }, other: d.other }));
    const decision = decideTrust(
      reads.map((r) => viewSlot(r, ME)),
      { cluster_uuid: CLUSTER },
    );
    log(`start: ${drives.map((d) => `${short(d.uuid)}@${d.where}:g${d.gen}/${d.other}`).join(" ")} -> ${decision.kind === "trusted" ? `trusted ${decision.how} seq ${decision.record.seq} issue ${decision.record.term}` : `amnesic: ${decision.reason}`}`);
    if (decision.kind === "trusted") {
      const r = decision.record;
      if (decision.how === "full") stats.trusted_full++;
      else stats.trusted_split++;
      if (r.incarnation !== incarnation) stats.resurrected++;
      const need = relied.get(r.incarnation) ?? 0;
      if (r.term < need && stats.violation === null) {
        stats.violation = `seed ${seed}: start ${stats.starts} trusted record seq ${r.seq} (issue ${r.term}, ${decision.how}) of incarnation ${r.incarnation}, but issue ${need} was relied on`;
      }
      incarnation = r.incarnation;
      writer = new RecordWriter({ anchor: decision.anchor, pending: decision.pending }, decision.max_generation);
    } else {
      stats.amnesic++;
      incarnation = newIncarnation();
      writer = new RecordWriter(null, decision.max_generation);
    }
    // W5: the trusted state (or the new incarnation's first) is written before anything is sent.
    if (drives.some((d) => d.where === "here")) write();
  };

  incarnation = newIncarnation();
  writer = new RecordWriter(null, 0);
  write();
  for (let step = 0; step < steps && stats.violation === null; step++) {
    const p = rng.float();
    const here = drives.filter((d) => d.where === "here");
    const away = drives.filter((d) => d.where !== "here");
    if (p < 0.4) write();
    else if (p < 0.5 && here.length > 0) {
      const d = rng.pick(here);
      d.where = "away";
      log(`unplug ${short(d.uuid)}`);
    } else if (p < 0.6 && away.length > 0) {
      const d = rng.pick(away);
      d.where = "here";
      log(`plug ${short(d.uuid)} (g${d.gen})`);
    }
    else if (p < 0.65 && away.length > 0) {
      // Plugged into another server, whose TOMA writes its own record over ours.
      const d = rng.pick(away);
      d.where = "elsewhere";
      foreign_seq = Math.max(foreign_seq, d.gen) + rng.int(1, 20);
      const foreign = encodeRecord({
        ...record({ seq: foreign_seq, drives: [d.uuid], anchor_seq: 0 }),
        toma_id: "s2",
      });
      land(d, foreign_seq, foreign);
      log(`move ${short(d.uuid)} to another server, overwritten at g${foreign_seq}`);
    } else if (p < 0.7 && delayed.length > 0) {
      const i = rng.int(0, delayed.length);
      const w = delayed[i]!;
      delayed.splice(i, 1);
      log(`delayed seq ${w.seq} to ${short(w.drive.uuid)}: ${land(w.drive, w.seq, w.bytes) ? "landed" : "stale"}`);
    } else if (p < 0.71 && drives.some((d) => d.other === "unreadable")) {
      // An operator repairs a drive with an unreadable slot: both slots rewritten empty. The
      // records it held are gone, as if another server had overwritten it.
      const d = rng.pick(drives.filter((x) => x.other === "unreadable"));
      d.gen += 1;
      d.cur = null;
      d.prev = null;
      d.other = "older";
      log(`repair ${short(d.uuid)}: blank at g${d.gen}`);
    } else if (p < 0.713 && drives.length > 0) {
      const d = rng.pick(drives);
      if (rng.chance(0.5) && d.prev) {
        // The current slot became unreadable: the drive now shows the older slot, whose own
        // predecessor was overwritten long ago.
        d.gen = d.prev.gen;
        d.cur = d.prev.cur;
      }
      // Either way one slot is unreadable now, and what it held is gone.
      d.prev = null;
      d.other = "unreadable";
      log(`rot ${short(d.uuid)}: now g${d.gen}, other unreadable`);
    } else if (p < 0.8) {
      start();
    }
  }
  if (stats.violation === null) start();
  return stats;
}

function short(uuid: string): string {
  return `d${parseInt(uuid.slice(-4), 16)}`;
}
