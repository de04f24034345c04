/**
 * The Raft state machine of one TOMA, in the shape of etcd's raft: no I/O, no timers, no clock,
 * no randomness of its own. Inputs: tick(), step(msg), propose(), proposeConfChange(),
 * readIndex(), compact(), campaign(). Output: a Ready batch (the durable state to persist, then
 * the messages to send, then what to apply), acknowledged with advance(). Between ready() and
 * advance() the node must not be called: the runtime queues messages and ticks meanwhile, so the
 * state a Ready persists is exactly the state its messages depend on.
 *
 * PreVote and CheckQuorum are always on. Configuration changes are single-server, effective on
 * append. The safety argument, step by step, is in docs/toma-cluster.md ("Safety argument").
 */
import { assert } from "../../engine/assert.ts";
import { plantedBugs } from "../../engine/planted-bugs.ts";
import { applyChange, changeProblem, configAt, describeChange, describeConfig, isVoter, member, memberIds, voterIds } from "./config.ts";
import { Progress } from "./progress.ts";
import { quorumValue, voteResult } from "./quorum.ts";
import { ProtocolViolation, RaftLog } from "./raft-log.ts";
import { ReadQueue } from "./read-index.ts";
import {
  type ConfChange,
  type Config,
  type DurableState,
  type Entry,
  MAX_APPEND_DATA_BYTES,
  MAX_ENTRIES_PER_MSG,
  MAX_SNAPSHOT_CHUNK_BYTES,
  type Message,
  type NodeId,
  type ReadState,
  type Snapshot,
} from "./types.ts";

export type Role = "follower" | "pre_candidate" | "candidate" | "leader";

export interface RaftOptions {
  id: NodeId;
  /** Ticks without hearing a leader before a voter starts a pre-vote (plus a random 0..this). */
  election_ticks: number;
  /** Ticks between a leader's heartbeats; less than election_ticks. */
  heartbeat_ticks: number;
  /** A uniform integer in [0, n): the injected source of the election jitter. */
  random: (n: number) => number;
  max_entries_per_msg?: number;
  /** Snapshot bytes per chunk (transcripts send small ones to exercise the transfer). */
  max_snapshot_chunk_bytes?: number;
  /** Unanswered appends per follower while replicating. */
  max_inflight?: number;
  /** Proposals refused while this many entries are uncommitted (the leader's backpressure). */
  max_uncommitted?: number;
  /** Receives one line per notable event (elections, refusals, protocol violations). */
  trace?: (line: string) => void;
}

export interface Ready {
  role: Role;
  term: number;
  lead: NodeId | null;
  /** Write this to stable storage, durably, before anything below leaves (null: nothing changed). */
  persist: DurableState | null;
  messages: Message[];
  /** Install this state before applying `committed` (received from the leader, or the start state). */
  snapshot: Snapshot | null;
  /** Committed entries to apply, in order. */
  committed: Entry[];
  read_states: ReadState[];
}

export type Refusal = { ok: false; reason: string; lead: NodeId | null };
export type Proposed = { ok: true; index: number; term: number } | Refusal;

export interface Status {
  id: NodeId;
  /**
   * A follower reports "learner" when it is a non-voting member of its configuration, and
   * "outside" when it is not a member at all (a new or amnesic TOMA not yet added, or one removed).
   */
  role: Role | "learner" | "outside";
  term: number;
  vote: NodeId | null;
  lead: NodeId | null;
  commit: number;
  applied: number;
  last_index: number;
  last_term: number;
  snapshot_index: number;
  config: Config;
  /** Leader only: each member's match index and replication state. */
  progress: Record<NodeId, { match: number; next: number; state: string }>;
}

/** The durable state of a node that has never been in any cluster: an amnesic or new TOMA. */
export function blankDurableState(): DurableState {
  return { term: 0, vote: null, commit: 0, snapshot: { index: 0, term: 0, config: { members: [] }, data: new Uint8Array() }, entries: [] };
}

/**
 * The durable state every founding member of a new cluster starts from (bootstrap.ts decides
 * when): the first configuration and the initial application state as a snapshot at index 1,
 * term 1, so that a blank node (index 0) can never match a founder's log and always gets a
 * snapshot (with the configuration) first. A cluster taking over a single-TOMA state starts
 * higher (`at`): above the versions the targets have already seen (single-toma-state.ts).
 */
export function bootstrapDurableState(config: Config, data: Uint8Array, at: { index: number; term: number } = { index: 1, term: 1 }): DurableState {
  assert(at.index >= 1 && at.term >= 1, "a founding snapshot is at index and term 1 or above");
  return { term: at.term, vote: null, commit: at.index, snapshot: { index: at.index, term: at.term, config, data }, entries: [] };
}

const noop = (): void => {};

export class Raft {
  readonly id: NodeId;
  private readonly opts: Required<Omit<RaftOptions, "trace">>;
  private readonly trace: (line: string) => void;

  private role: Role = "follower";
  private term = 0;
  private vote: NodeId | null = null;
  private lead: NodeId | null = null;
  private readonly log: RaftLog;

  private election_elapsed = 0;
  private heartbeat_elapsed = 0;
  private randomized_timeout = 0;
  private votes = new Map<NodeId, boolean>();
  private prs = new Map<NodeId, Progress>();
  /** Leader: index of the last conf entry appended; no other change until it is committed. */
  private pending_conf_index = 0;

  /** Leader: reads waiting for a majority to confirm a round of heartbeats (readIndex). */
  private readonly reads = new ReadQueue();
  private read_states: ReadState[] = [];

  private msgs: Message[] = [];
  /** Term, vote, log or snapshot changed since the last persist handed out. */
  private durable_dirty = false;
  private snapshot_to_install: Snapshot | null = null;
  /**
   * Follower: the snapshot being received, chunk by chunk, from `from` leading `term`; at most one
   * (a new one replaces it), at most MAX_DATA_BYTES, never persisted: a restart starts it over.
   */
  private incoming: { from: NodeId; term: number; meta: string; index: number; data: Uint8Array; have: number } | null = null;
  private config_cache: Config | null = null;
  private ready_out: { last_index: number; applied_to: number; persisted: boolean } | null = null;
  /** Planted bug raft_send_before_persist: the durable state handed out one Ready late. */
  private held_back: DurableState | null = null;

  constructor(options: RaftOptions, start: DurableState) {
    this.id = options.id;
    this.opts = {
      max_entries_per_msg: MAX_ENTRIES_PER_MSG,
      max_snapshot_chunk_bytes: MAX_SNAPSHOT_CHUNK_BYTES,
      max_inflight: 16,
      max_uncommitted: 256,
      ...options,
    } as Required<Omit<RaftOptions, "trace">>;
    this.trace = options.trace ?? noop;
    assert(
      this.opts.heartbeat_ticks >= 1 && this.opts.heartbeat_ticks < this.opts.election_ticks,
      "need 1 <= heartbeat_ticks < election_ticks",
    );
    assert(this.opts.max_entries_per_msg >= 1 && this.opts.max_entries_per_msg <= MAX_ENTRIES_PER_MSG, "bad max_entries_per_msg");
    assert(
      this.opts.max_snapshot_chunk_bytes >= 1 && this.opts.max_snapshot_chunk_bytes <= MAX_SNAPSHOT_CHUNK_BYTES,
      "bad max_snapshot_chunk_bytes",
    );
    this.log = new RaftLog(start.snapshot, start.entries, start.commit);
    this.term = start.term;
    this.vote = start.vote;
    assert(this.term >= this.log.lastTerm(), "durable term below the log's last term");
    this.snapshot_to_install = start.snapshot;
    this.becomeFollower(this.term, null);
  }

  // ---- inputs -----------------------------------------------------------------------------------

  tick(): void {
    this.assertIdle();
    if (this.role === "leader") return this.tickLeader();
    this.election_elapsed++;
    if (this.promotable() && this.election_elapsed >= this.randomized_timeout) {
      this.election_elapsed = 0;
      this.hup();
    }
  }

  /** Starts an election now (through PreVote, like a timeout). */
  campaign(): void {
    this.assertIdle();
    this.hup();
  }

  step(m: Message): void {
    this.assertIdle();
    if (m.to !== this.id || m.from === this.id) {
      this.trace(`dropped ${m.type} from ${m.from} addressed to ${m.to}`);
      return;
    }
    try {
      this.stepChecked(m);
    } catch (e) {
      if (!(e instanceof ProtocolViolation)) throw e;
      // A peer asked for something Raft forbids: its message changes nothing (the log checks
      // before it changes), and the operator must hear of it.
      this.trace(`ERROR dropped ${m.type} from ${m.from} at term ${m.term}: ${e.message}`);
    }
  }

  propose(data: Uint8Array): Proposed {
    this.assertIdle();
    const no = this.refuseUnlessLeader();
    if (no) return no;
    if (this.log.lastIndex() - this.log.committed >= this.opts.max_uncommitted) {
      return this.refuse(`${this.opts.max_uncommitted} entries are not yet committed`);
    }
    const e: Entry = { kind: "normal", term: this.term, index: this.log.lastIndex() + 1, data };
    this.appendOwn(e);
    return { ok: true, index: e.index, term: e.term };
  }

  proposeConfChange(change: ConfChange): Proposed {
    this.assertIdle();
    const no = this.refuseUnlessLeader();
    if (no) return no;
    if (!this.committedOwnTerm() && !plantedBugs.raft_conf_change_before_own_term) {
      return this.refuse("the leader has not yet committed an entry of its term");
    }
    if (this.pending_conf_index > this.log.committed) {
      return this.refuse(`configuration change at ${this.pending_conf_index} is not yet committed`);
    }
    const why = changeProblem(this.config(), change);
    if (why) return this.refuse(`${describeChange(change)}: ${why}`);
    const e: Entry = { kind: "conf", term: this.term, index: this.log.lastIndex() + 1, change };
    this.pending_conf_index = e.index;
    this.appendOwn(e);
    return { ok: true, index: e.index, term: e.term };
  }

  /**
   * A linearizable read point: once the returned `ctx` appears in a Ready's read_states with an
   * index, the state applied up to that index reflects every write committed before this call.
   * The leader proves it still leads by one round of heartbeats answered by a majority (no lease,
   * so no clock). Pending reads are dropped if it steps down; the caller retries elsewhere.
   */
  readIndex(ctx: number): { ok: true } | Refusal {
    this.assertIdle();
    const no = this.refuseUnlessLeader();
    if (no) return no;
    if (!this.committedOwnTerm()) return this.refuse("the leader has not yet committed an entry of its term");
    if (plantedBugs.raft_read_without_confirmation) {
      this.read_states.push({ ctx, index: this.log.committed });
      return { ok: true };
    }
    this.prs.get(this.id)!.read_round = this.reads.ask(ctx, this.log.committed);
    this.releaseReads();
    if (this.reads.hasPending()) this.bcastHeartbeat();
    return { ok: true };
  }

  /** The application captured its state after applying `index` (≤ applied) as `data`. */
  compact(index: number, data: Uint8Array): void {
    this.assertIdle();
    const term = this.log.term(index);
    assert(term !== undefined, () => `compact at ${index}: no such entry`);
    const entries = this.log.entries;
    this.log.compact({ index, term, config: configAt(this.log.snapshot, entries, index), data });
    this.durable_dirty = true;
  }

  /** The transport could not reach `id`: stop pipelining to it. */
  reportUnreachable(id: NodeId): void {
    this.assertIdle();
    const pr = this.prs.get(id);
    if (this.role === "leader" && pr && pr.state === "replicate") pr.becomeProbe();
  }

  /**
   * The transport knows whether a chunk of the snapshot sent to `id` arrived. A delivered chunk
   * changes nothing (the follower's answer moves the transfer on); a lost one ends the transfer
   * at once rather than after a timeout: probe, and the next snapshot starts over.
   */
  reportSnapshot(id: NodeId, ok: boolean): void {
    this.assertIdle();
    const pr = this.prs.get(id);
    if (this.role !== "leader" || !pr || pr.state !== "snapshot" || ok) return;
    pr.pending_snapshot = 0;
    pr.becomeProbe();
  }

  // ---- output -----------------------------------------------------------------------------------

  hasReady(): boolean {
    return (
      this.durable_dirty ||
      this.held_back !== null ||
      this.msgs.length > 0 ||
      this.snapshot_to_install !== null ||
      this.log.committed > this.log.applied ||
      this.read_states.length > 0
    );
  }

  ready(): Ready {
    this.assertIdle();
    let persist = this.durable_dirty ? this.durableState() : null;
    if (plantedBugs.raft_send_before_persist) [persist, this.held_back] = [this.held_back, persist];
    const committed = this.log.unapplied();
    const rd: Ready = {
      role: this.role,
      term: this.term,
      lead: this.lead,
      persist,
      messages: this.msgs,
      snapshot: this.snapshot_to_install,
      committed,
      read_states: this.read_states,
    };
    this.msgs = [];
    this.read_states = [];
    this.ready_out = {
      last_index: this.log.lastIndex(),
      applied_to: committed.length > 0 ? committed[committed.length - 1]!.index : this.log.applied,
      persisted: this.durable_dirty,
    };
    return rd;
  }

  /** The Ready was handled: persisted, sent, applied. */
  advance(_rd: Ready): void {
    const out = this.ready_out;
    assert(out !== null, "advance() without ready()");
    this.ready_out = null;
    assert(this.log.lastIndex() === out.last_index, "the log changed between ready() and advance()");
    this.snapshot_to_install = null;
    this.log.applied = out.applied_to;
    if (out.persisted) {
      this.durable_dirty = false;
      this.log.stable = out.last_index;
      if (this.role === "leader") {
        // The leader's own entries count towards a majority only once durable.
        this.prs.get(this.id)?.maybeUpdate(this.log.stable);
        if (this.maybeCommit()) this.bcastAppend();
      }
    }
    this.log.checkMarks();
  }

  // ---- views ------------------------------------------------------------------------------------

  status(): Status {
    const progress: Status["progress"] = {};
    if (this.role === "leader") {
      for (const [id, pr] of this.prs) progress[id] = { match: pr.match, next: pr.next, state: pr.state };
    }
    const config = this.config();
    return {
      id: this.id,
      role: this.role !== "follower" || isVoter(config, this.id) ? this.role : member(config, this.id) ? "learner" : "outside",
      term: this.term,
      vote: this.vote,
      lead: this.lead,
      commit: this.log.committed,
      applied: this.log.applied,
      last_index: this.log.lastIndex(),
      last_term: this.log.lastTerm(),
      snapshot_index: this.log.snapshot.index,
      config,
      progress,
    };
  }

  /** The few fields a runtime loop reads often, without building a Status. */
  basics(): { role: Role; term: number; lead: NodeId | null; commit: number; applied: number } {
    return { role: this.role, term: this.term, lead: this.lead, commit: this.log.committed, applied: this.log.applied };
  }

  /** Leader: how much of `id`'s log is known to match (0 if unknown or not leader). */
  matchOf(id: NodeId): number {
    return this.role === "leader" ? (this.prs.get(id)?.match ?? 0) : 0;
  }

  /** The last configuration in the log (committed or not): the one this node acts on. */
  config(): Config {
    this.config_cache ??= configAt(this.log.snapshot, this.log.entries, this.log.lastIndex());
    return this.config_cache;
  }

  /** Leader and its own-term entry applied: it may compute topology steps, allocate, order. */
  leaderReady(): boolean {
    return this.role === "leader" && this.log.term(this.log.applied) === this.term;
  }

  entries(): readonly Entry[] {
    return this.log.entries;
  }

  snapshot(): Snapshot {
    return this.log.snapshot;
  }

  // ---- roles ------------------------------------------------------------------------------------

  private becomeFollower(term: number, lead: NodeId | null): void {
    const was = this.role;
    if (term !== this.term) {
      this.setTerm(term);
      this.incoming = null; // its leader led an earlier term
    }
    this.role = "follower";
    this.lead = lead;
    this.resetTimers();
    this.dropReads();
    if (was !== "follower") this.trace(`became follower at term ${this.term}`);
  }

  private becomePreCandidate(): void {
    assert(this.role !== "leader", "a leader does not pre-vote");
    this.role = "pre_candidate";
    this.lead = null;
    this.votes = new Map();
    this.resetTimers();
    this.trace(`became pre-candidate at term ${this.term}`);
  }

  private becomeCandidate(): void {
    assert(this.role !== "leader", "a leader does not campaign");
    this.setTerm(this.term + 1);
    this.setVote(this.id);
    this.role = "candidate";
    this.lead = null;
    this.incoming = null;
    this.votes = new Map();
    this.resetTimers();
    this.trace(`became candidate at term ${this.term}`);
  }

  private becomeLeader(): void {
    assert(this.role === "candidate", "only a candidate becomes leader");
    this.role = "leader";
    this.lead = this.id;
    this.resetTimers();
    this.prs = new Map();
    this.syncProgress();
    // Any conf entry beyond the commit may be pending: wait for it before proposing another.
    this.pending_conf_index = this.log.lastIndex();
    this.trace(`became leader at term ${this.term}`);
    // An entry of the new term: committing it commits everything before it (figure 8), and
    // until then the leader neither changes the configuration nor serves reads.
    this.appendOwn({ kind: "normal", term: this.term, index: this.log.lastIndex() + 1, data: new Uint8Array() });
  }

  private setTerm(term: number): void {
    assert(term > this.term, () => `term goes back from ${this.term} to ${term}`);
    this.term = term;
    this.vote = null;
    this.durable_dirty = true;
  }

  private setVote(id: NodeId): void {
    assert(this.vote === null || this.vote === id || plantedBugs.raft_vote_twice, "voting twice in one term");
    this.vote = id;
    this.durable_dirty = true;
  }

  private resetTimers(): void {
    this.election_elapsed = 0;
    this.heartbeat_elapsed = 0;
    this.randomized_timeout = this.opts.election_ticks + this.opts.random(this.opts.election_ticks);
  }

  /** A voter of its own configuration may start elections; a learner or a stranger never does. */
  private promotable(): boolean {
    return isVoter(this.config(), this.id);
  }

  private hup(): void {
    if (this.role === "leader" || !this.promotable()) return;
    this.becomePreCandidate();
    this.askVotes("pre_vote", this.term + 1);
  }

  private campaignForReal(): void {
    this.becomeCandidate();
    this.askVotes("vote", this.term);
  }

  /**
   * Votes for itself, then, unless that alone decided the election (a single voter), asks every
   * other voter for its vote in `term` (a pre-vote asks for the term it would start).
   */
  private askVotes(type: "pre_vote" | "vote", term: number): void {
    const role = this.role;
    this.poll(this.id, type === "pre_vote" ? "pre_vote_resp" : "vote_resp", true);
    if (this.role !== role) return;
    for (const to of voterIds(this.config())) {
      if (to === this.id) continue;
      this.send({ type, to, term, last_index: this.log.lastIndex(), last_term: this.log.lastTerm() });
    }
  }

  /** Records one answer and acts on the election's outcome. */
  private poll(from: NodeId, type: "pre_vote_resp" | "vote_resp", granted: boolean): void {
    this.votes.set(from, granted);
    switch (voteResult(voterIds(this.config()), this.votes)) {
      case "won":
        if (type === "pre_vote_resp") this.campaignForReal();
        else {
          this.becomeLeader();
          this.bcastAppend();
        }
        return;
      case "lost":
        this.becomeFollower(this.term, null);
        return;
      case "pending":
        return;
    }
  }

  // ---- step -------------------------------------------------------------------------------------

  private stepChecked(m: Message): void {
    if (m.term > this.term) {
      if ((m.type === "pre_vote" || m.type === "vote") && this.inLease()) {
        // PreVote + CheckQuorum: while we hear a leader, nobody else may start a term through us.
        this.trace(`ignored ${m.type} from ${m.from} at term ${this.term}: heard from leader ${this.lead} recently`);
        return;
      }
      const keeps_term = m.type === "pre_vote" || (m.type === "pre_vote_resp" && !m.reject);
      if (!keeps_term) {
        const lead = m.type === "app" || m.type === "heartbeat" || m.type === "snap" ? m.from : null;
        this.becomeFollower(m.term, lead);
      }
    } else if (m.term < this.term) {
      if (m.type === "app" || m.type === "heartbeat") {
        // A stale leader: tell it our term so it steps down.
        this.send({ type: "app_resp", to: m.from, term: this.term, index: 0, reject: false, hint_index: 0, hint_term: 0 });
      } else if (m.type === "pre_vote") {
        this.send({ type: "pre_vote_resp", to: m.from, term: this.term, reject: true });
      }
      return;
    }
    if (m.type === "pre_vote" || m.type === "vote") return this.handleVoteRequest(m);
    switch (this.role) {
      case "leader":
        return this.stepLeader(m);
      case "pre_candidate":
      case "candidate":
        return this.stepCandidate(m);
      case "follower":
        return this.stepFollower(m);
    }
  }

  /** Heard from a leader within the election timeout (a leader: since its last CheckQuorum). */
  private inLease(): boolean {
    return this.lead !== null && this.election_elapsed < this.opts.election_ticks;
  }

  private handleVoteRequest(m: Extract<Message, { type: "pre_vote" | "vote" }>): void {
    const pre = m.type === "pre_vote";
    const can_vote =
      this.vote === m.from ||
      (this.vote === null && this.lead === null) ||
      (pre && m.term > this.term) ||
      (!pre && plantedBugs.raft_vote_twice);
    const resp = pre ? "pre_vote_resp" : "vote_resp";
    const what = pre ? "pre-vote" : "vote";
    if (can_vote && this.log.isUpToDate(m.last_index, m.last_term)) {
      this.trace(`granted ${what} to ${m.from} at term ${m.term}`);
      if (!pre) {
        this.election_elapsed = 0;
        this.setVote(m.from);
      }
      this.send({ type: resp, to: m.from, term: m.term, reject: false });
    } else {
      this.trace(`rejected ${what} from ${m.from} at term ${m.term}`);
      this.send({ type: resp, to: m.from, term: this.term, reject: true });
    }
  }

  private stepCandidate(m: Message): void {
    switch (m.type) {
      case "app":
      case "heartbeat":
      case "snap":
        this.becomeFollower(this.term, m.from);
        return this.stepFollower(m);
      case "pre_vote_resp":
        // A grant carries the term we asked for; anything else is from an earlier round.
        if (this.role !== "pre_candidate" || (!m.reject && m.term !== this.term + 1)) return;
        return this.poll(m.from, "pre_vote_resp", !m.reject);
      case "vote_resp":
        if (this.role !== "candidate") return;
        return this.poll(m.from, "vote_resp", !m.reject);
      default:
        return;
    }
  }

  private stepFollower(m: Message): void {
    switch (m.type) {
      case "app":
      case "heartbeat":
      case "snap":
        if (this.lead !== null && this.lead !== m.from) {
          throw new ProtocolViolation(`${m.from} acts as leader of term ${m.term}, which ${this.lead} leads`);
        }
        this.election_elapsed = 0;
        this.lead = m.from;
        if (m.type === "app") return this.handleAppend(m);
        if (m.type === "heartbeat") return this.handleHeartbeat(m);
        return this.handleSnapshot(m);
      default:
        return;
    }
  }

  private handleAppend(m: Extract<Message, { type: "app" }>): void {
    if (m.entries.some((e) => e.term > m.term)) throw new ProtocolViolation("append carries entries of a later term");
    if (m.entries.some((e) => e.kind === "conf") && m.prev_index >= this.log.snapshot.index && m.prev_index <= this.log.lastIndex()) {
      // A configuration change that does not apply to the configuration before it would stop
      // this node when it recomputes its configuration: refuse it here, as input.
      let c = configAt(this.log.snapshot, this.log.entries, m.prev_index);
      for (const e of m.entries) {
        if (e.kind !== "conf") continue;
        const why = changeProblem(c, e.change);
        if (why) throw new ProtocolViolation(`configuration change at ${e.index}: ${why}`);
        c = applyChange(c, e.change);
      }
    }
    if (m.prev_index < this.log.committed) {
      this.sendAppResp(m.from, this.log.committed, false);
      return;
    }
    const last = this.log.maybeAppend(m.prev_index, m.prev_term, m.commit, m.entries);
    this.config_cache = null;
    if (last !== null) {
      if (m.entries.length > 0) this.durable_dirty = true;
      this.sendAppResp(m.from, last, false);
      return;
    }
    const hint = this.log.findConflictByTerm(Math.min(m.prev_index, this.log.lastIndex()), m.prev_term);
    this.trace(`rejected append from ${m.from} after ${m.prev_term}/${m.prev_index}: hint ${this.log.term(hint)}/${hint}`);
    this.sendAppResp(m.from, m.prev_index, true, hint);
  }

  private handleHeartbeat(m: Extract<Message, { type: "heartbeat" }>): void {
    this.log.commitTo(m.commit);
    this.send({ type: "heartbeat_resp", to: m.from, term: this.term, read_round: m.read_round });
  }

  /**
   * One chunk of a snapshot. Chunks are taken in order only: a duplicate (already held) is
   * answered with what is held, a chunk beyond it with a rejection naming where to resume, and a
   * first chunk of another snapshot (or from another leader or term) starts over. Once every byte
   * arrived the snapshot is installed exactly as a whole one was.
   */
  private handleSnapshot(m: Extract<Message, { type: "snap" }>): void {
    const s = m.snapshot;
    if (s.term > m.term) throw new ProtocolViolation("snapshot of a later term than its sender's");
    if (m.offset + m.data.length > m.total) throw new ProtocolViolation("snapshot chunk beyond the snapshot's size");
    if (s.index <= this.log.committed) {
      this.incoming = null;
      this.sendAppResp(m.from, this.log.committed, false);
      return;
    }
    if (this.log.matchTerm(s.index, s.term)) {
      // We hold that entry: the snapshot only tells us it is committed.
      this.incoming = null;
      this.log.commitTo(s.index);
      this.sendAppResp(m.from, this.log.lastIndex(), false);
      return;
    }
    const meta = `${s.term}/${s.index} ${m.total} ${describeConfig(s.config)}`;
    let inc = this.incoming;
    if (inc === null || inc.from !== m.from || inc.term !== m.term || inc.meta !== meta) {
      if (m.offset !== 0) {
        this.trace(`rejected snapshot chunk at ${m.offset} of ${s.term}/${s.index} from ${m.from}: not receiving it`);
        this.send({ type: "snap_resp", to: m.from, term: this.term, index: s.index, offset: 0, reject: true });
        return;
      }
      inc = this.incoming = { from: m.from, term: m.term, meta, index: s.index, data: new Uint8Array(m.total), have: 0 };
    }
    if (m.offset > inc.have) {
      this.trace(`rejected snapshot chunk at ${m.offset} of ${s.term}/${s.index} from ${m.from}: holds ${inc.have}`);
      this.send({ type: "snap_resp", to: m.from, term: this.term, index: s.index, offset: inc.have, reject: true });
      return;
    }
    const end = m.offset + m.data.length;
    if (end > inc.have) {
      inc.data.set(m.data.subarray(inc.have - m.offset), inc.have);
      inc.have = end;
    }
    if (inc.have < m.total) {
      this.send({ type: "snap_resp", to: m.from, term: this.term, index: s.index, offset: inc.have, reject: false });
      return;
    }
    this.incoming = null;
    const whole: Snapshot = { index: s.index, term: s.term, config: s.config, data: inc.data };
    this.trace(`installed snapshot ${s.term}/${s.index} from ${m.from}`);
    this.log.restore(whole);
    this.config_cache = null;
    this.durable_dirty = true;
    this.snapshot_to_install = whole;
    this.sendAppResp(m.from, s.index, false);
  }

  private sendAppResp(to: NodeId, index: number, reject: boolean, hint_index = 0): void {
    const hint_term = reject ? (this.log.term(hint_index) ?? 0) : 0;
    this.send({ type: "app_resp", to, term: this.term, index, reject, hint_index: reject ? hint_index : 0, hint_term });
  }

  // ---- leader -----------------------------------------------------------------------------------

  private tickLeader(): void {
    this.heartbeat_elapsed++;
    this.election_elapsed++;
    for (const pr of this.prs.values()) {
      if (pr.state === "snapshot" && ++pr.snapshot_ticks >= this.opts.election_ticks) pr.becomeProbe();
    }
    if (this.election_elapsed >= this.opts.election_ticks) {
      this.election_elapsed = 0;
      if (!plantedBugs.raft_no_check_quorum && !this.quorumActive()) {
        this.trace(`stepped down at term ${this.term}: no majority heard within the election timeout`);
        this.becomeFollower(this.term, null);
        return;
      }
      for (const [id, pr] of this.prs) pr.recent_active = id === this.id;
    }
    if (this.heartbeat_elapsed >= this.opts.heartbeat_ticks) {
      this.heartbeat_elapsed = 0;
      this.bcastHeartbeat();
    }
  }

  private quorumActive(): boolean {
    return voteResult(voterIds(this.config()), new Map([...this.prs].map(([id, pr]) => [id, id === this.id || pr.recent_active]))) === "won";
  }

  private stepLeader(m: Message): void {
    const pr = this.prs.get(m.from);
    switch (m.type) {
      case "app_resp":
        if (!pr) return;
        if (m.index > this.log.lastIndex()) throw new ProtocolViolation(`acknowledges index ${m.index} beyond our log`);
        pr.recent_active = true;
        if (m.reject) {
          const hint = m.hint_term > 0 ? this.log.findConflictByTerm(m.hint_index, m.hint_term) : m.hint_index;
          if (pr.maybeDecrTo(m.index, hint)) {
            if (pr.state === "replicate") pr.becomeProbe();
            this.sendAppend(m.from);
          }
          return;
        }
        if (!pr.maybeUpdate(m.index)) return;
        if (pr.state === "probe" || (pr.state === "snapshot" && pr.match >= pr.pending_snapshot)) pr.becomeReplicate();
        if (this.maybeCommit()) this.bcastAppend();
        else while (this.role === "leader" && this.sendAppend(m.from, false));
        return;
      case "snap_resp":
        if (!pr) return;
        pr.recent_active = true;
        return this.continueSnapshot(m.from, pr, m);
      case "heartbeat_resp":
        if (!pr) return;
        pr.recent_active = true;
        pr.probe_sent = false;
        if (pr.state === "replicate" && pr.inflight.length >= this.opts.max_inflight) pr.inflight.shift();
        if (m.read_round > pr.read_round) {
          pr.read_round = m.read_round;
          this.releaseReads();
        }
        if (pr.match < this.log.lastIndex()) this.sendAppend(m.from);
        return;
      case "app":
      case "heartbeat":
      case "snap":
        throw new ProtocolViolation(`${m.from} acts as leader of term ${m.term}, which we lead`);
      default:
        return;
    }
  }

  private appendOwn(e: Entry): void {
    this.log.append([e]);
    this.durable_dirty = true;
    if (e.kind === "conf") {
      this.config_cache = null;
      this.syncProgress();
    }
    this.bcastAppend();
  }

  /** One progress per member of the configuration in force (learners included). */
  private syncProgress(): void {
    const ids = new Set(memberIds(this.config()));
    ids.add(this.id);
    for (const id of [...this.prs.keys()]) if (!ids.has(id)) this.prs.delete(id);
    for (const id of ids) {
      if (this.prs.has(id)) continue;
      const pr = new Progress(this.log.lastIndex() + 1);
      if (id === this.id) pr.match = this.log.stable;
      pr.recent_active = id === this.id;
      this.prs.set(id, pr);
    }
  }

  /** Advances the commit to what a majority of voters hold, if it is an entry of our term. */
  private maybeCommit(): boolean {
    const index = quorumValue(voterIds(this.config()), (id) => this.prs.get(id)?.match ?? 0);
    if (index <= this.log.committed) return false;
    // Figure 8: a majority holding an entry of an earlier term does not make it safe.
    if (this.log.term(index) !== this.term && !plantedBugs.raft_commit_old_term_by_counting) return false;
    this.log.commitTo(index);
    this.releaseReads();
    if (!isVoter(this.config(), this.id) && this.lastConfIndex() <= this.log.committed) {
      // Our own removal is committed: the remaining voters elect a leader among themselves.
      this.trace(`stepped down at term ${this.term}: removed from the configuration`);
      this.becomeFollower(this.term, null);
      return false;
    }
    return true;
  }

  private lastConfIndex(): number {
    for (let i = this.log.entries.length - 1; i >= 0; i--) if (this.log.entries[i]!.kind === "conf") return this.log.entries[i]!.index;
    return this.log.snapshot.index;
  }

  private committedOwnTerm(): boolean {
    return this.log.term(this.log.committed) === this.term;
  }

  private bcastAppend(): void {
    for (const id of this.prs.keys()) if (id !== this.id) this.sendAppend(id);
  }

  private bcastHeartbeat(): void {
    for (const [id, pr] of this.prs) {
      if (id === this.id) continue;
      this.send({ type: "heartbeat", to: id, term: this.term, commit: Math.min(pr.match, this.log.committed), read_round: this.reads.round });
    }
  }

  /**
   * Sends `to` what it lacks: entries after its next index, or the snapshot when those entries
   * are compacted away. Returns whether a message went out.
   */
  private sendAppend(to: NodeId, send_if_empty = true): boolean {
    const pr = this.prs.get(to);
    if (!pr || pr.isPaused(this.opts.max_inflight)) return false;
    const prev_index = pr.next - 1;
    const prev_term = this.log.term(prev_index);
    if (prev_term === undefined) {
      pr.becomeSnapshot(this.log.snapshot);
      this.sendChunk(to, pr, 0);
      return true;
    }
    const entries = pr.next <= this.log.lastIndex() ? withinBytes(this.log.slice(pr.next, this.log.lastIndex() + 1, this.opts.max_entries_per_msg), MAX_APPEND_DATA_BYTES) : [];
    if (entries.length === 0 && !send_if_empty) return false;
    this.send({ type: "app", to, term: this.term, prev_index, prev_term, entries, commit: this.log.committed });
    pr.sent(entries.length > 0 ? entries[entries.length - 1]!.index : prev_index);
    return true;
  }

  /** Sends the chunk of the snapshot being sent to `to` that starts at `offset`. */
  private sendChunk(to: NodeId, pr: Progress, offset: number): void {
    const s = pr.sending!;
    const end = Math.min(s.data.length, offset + this.opts.max_snapshot_chunk_bytes);
    const snapshot = { index: s.index, term: s.term, config: s.config };
    this.send({ type: "snap", to, term: this.term, snapshot, total: s.data.length, offset, data: s.data.subarray(offset, end) });
    pr.chunkSent(offset, end);
  }

  /**
   * The follower holds `m.offset` bytes of the snapshot being sent: send the next chunk. Only an
   * answer to the chunk in flight (or beyond it) moves the transfer on, so a duplicated or late
   * answer sends nothing twice; a rejection resends from where the follower is.
   */
  private continueSnapshot(to: NodeId, pr: Progress, m: Extract<Message, { type: "snap_resp" }>): void {
    if (pr.state !== "snapshot" || pr.sending === null || m.index !== pr.pending_snapshot) return;
    if (m.offset >= pr.sending.data.length) return; // all of it is there: its app_resp moves on
    if (m.reject || m.offset >= pr.chunk_end) this.sendChunk(to, pr, m.offset);
  }

  private releaseReads(): void {
    if (!this.reads.hasPending()) return;
    const confirmed = quorumValue(voterIds(this.config()), (id) => this.prs.get(id)?.read_round ?? 0);
    this.read_states.push(...this.reads.release(confirmed));
  }

  private dropReads(): void {
    const n = this.reads.drop();
    if (n > 0) this.trace(`dropped ${n} pending read(s): no longer leader`);
  }

  // ---- helpers ----------------------------------------------------------------------------------

  private send(m: DistributiveOmit<Message, "from">): void {
    this.msgs.push({ ...m, from: this.id } as Message);
  }

  private refuseUnlessLeader(): Refusal | null {
    return this.role === "leader" ? null : { ok: false, reason: "not the leader", lead: this.lead };
  }

  private refuse(reason: string): Refusal {
    return { ok: false, reason, lead: this.lead };
  }

  private durableState(): DurableState {
    return { term: this.term, vote: this.vote, commit: this.log.committed, snapshot: this.log.snapshot, entries: [...this.log.entries] };
  }

  private assertIdle(): void {
    assert(this.ready_out === null, "the node was called between ready() and advance()");
  }
}

type DistributiveOmit<T, K extends PropertyKey> = T extends unknown ? Omit<T, K> : never;

/** The longest prefix whose normal entries' payloads total at most `max` bytes; never empty if `entries` is not. */
function withinBytes(entries: Entry[], max: number): Entry[] {
  let bytes = 0;
  for (let i = 0; i < entries.length; i++) {
    const e = entries[i]!;
    bytes += e.kind === "normal" ? e.data.length : 0;
    if (bytes > max && i > 0) return entries.slice(0, i);
  }
  return entries;
}
