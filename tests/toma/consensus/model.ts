/**
 * A randomized model of a TOMA cluster's consensus: the real Raft core on every server, persisted
 * through the real record writer and trust rule onto simulated drives, under a simulated network.
 * One seed is one run, and replays exactly.
 *
 * Faults (chaos phase): messages dropped, duplicated and reordered; links cut one way; partitions
 * of every shape; TOMAs crashing and restarting from what their drives hold; drives unplugged and
 * plugged into another server (whose TOMA overwrites them), writes failing, tearing or landing
 * with the acknowledgement lost (so TOMAs become amnesic and rejoin under a new incarnation, through
 * the membership policy); each TOMA's ticks at its own speed.
 *
 * Checked all along: at most one leader per term; no two TOMAs apply different entries at one
 * index (and a snapshot installs exactly the state at its index); logs that agree on an entry's term
 * agree on it; every entry committed in a term is in the log of every leader of a later term; a
 * leader that heard no response from a majority for two election timeouts of its ticks is no longer
 * leader. Then, with faults healed: a leader within a bound and a proposal applied by every live
 * member; then one link cut one way, and no leader change and no term change for a long while.
 */
import { Prng } from "../../../sim/prng.ts";
import { voterIds, votersConfig } from "../../../src/toma/consensus/config.ts";
import { durableOf, type HardStateRecord } from "../../../src/toma/consensus/hard-state-record.ts";
import { nextMembershipChange, nodeId, tomaIdOf } from "../../../src/toma/consensus/membership.ts";
import { blankDurableState, bootstrapDurableState, Raft, type Ready } from "../../../src/toma/consensus/raft.ts";
import { decideTrust, type SlotView } from "../../../src/toma/consensus/record-trust.ts";
import { RecordWriter } from "../../../src/toma/consensus/record-writer.ts";
import { majority } from "../../../src/toma/cluster-state.ts";
import type { DurableState, Entry, Message, NodeId } from "../../../src/toma/consensus/types.ts";

const CLUSTER = "0c0c0c0c-0000-4000-8000-000000000002";
const ELECTION = 10;
const HEARTBEAT = 2;

export interface ModelOptions {
  servers?: number;
  chaos_steps?: number;
  /** Scale of the fault probabilities (1 = default mix; 0 = no faults). */
  faults?: number;
  log?: (line: string) => void;
}

export interface ModelResult {
  seed: number;
  violation: string | null;
  /** The liveness phases were run (false when faults cost the cluster a majority of its voters for good). */
  liveness_checked: boolean;
  stats: Record<string, number>;
}

interface Drive {
  uuid: string;
  home: number;
  at: number | null;
  gen: number;
  cur: { record: HardStateRecord; bytes: Uint8Array } | { foreign: true } | null;
}

interface Proc {
  server: number;
  id: NodeId;
  raft: Raft;
  writer: RecordWriter;
  incarnation: string;
  app: { index: number; hash: number };
  /** Ticks per step (its clock's speed against the others'), and the fraction carried over. */
  rate: number;
  acc: number;
  ticks: number;
  became_leader_tick: number;
  was_leader_term: number;
  /** Leader's tick count when it last received a response (app_resp/heartbeat_resp) from each node. */
  last_resp: Map<NodeId, number>;
}

class Violation extends Error {}

function fnv(h: number, s: string): number {
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193) >>> 0;
  return h;
}

const dec = new TextDecoder();
const enc = new TextEncoder();

/** Entries travel by reference between simulated TOMAs, so their keys can be kept. */
const keys = new WeakMap<Entry, string>();

function entryKey(e: Entry): string {
  let k = keys.get(e);
  if (k === undefined) {
    k = e.kind === "normal" ? `${e.term}:n:${dec.decode(e.data)}` : `${e.term}:c:${e.change.op}:${e.change.node}`;
    keys.set(e, k);
  }
  return k;
}

/** Servers are s0..s9: the digit after the "s" of a node id. */
function serverOf(id: NodeId): number {
  return id.charCodeAt(1) - 48;
}

export function runModel(seed: number, options: ModelOptions = {}): ModelResult {
  const w = new ModelWorld(seed, options);
  try {
    w.run();
  } catch (e) {
    if (!(e instanceof Violation)) {
      return { seed, violation: `seed ${seed}: ${(e as Error).stack ?? e}`, liveness_checked: false, stats: w.stats };
    }
    return { seed, violation: `seed ${seed}: ${(e as Error).message}`, liveness_checked: w.liveness_checked, stats: w.stats };
  }
  return { seed, violation: null, liveness_checked: w.liveness_checked, stats: w.stats };
}

class ModelWorld {
  readonly rng: Prng;
  readonly n: number;
  readonly chaos_steps: number;
  fault: number;
  readonly log: (line: string) => void;
  /** The cores' own trace lines go to the log too (only when there is one: they cost time). */
  readonly tracing: boolean;
  readonly stats: Record<string, number> = {};
  liveness_checked = false;

  step_no = 0;
  procs: (Proc | null)[] = [];
  drives: Drive[] = [];
  inflight: { m: Message; at: number }[] = [];
  /** Links cut, as from * 16 + to (server numbers). */
  cuts = new Set<number>();
  drop_p = 0;
  dup_p = 0;
  token = 0;
  proposal = 0;
  /** One entry per append in half of the runs: acknowledgements then come entry by entry. */
  max_entries: number;

  /** Checker state. */
  leaders = new Map<number, NodeId>();
  applied = new Map<number, { key: string; hash: number }>();
  /** Index → the term in which a leader first committed it, and the entry it committed there. */
  first_commit = new Map<number, { term: number; key: string }>();
  leader_changes = 0;

  constructor(
    readonly seed: number,
    o: ModelOptions,
  ) {
    this.rng = new Prng(seed);
    this.n = o.servers ?? (this.rng.chance(0.5) ? 3 : 5);
    this.chaos_steps = o.chaos_steps ?? 400;
    this.fault = o.faults ?? 1;
    this.log = o.log ?? (() => {});
    this.tracing = o.log !== undefined;
    this.max_entries = this.rng.chance(0.5) ? 1 : 64;
  }

  count(k: string, by = 1): void {
    this.stats[k] = (this.stats[k] ?? 0) + by;
  }

  fail(why: string): never {
    throw new Violation(`step ${this.step_no}: ${why}`);
  }

  // ---- set-up -----------------------------------------------------------------------------------

  run(): void {
    for (let s = 0; s < this.n; s++) {
      const k = this.rng.int(1, 4);
      for (let i = 0; i < k; i++) {
        this.drives.push({ uuid: `00000000-0000-4000-8000-${(s * 16 + i + 1).toString(16).padStart(12, "0")}`, home: s, at: s, gen: 0, cur: null });
      }
    }
    // Bootstrap: every founder starts from the same snapshot (bootstrap.ts decided), written first.
    const incs = Array.from({ length: this.n }, () => this.newIncarnation());
    const config = votersConfig(incs.map((inc, s) => nodeId(`s${s}`, inc)));
    const start = bootstrapDurableState(config, this.snapshotData(1, 0));
    for (let s = 0; s < this.n; s++) this.startProc(s, incs[s]!, start, null);

    for (this.step_no = 0; this.step_no < this.chaos_steps; this.step_no++) {
      this.drop_p = 0.05 * this.fault;
      this.dup_p = 0.03 * this.fault;
      this.faults();
      this.step(0.4);
      if (this.step_no % 25 === 0) this.checkLogs();
    }
    this.heal();
  }

  newIncarnation(): string {
    return this.rng.u32().toString(16).padStart(8, "0") + this.rng.u32().toString(16).padStart(8, "0");
  }

  snapshotData(index: number, hash: number): Uint8Array {
    return enc.encode(`${index}:${hash}`);
  }

  // ---- processes ----------------------------------------------------------------------------------

  private raftFor(id: NodeId, start: DurableState): Raft {
    return new Raft(
      {
        id,
        election_ticks: ELECTION,
        heartbeat_ticks: HEARTBEAT,
        random: (n) => this.rng.int(0, n),
        max_entries_per_msg: this.max_entries,
        // Half the runs (those sending one entry per append) send snapshots in 4-byte chunks, so
        // that a snapshot transfer takes several messages, each of which may be lost, duplicated
        // or reordered. Derived from an existing draw: a new one would shift every run's faults.
        ...(this.max_entries === 1 ? { max_snapshot_chunk_bytes: 4 } : {}),
        ...(this.tracing ? { trace: (line: string) => this.log(`  ${id}: ${line}`) } : {}),
      },
      start,
    );
  }

  /** Starts a TOMA: W5 (write the start state first), then the core. Returns false if it could not. */
  private startProc(server: number, incarnation: string, start: DurableState, writer: RecordWriter | null): boolean {
    const id = nodeId(`s${server}`, incarnation);
    const w = writer ?? new RecordWriter(null, this.maxGen(server));
    const p: Proc = {
      server,
      id,
      raft: null as unknown as Raft,
      writer: w,
      incarnation,
      app: { index: 0, hash: 0 },
      rate: 0.5 + 0.5 * this.rng.float(),
      acc: this.rng.float(),
      ticks: 0,
      became_leader_tick: 0,
      was_leader_term: -1,
      last_resp: new Map(),
    };
    this.procs[server] = null;
    if (!this.persist(p, start)) {
      this.log(`s${server}: cannot write its start record; stays down`);
      return false;
    }
    p.raft = this.raftFor(id, start);
    this.procs[server] = p;
    this.log(`s${server}: started as ${id} at term ${start.term}`);
    this.handle(p);
    return true;
  }

  private maxGen(server: number): number {
    return Math.max(0, ...this.drives.filter((d) => d.at === server).map((d) => d.gen));
  }

  /**
   * Writes the durable state through the record writer. False: the TOMA became amnesic, or it
   * crashed in the middle of the write (then it is no longer in `procs`).
   */
  private persist(p: Proc, state: DurableState): boolean {
    for (let attempt = 0; attempt < 6; attempt++) {
      const live = new Map(this.drives.filter((d) => d.at === p.server).map((d) => [d.uuid, d.gen]));
      const plan = p.writer.plan(live);
      if (!plan.ok) {
        this.log(`s${p.server}: ${p.id} amnesic: ${plan.reason}`);
        this.count("amnesia_while_running");
        return false;
      }
      const record: HardStateRecord = {
        kind: "nvmesh.toma.hard-state",
        format: 1,
        cluster_uuid: CLUSTER,
        toma_id: `s${p.server}`,
        incarnation: p.incarnation,
        seq: plan.seq,
        drives: plan.drives,
        anchor_seq: plan.anchor_seq,
        ...state,
      };
      const bytes = new Uint8Array(8);
      new DataView(bytes.buffer).setFloat64(0, ++this.token);
      const acked = new Set<string>();
      // A crash in the middle of the write: some drives got it, the others did not.
      const crash_after = this.rng.chance(0.004 * this.fault) ? this.rng.int(0, plan.drives.length) : -1;
      for (const uuid of plan.drives) {
        if (acked.size === crash_after) {
          this.crash(p.server);
          this.count("crash_mid_write");
          return false;
        }
        const d = this.drives.find((x) => x.uuid === uuid)!;
        const r = this.rng.float();
        const bad = 0.04 * this.fault;
        if (r < bad) continue; // failed or torn: not landed
        if (plan.seq <= d.gen) continue; // STALE
        d.gen = plan.seq;
        d.cur = { record, bytes };
        if (r < bad * 1.5) continue; // landed, acknowledgement lost
        acked.add(uuid);
      }
      const outcome = p.writer.completed(plan.seq, acked);
      if (outcome === "complete") return true;
      if (outcome === "amnesic") {
        this.log(`s${p.server}: ${p.id} amnesic: its start record did not reach every drive of the trusted one`);
        this.count("amnesia_at_start_write");
        return false;
      }
      this.count("incomplete_writes");
      // The runtime gives up on a drive that keeps failing: it is treated as gone from the server.
      if (attempt >= 3) {
        const failed = plan.drives.filter((u) => !acked.has(u));
        const gone = this.rng.pick(failed);
        const d = this.drives.find((x) => x.uuid === gone)!;
        d.at = null;
        this.log(`s${p.server}: drive ${d.uuid.slice(-2)} keeps failing; dropped`);
      }
    }
    this.log(`s${p.server}: persist kept failing; the TOMA stops`);
    return false;
  }

  /** Amnesia: the process forgets everything and starts as a new incarnation, if it has drives. */
  private amnesia(p: Proc): void {
    this.procs[p.server] = null;
    this.count("amnesia");
    if (this.drives.some((d) => d.at === p.server)) this.startProc(p.server, this.newIncarnation(), blankDurableState(), null);
  }

  private crash(server: number): void {
    this.procs[server] = null;
    this.count("crashes");
    this.log(`s${server}: crash`);
  }

  private restart(server: number): void {
    const views: SlotView[] = this.drives
      .filter((d) => d.at === server)
      .map((d) => ({
        drive_uuid: d.uuid,
        generation: d.gen,
        own: d.cur && "record" in d.cur && d.cur.record.toma_id === `s${server}` ? d.cur : null,
        clean: true,
        note: null,
        corrupt: false,
      }));
    if (views.length === 0) return;
    const decision = decideTrust(views, { cluster_uuid: CLUSTER });
    this.count("restarts");
    if (decision.kind === "trusted") {
      this.count(`trusted_${decision.how}`);
      const r = decision.record;
      this.startProc(server, r.incarnation, durableOf(r), new RecordWriter({ anchor: decision.anchor, pending: decision.pending }, decision.max_generation));
    } else {
      this.count("amnesic_at_start");
      this.log(`s${server}: amnesic at start: ${decision.reason}`);
      this.startProc(server, this.newIncarnation(), blankDurableState(), null);
    }
  }

  // ---- one step -------------------------------------------------------------------------------------

  /**
   * One step: every running TOMA's clock advances by its rate (a regular timer, at its own speed),
   * then each message in flight arrives with probability `p_arrive` (so delays are unbounded and
   * order is lost), or, with p_arrive = 1, all of them in random order (a network that delivers
   * within a step: what the liveness phases need).
   */
  private step(p_arrive: number): void {
    for (const p of this.procs) {
      if (!p) continue;
      p.acc += p.rate;
      if (p.acc < 1) continue;
      p.acc -= 1;
      p.ticks++;
      p.raft.tick();
      this.handle(p);
    }
    const batch = this.inflight;
    this.inflight = [];
    this.rng.shuffle(batch);
    for (const x of batch) {
      if (p_arrive >= 1 || this.rng.chance(p_arrive)) this.deliver(x.m);
      else this.inflight.push(x);
    }
  }

  private deliver(m: Message): void {
    if (this.rng.chance(this.drop_p)) return this.count("dropped");
    if (this.rng.chance(this.dup_p)) this.inflight.push({ m, at: this.step_no });
    if (this.cuts.has(serverOf(m.from) * 16 + serverOf(m.to))) return;
    const p = this.procs[serverOf(m.to)];
    if (!p || p.id !== m.to) return;
    if (m.type === "snap") this.count(m.offset + m.data.length === m.total ? "snapshot_last_chunks" : "snapshot_chunks");
    if (m.type === "app_resp" || m.type === "heartbeat_resp") {
      const b = p.raft.basics();
      if (b.role === "leader" && m.term === b.term) p.last_resp.set(m.from, p.ticks);
    }
    p.raft.step(m);
    this.handle(p);
  }

  /** The runtime loop's body: persist, then send, then apply, then advance. */
  private handle(p: Proc): void {
    while (this.procs[p.server] === p && p.raft.hasReady()) {
      const rd: Ready = p.raft.ready();
      if (rd.persist && !this.persist(p, rd.persist)) {
        if (this.procs[p.server] === p) this.amnesia(p);
        return;
      }
      for (const m of rd.messages) this.inflight.push({ m, at: this.step_no });
      if (rd.messages.length > 0 && this.rng.chance(0.01 * this.fault)) {
        // A crash right after sending: harmless when what was sent had been persisted first.
        this.crash(p.server);
        this.count("crash_after_send");
        return;
      }
      this.checkLeader(p, rd);
      if (rd.snapshot) this.install(p, rd.snapshot.index, rd.snapshot.data);
      for (const e of rd.committed) this.apply(p, e);
      p.raft.advance(rd);
      this.checkCommit(p);
      if (p.app.index - p.raft.snapshot().index > 20) p.raft.compact(p.app.index, this.snapshotData(p.app.index, p.app.hash));
    }
  }

  // ---- checks ---------------------------------------------------------------------------------------

  private checkLeader(p: Proc, rd: Ready): void {
    if (rd.role !== "leader") return;
    const other = this.leaders.get(rd.term);
    if (other !== undefined && other !== p.id) this.fail(`two leaders in term ${rd.term}: ${other} and ${p.id}`);
    if (other === undefined) {
      this.leaders.set(rd.term, p.id);
      this.leader_changes++;
      this.count("elections");
      p.became_leader_tick = p.ticks;
      p.last_resp = new Map();
      this.log(`${p.id} leads term ${rd.term}`);
      this.checkCompleteness(p, rd.term);
    }
  }

  /** Leader completeness: every entry committed in an earlier term is in the new leader's log. */
  private checkCompleteness(p: Proc, term: number): void {
    const snap = p.raft.snapshot();
    const entries = p.raft.entries();
    for (const [index, c] of this.first_commit) {
      if (c.term >= term) continue;
      if (index <= snap.index) continue; // in its snapshot, which was checked when installed or taken
      const e = entries[index - snap.index - 1];
      if (!e || entryKey(e) !== c.key) {
        this.fail(`leader ${p.id} of term ${term} lacks entry ${index} (${c.key}) committed in term ${c.term}; it holds ${e ? entryKey(e) : "nothing"} there`);
      }
    }
  }

  private checkCommit(p: Proc): void {
    const s = p.raft.basics();
    if (s.role !== "leader") return;
    const snap = p.raft.snapshot().index;
    const entries = p.raft.entries();
    for (let i = s.commit; i > snap && !this.first_commit.has(i); i--) {
      const key = entryKey(entries[i - snap - 1]!);
      const applied = this.applied.get(i);
      if (applied && applied.key !== key) this.fail(`${p.id} committed '${key}' at ${i}, where '${applied.key}' was applied`);
      this.first_commit.set(i, { term: s.term, key });
    }
    // CheckQuorum: no leader goes on for two election timeouts without a majority answering.
    const voters = voterIds(p.raft.config());
    const window = 2 * ELECTION + 2;
    if (p.ticks - p.became_leader_tick <= window) return;
    const heard = voters.filter((v) => v === p.id || p.ticks - (p.last_resp.get(v) ?? -Infinity) <= window).length;
    if (heard < majority(voters.length)) {
      this.fail(`${p.id} still leads term ${s.term} after ${window} ticks without a majority answering (${heard}/${voters.length})`);
    }
  }

  private install(p: Proc, index: number, data: Uint8Array): void {
    const [i, h] = dec.decode(data).split(":").map(Number) as [number, number];
    if (i !== index) this.fail(`${p.id}: snapshot at ${index} holds a state of index ${i}`);
    if (index > 1) {
      const known = this.applied.get(index);
      if (!known) this.fail(`${p.id}: snapshot at ${index}, an index nobody applied`);
      if (known.hash !== h) this.fail(`${p.id}: snapshot at ${index} differs from the applied state there`);
    }
    p.app = { index, hash: h };
  }

  private apply(p: Proc, e: Entry): void {
    if (e.index !== p.app.index + 1) this.fail(`${p.id} applies ${e.index} after ${p.app.index}`);
    const key = entryKey(e);
    const hash = fnv(p.app.hash, `${e.index}|${key}`);
    const known = this.applied.get(e.index);
    if (known && known.key !== key) this.fail(`${p.id} applies '${key}' at ${e.index}, another TOMA applied '${known.key}'`);
    if (known && known.hash !== hash) this.fail(`${p.id}: state after ${e.index} differs from another TOMA's`);
    if (!known) this.applied.set(e.index, { key, hash });
    p.app = { index: e.index, hash };
  }

  /** Log matching across every pair of running TOMAs. */
  private checkLogs(): void {
    const live = this.procs.filter((p): p is Proc => p !== null);
    for (let a = 0; a < live.length; a++) {
      for (let b = a + 1; b < live.length; b++) {
        const x = live[a]!.raft;
        const y = live[b]!.raft;
        const ex = new Map(x.entries().map((e) => [e.index, e]));
        for (const e of y.entries()) {
          const f = ex.get(e.index);
          if (f && f.term === e.term && entryKey(f) !== entryKey(e)) this.fail(`${x.id} and ${y.id} hold different entries ${e.term}/${e.index}`);
        }
      }
    }
  }

  describe(): string {
    return this.procs
      .map((p, i) => {
        if (!p) return `s${i}: down (drives ${this.drives.filter((d) => d.at === i).length})`;
        const st = p.raft.status();
        return `${p.id}: ${st.role} term=${st.term} lead=${st.lead} commit=${st.commit} applied=${st.applied} last=${st.last_term}/${st.last_index} voters=${voterIds(st.config).join(",")} progress=${JSON.stringify(st.progress)}`;
      })
      .join("\n");
  }

  // ---- faults -----------------------------------------------------------------------------------------

  private faults(): void {
    const f = this.fault;
    const r = this.rng;
    const servers = Array.from({ length: this.n }, (_, s) => s);
    if (r.chance(0.012 * f)) {
      const up = servers.filter((s) => this.procs[s]);
      if (up.length > 0) this.crash(r.pick(up));
    }
    if (r.chance(0.05)) {
      const down = servers.filter((s) => !this.procs[s]);
      if (down.length > 0) this.restart(r.pick(down));
    }
    if (r.chance(0.006 * f)) {
      const plugged = this.drives.filter((d) => d.at !== null);
      if (plugged.length > 0) {
        const d = r.pick(plugged);
        const was = d.at!;
        d.at = null;
        this.log(`drive ${d.uuid.slice(-2)} unplugged from s${was}`);
        const p = this.procs[was];
        if (p) this.driveSetChanged(p);
      }
    }
    if (r.chance(0.02)) {
      const loose = this.drives.filter((d) => d.at === null);
      if (loose.length > 0) this.plug(r.pick(loose), r.chance(0.8 * f > 0 ? 0.8 : 1) ? r.pick(loose).home : r.int(0, this.n));
    }
    if (r.chance(0.015 * f)) this.reshapeNetwork();
    if (r.chance(0.01)) {
      this.cuts.clear();
      this.log("network healed");
    }
    if (r.chance(0.15)) this.propose();
    if (r.chance(0.05)) this.membership();
  }

  private plug(d: Drive, server: number): void {
    d.at = server;
    this.log(`drive ${d.uuid.slice(-2)} plugged into s${server}`);
    const p = this.procs[server];
    if (p) this.driveSetChanged(p);
  }

  /** The runtime rewrites its record whenever its live drive set differs from the anchor's. */
  private driveSetChanged(p: Proc): void {
    const live = this.drives.filter((d) => d.at === p.server).map((d) => d.uuid).sort();
    const anchor = p.writer.anchorDrives();
    if (anchor && anchor.join() === live.join()) return;
    const s = p.raft.status();
    const state: DurableState = { term: s.term, vote: s.vote, commit: s.commit, snapshot: p.raft.snapshot(), entries: [...p.raft.entries()] };
    if (!this.persist(p, state) && this.procs[p.server] === p) this.amnesia(p);
  }

  private reshapeNetwork(): void {
    const r = this.rng;
    this.cuts.clear();
    const kind = r.int(0, 3);
    if (kind === 0) {
      // A partition into groups, both ways.
      const groups = r.int(2, 4);
      const of = Array.from({ length: this.n }, () => r.int(0, groups));
      for (let a = 0; a < this.n; a++) for (let b = 0; b < this.n; b++) if (of[a] !== of[b]) this.cuts.add(a * 16 + b);
      this.log(`partition ${of.join("")}`);
    } else {
      // Links cut one way (kind 1: one; kind 2: several).
      const k = kind === 1 ? 1 : r.int(2, this.n + 1);
      for (let i = 0; i < k; i++) {
        const a = r.int(0, this.n);
        const b = (a + r.int(1, this.n)) % this.n;
        this.cuts.add(a * 16 + b);
      }
      this.log(`one-way cuts ${[...this.cuts].map((c) => `s${c >> 4}->s${c & 15}`).join(" ")}`);
    }
  }

  private propose(): void {
    for (const p of this.procs) {
      if (!p || p.raft.basics().role !== "leader") continue;
      const r = p.raft.propose(enc.encode(`p${++this.proposal}`));
      if (r.ok) this.handle(p);
    }
  }

  /** The leader's membership policy, with every running TOMA announcing its identity. */
  private membership(): void {
    for (const p of this.procs) {
      if (!p || !p.raft.leaderReady()) continue;
      const s = p.raft.basics();
      const announced = this.procs
        .filter((x): x is Proc => x !== null)
        .map((x) => ({ toma_id: `s${x.server}`, incarnation: x.incarnation, address: "", has_drives: this.drives.some((d) => d.at === x.server) }));
      const change = nextMembershipChange({ config: p.raft.config(), announced, remove: [], match: (id) => p.raft.matchOf(id), commit: s.commit });
      if (!change) continue;
      const r = p.raft.proposeConfChange(change);
      if (r.ok) {
        this.count("conf_changes");
        this.count(`conf_${change.op}`);
        this.log(`${p.id} proposes ${change.op} ${change.node}`);
        this.handle(p);
      }
    }
  }

  // ---- heal and liveness ----------------------------------------------------------------------------

  private heal(): void {
    this.fault = 0;
    this.cuts.clear();
    this.drop_p = 0;
    this.dup_p = 0;
    for (const d of this.drives) if (d.at === null) this.plug(d, d.home);
    for (let s = 0; s < this.n; s++) if (!this.procs[s]) this.restart(s);
    this.log("--- healed ---");
    // Liveness needs a majority of the voters to be running as their current node ids. Faults may
    // have cost more (a majority of servers amnesic before they were replaced): then the cluster
    // needs an operator, as it would after losing a majority of servers; not a bug to report.
    const ids = new Set(this.procs.filter((p) => p).map((p) => p!.id));
    const configs = this.procs.filter((p) => p).map((p) => p!.raft.config());
    const viable = configs.some((c) => voterIds(c).filter((v) => ids.has(v)).length >= majority(voterIds(c).length));
    if (!viable) {
      this.count("lost_majority");
      return;
    }
    this.liveness_checked = true;
    // 1. A leader within 30 election timeouts (of the slowest clock), and a proposal applied by
    //    every running member, with the membership policy replacing amnesic TOMAs meanwhile.
    const limit = 30 * ELECTION * 2;
    // The probe goes to whichever TOMA is a ready leader; if leadership moves before it is
    // applied (a stale leader may still believe it leads at the heal), a new probe goes to the new one.
    let probe: { data: string; to: NodeId; term: number } | null = null;
    let done = false;
    for (let i = 0; i < limit && !done; i++, this.step_no++) {
      this.step(1);
      if (i % 5 === 0) this.membership();
      const leader = this.procs.find((p) => p?.raft.leaderReady());
      if (!leader) continue;
      const term = leader.raft.basics().term;
      if (probe === null || probe.to !== leader.id || probe.term !== term) {
        const data = `probe${this.seed}.${i}`;
        if (leader.raft.propose(enc.encode(data)).ok) {
          probe = { data, to: leader.id, term };
          this.handle(leader);
        }
        continue;
      }
      const want = this.procs.filter((p) => p && leader.raft.config().members.some((m) => m.id === p.id));
      const idx = [...this.applied].find(([, v]) => v.key.endsWith(`:n:${probe!.data}`))?.[0];
      done = idx !== undefined && want.every((p) => p!.app.index >= idx);
    }
    if (!done) this.fail(`no leader with the proposal applied everywhere ${limit} steps after the heal:\n${this.describe()}`);
    // Let membership settle (amnesic TOMAs promoted), with heartbeats flowing.
    for (let i = 0; i < 100; i++, this.step_no++) {
      this.step(1);
      if (i % 5 === 0) this.membership();
    }
    this.checkLogs();
    // 2. One link cut one way: the leader stays, and no term grows.
    const leader = this.procs.find((p) => p?.raft.basics().role === "leader");
    if (!leader) this.fail("no leader after the settling phase");
    const voters = voterIds(leader.raft.config());
    const running = voters.filter((v) => this.procs.some((p) => p?.id === v));
    if (running.length < voters.length || voters.length < 3) {
      this.count("no_cut_phase");
      return;
    }
    const a = this.rng.pick(running);
    const b = this.rng.pick(running.filter((x) => x !== a));
    this.cuts.add(serverOf(a) * 16 + serverOf(b));
    this.log(`--- one-way cut ${tomaIdOf(a)}->${tomaIdOf(b)} ---`);
    const term = leader.raft.basics().term;
    const changes = this.leader_changes;
    for (let i = 0; i < 30 * ELECTION; i++, this.step_no++) this.step(1);
    const now = this.procs.find((p) => p?.raft.basics().role === "leader");
    const max_term = Math.max(...this.procs.filter((p) => p).map((p) => p!.raft.basics().term));
    if (this.leader_changes !== changes || now !== leader || max_term !== term) {
      this.fail(`a one-way cut ${tomaIdOf(a)}->${tomaIdOf(b)} disturbed the leader ${leader.id} (term ${term} → ${max_term}, ${this.leader_changes - changes} election(s))`);
    }
    this.count("cut_phase_passed");
  }
}
