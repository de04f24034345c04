/**
 * One TOMA's member of the TOMA cluster: the consensus core (consensus/raft.ts) driven over Env,
 * its hard state on the own server's drives (hard-state-io.ts), its messages to the peers
 * (peer-sender.ts). docs/toma-cluster.md, "Integration", steps 4 to 6.
 *
 * Start: wait for own drives; read both slots of each and decide trust (waiting a grace period
 * for drives the newest record lists); trusted → write the start record, continue as that node
 * id; blank → a new incarnation that founds the cluster with its peers (bootstrap.ts), or, when a
 * peer answers as a member of an existing cluster, joins it as a non-member that waits to be added
 * (membership-ops.ts on the leader); anything else → outside (an amnesic TOMA of an existing
 * cluster rejoining is not built).
 *
 * Proposals (`propose`) wait in a queue the loop drains on its turn, so the core is never called
 * between ready() and advance(); each is answered once its entry is committed and applied here,
 * or failed with the reason and whether its outcome is known (ProposalError).
 *
 * Running, one loop: every tick of the steady clock `tick()`; each message `step()`; while
 * `hasReady()`: `ready()` → persist (awaited: nothing leaves before it is durable) → send →
 * install the snapshot / apply the committed entries → `advance()`. Nothing calls the core between
 * ready() and advance(): inputs that arrive meanwhile (messages, ticks, the transport's news) wait
 * in the inbox.
 */
import type { Env, TimerHandle } from "../../engine/env.ts";
import { sleep } from "../../engine/env.ts";
import { steadyClock } from "../../engine/steady-clock.ts";
import { uuidToString } from "../../engine/uuid.ts";
import { randomUuid } from "../../engine/env.ts";
import { type ClusterState, decodeState, emptyState, encodeState } from "../cluster-state.ts";
import type { BootstrapDecision } from "../consensus/bootstrap.ts";
import { configAt, describeChange, member } from "../consensus/config.ts";
import { durableOf, nodeIdOf } from "../consensus/hard-state-record.ts";
import { decodeEnvelope, describeMessage } from "../consensus/messages.ts";
import { membershipWarnings } from "../consensus/membership.ts";
import { type Applied, applyProposal, fenceVersion } from "../consensus/proposal.ts";
import { blankDurableState, bootstrapDurableState, Raft, type Ready, type Status } from "../consensus/raft.ts";
import type { ConfChange, Config, DurableState, Message, NodeId } from "../consensus/types.ts";
import { DEFAULT_HARD_STATE_TIMINGS, type HardStateTimings, HardStateWriter, readOwnDrives, type SlotIo } from "./hard-state-io.ts";
import { decideFromAnswers, type Identity } from "./identity.ts";
import { type PeerPost, PeerSenders } from "./peer-sender.ts";
import { classifySlot, reportOf, type SingleTomaReport } from "../consensus/single-toma-state.ts";

export interface NodeOptions {
  toma_id: string;
  /** Every TOMA's management address, this one's included; the same list on every TOMA. */
  peers: readonly string[];
  io: SlotIo;
  post: PeerPost;
  /** GET /v1/raft/identity of the TOMA at `address`, validated (identity.ts). */
  ask: (address: string) => Promise<Identity>;
  tick_ms?: number;
  election_ticks?: number;
  heartbeat_ticks?: number;
  /** How long to wait for drives the newest own record lists before concluding amnesia. */
  grace_ms?: number;
  timings?: HardStateTimings;
}

export type Phase =
  /** Waiting for own drives, or reading them. */
  | "starting"
  /** Blank: waiting for every peer to answer, to found the cluster with them. */
  | "bootstrap"
  | "running"
  /** In no cluster it can act in (amnesic with a cluster's traces, or removed). */
  | "outside"
  | "stopped";

/** Messages waiting for the loop; beyond this new ones are dropped (Raft re-sends). */
export const MAX_INBOX = 4096;
/** The log tail kept before the state is compacted into the snapshot. */
export const COMPACT_AFTER_ENTRIES = 64;

type Input = { kind: "msg"; m: Message } | { kind: "unreachable"; id: NodeId } | { kind: "snapshot"; id: NodeId; ok: boolean };

/** Proposals waiting for the loop's turn at most; beyond this a proposal is refused at once. */
export const MAX_PENDING_PROPOSALS = 256;
/** How long a proposal may wait to be committed and applied, unless the caller says otherwise. */
export const DEFAULT_PROPOSAL_TIMEOUT_MS = 10_000;

/** What a proposal is: a cluster-state proposal's bytes (proposal.ts), or a configuration change. */
export type ProposalBody = { kind: "normal"; data: Uint8Array } | { kind: "conf"; change: ConfChange };

/** A proposal committed at (index, term) and applied here; for a normal entry, what the state machine did. */
export interface Committed {
  index: number;
  term: number;
  /** Normal entries: applied, refused by the state machine (the state unchanged), or a no-op. */
  applied: Applied | null;
}

/**
 * Why a proposal was not answered with its commit. The codes an operator or a caller acts on:
 * - not_leader: nothing was appended; `leader` says where to go (null: none known).
 * - refused: the leader refused it (one configuration change at a time, its own-term entry not
 *   committed yet, backpressure, an invalid change); nothing was appended.
 * - leadership_lost: appended, then this TOMA stopped being the leader of that term before the
 *   entry was applied here. The outcome is unknown: a later leader may still commit it.
 * - overwritten: the index was committed with another entry (a later leader's): it never will be.
 * - timeout: appended, not applied within the time allowed; the outcome is unknown.
 * - stopped: this TOMA left the cluster or stopped; the outcome is unknown.
 */
export type ProposalErrorCode = "not_leader" | "refused" | "leadership_lost" | "overwritten" | "timeout" | "stopped";

export class ProposalError extends Error {
  constructor(
    readonly code: ProposalErrorCode,
    message: string,
    readonly leader: { node_id: NodeId; address: string } | null = null,
  ) {
    super(message);
  }
}

interface ProposalInput {
  body: ProposalBody;
  timeout_ms: number;
  resolve: (c: Committed) => void;
  reject: (e: ProposalError) => void;
}

interface Waiter extends ProposalInput {
  index: number;
  term: number;
  deadline: number;
}

export interface PeerView {
  node_id: NodeId;
  address: string;
  voter: boolean;
  /** Milliseconds since a message from it arrived here (this TOMA's own clock); null: never. */
  heard_ms_ago: number | null;
  /** Heard within an election timeout. */
  reachable: boolean;
  /** Leader only: how much of its log matches. */
  match: number | null;
  /**
   * What the peer itself said when this TOMA last asked it (every second, GET /v1/raft/identity
   * over a request of its own): its role, term and leader; null if it has not answered.
   */
  says: { role: string; term: number; leader: NodeId | null; node_id: NodeId | null } | null;
  /** Milliseconds since it last answered that question; null: never. */
  answered_ms_ago: number | null;
  /** Why the last question failed, if it did. */
  error: string | null;
}

export interface NodeView {
  toma_id: string;
  node_id: NodeId | null;
  address: string | null;
  phase: Phase;
  /** Why the phase is what it is (waiting for whom, why outside). */
  reason: string | null;
  cluster_uuid: string | null;
  role: Status["role"] | null;
  term: number | null;
  leader: { node_id: NodeId; address: string } | null;
  /** Leader, with an entry of its own term applied: leader duties may run. */
  leader_ready: boolean;
  commit: number | null;
  applied: number | null;
  last_index: number | null;
  peers: PeerView[];
  /** The last record that reached every drive it lists. */
  hard_state: { seq: number; drives: string[] } | null;
  dropped_messages: number;
  /** This TOMA's own place in its configuration: voter, learner, or not a member. */
  membership: "voter" | "learner" | "none" | null;
  /** Proposals appended and waiting to be applied here. */
  proposals_waiting: number;
  /** What an operator should know about the configuration (fewer than 3 voters, an even count). */
  warnings: string[];
}

export class TomaNode {
  private readonly tick_ms: number;
  private readonly election_ticks: number;
  private readonly heartbeat_ticks: number;
  private readonly clock;
  private readonly proposal_uuid: string;
  private raft: Raft | null = null;
  private writer: HardStateWriter | null = null;
  private senders: PeerSenders | null = null;
  private incarnation: string | null = null;
  private cluster: string | null = null;
  private state: ClusterState | null = null;
  /** The term of the last entry (or snapshot) applied here. */
  private applied_term = 0;
  private inbox: Input[] = [];
  private dropped = 0;
  private ticks_due = 0;
  private last_tick_ms: number;
  private timer: TimerHandle | null = null;
  private busy = false;
  private readonly heard = new Map<NodeId, number>();
  private my_address: string | null = null;
  /** The last answer (or failure) of each peer to the periodic identity question, by address. */
  private readonly probes = new Map<string, { at: number; id: Identity | null; error: string | null; answered_at: number | null }>();
  private probe_timer: TimerHandle | null = null;
  /** The durable state of the last record that completed: what a drive-set change rewrites. */
  private durable: DurableState | null = null;
  /** The live own drive set when a record was last written for a drive-set change. */
  private rewritten_for = "";
  phase: Phase = "starting";
  reason: string | null = "waiting for own drives";
  /** Called after every ready() handled (tests, status watchers). */
  onAdvance: (() => void) | null = null;
  /**
   * Called for each committed entry as it is applied here, by its index and term (which name one
   * entry, by Raft's log matching): the simulator checks that no two TOMAs apply different entries
   * at one index.
   */
  onApply: ((index: number, term: number) => void) | null = null;
  /** Called after each ready() that changed the applied state (home-clients.ts wakes its held watches). */
  readonly stateListeners = new Set<() => void>();
  /** Proposals given to propose() and not yet seen by the loop. */
  private proposals: ProposalInput[] = [];
  /** Proposals appended to the log, by index, waiting to be applied here. */
  private readonly waiters = new Map<number, Waiter>();
  /**
   * The address of every node id seen in a configuration here, or announced by the members to a
   * joining TOMA (which has no configuration yet): where answers go to a node no longer, or not
   * yet, in this TOMA's configuration. One entry per node id ever seen here (a few per server).
   */
  private readonly known = new Map<NodeId, string>();
  /** This node id has been a member of its own configuration (a removal then means it is out). */
  private was_member = false;
  /** What the own drives held at a blank start (single-toma-state.ts); null when started from a record. */
  private single_toma: SingleTomaReport | null = null;

  constructor(
    private readonly env: Env,
    private readonly opts: NodeOptions,
  ) {
    this.tick_ms = opts.tick_ms ?? 100;
    this.election_ticks = opts.election_ticks ?? 10;
    this.heartbeat_ticks = opts.heartbeat_ticks ?? 2;
    this.clock = steadyClock(env.clock);
    this.last_tick_ms = this.clock.now_ms();
    this.proposal_uuid = uuidToString(randomUuid(env));
  }

  /** Runs the start (trust or bootstrap) and then the loop; resolves once running or outside. */
  async start(): Promise<void> {
    try {
      await this.startup();
    } catch (e) {
      this.outside(`start failed: ${(e as Error).message}`);
    }
  }

  stop(): void {
    this.phase = "stopped";
    this.timer?.cancel();
    this.probe_timer?.cancel();
    this.senders?.stop();
    this.failAll("stopped", "this TOMA stopped before the proposal was applied here; its outcome is unknown");
  }

  /**
   * Proposes an entry: appended by the loop on its next turn if this TOMA is the leader (normal
   * entries only once it applied an entry of its own term), then answered once the entry is
   * committed and applied here, or failed with a ProposalError saying why and whether the outcome
   * is known. Never calls the core itself: the proposal waits in the loop's queue, so the core is
   * never entered between ready() and advance().
   */
  propose(body: ProposalBody, timeout_ms = DEFAULT_PROPOSAL_TIMEOUT_MS): Promise<Committed> {
    return new Promise<Committed>((resolve, reject) => {
      if (this.phase !== "running" || !this.raft) {
        return reject(new ProposalError("not_leader", `this TOMA is not running in a cluster (${this.phase}${this.reason ? `: ${this.reason}` : ""})`));
      }
      if (this.proposals.length + this.waiters.size >= MAX_PENDING_PROPOSALS) {
        return reject(new ProposalError("refused", `${MAX_PENDING_PROPOSALS} proposals are already waiting here`));
      }
      this.proposals.push({ body, timeout_ms, resolve, reject });
      this.pump();
    });
  }

  /** The cluster state applied here (what a leader computes its next command from); null before the first snapshot. */
  appliedState(): ClusterState | null {
    return this.state;
  }

  /**
   * The control-plane version of the applied state: `fenceVersion(term of the last entry applied
   * here, generation)`. A leader that applied its own term's entry has its term there, so this is
   * the very version its control stamps on that state; null before the first snapshot.
   */
  appliedVersion(): number | null {
    return this.state === null ? null : fenceVersion(this.applied_term, this.state.generation);
  }

  /** The configuration this TOMA acts on (the last in its log); empty before it runs. */
  config(): Config {
    return this.raft?.config() ?? { members: [] };
  }

  /** The configuration committed as far as this TOMA knows. */
  committedConfig(): Config {
    const r = this.raft;
    if (!r) return { members: [] };
    return configAt(r.snapshot(), r.entries(), r.basics().commit);
  }

  /** Leader: how much of `id`'s log matches its own, and its commit index. */
  replication(id: NodeId): { match: number; commit: number } {
    const r = this.raft;
    return { match: r?.matchOf(id) ?? 0, commit: r?.basics().commit ?? 0 };
  }

  /** The leader as this TOMA knows it, with its address; null if none known. */
  leader(): { node_id: NodeId; address: string } | null {
    const r = this.raft;
    const lead = r?.basics().lead ?? null;
    if (!r || lead === null) return null;
    return { node_id: lead, address: member(r.config(), lead)?.address ?? this.known.get(lead) ?? "" };
  }

  /** What this TOMA tells its peers about itself (GET /v1/raft/identity). */
  identity(): Identity {
    const base = {
      toma_id: this.opts.toma_id,
      incarnation: this.incarnation,
      proposal_uuid: this.proposal_uuid,
      peers: [...this.opts.peers].sort(),
      ...(this.single_toma ? { single_toma: this.single_toma } : {}),
    };
    if (this.phase === "running" && this.raft && this.cluster) {
      const st = this.raft.status();
      return {
        ...base,
        status: { kind: "member", cluster_uuid: this.cluster, config: st.config },
        raft: { role: st.role, term: st.term, leader: st.lead, committed_config: this.committedConfig() },
      };
    }
    if (this.phase === "bootstrap") return { ...base, status: { kind: "blank" } };
    if (this.phase === "outside") return { ...base, status: { kind: "outside", reason: this.reason ?? "outside" } };
    return { ...base, status: { kind: "starting" } };
  }

  /**
   * An envelope from a peer (POST /v1/raft), validated whole here. Not for this node or not of
   * its cluster: refused with the reason, nothing changes.
   */
  receive(bytes: Uint8Array): { ok: true } | { ok: false; status: number; error: string } {
    if (this.phase !== "running" || !this.raft) return { ok: false, status: 503, error: `this TOMA is not in a cluster yet (${this.phase}: ${this.reason ?? ""})` };
    const d = decodeEnvelope(bytes);
    if (!d.ok) return { ok: false, status: 400, error: d.error };
    const e = d.value;
    if (e.cluster_uuid !== this.cluster) return { ok: false, status: 409, error: `envelope of cluster ${e.cluster_uuid}; this TOMA is in cluster ${this.cluster}` };
    if (e.to !== this.raft.id) return { ok: false, status: 409, error: `envelope for ${e.to}; this TOMA is ${this.raft.id}` };
    this.heard.set(e.from, this.clock.now_ms());
    for (const m of e.msgs) this.push({ kind: "msg", m });
    this.pump();
    return { ok: true };
  }

  view(): NodeView {
    const r = this.raft;
    const s = r?.status() ?? null;
    const config = s?.config ?? { members: [] };
    const now = this.clock.now_ms();
    const timeout_ms = this.election_ticks * this.tick_ms;
    return {
      toma_id: this.opts.toma_id,
      node_id: r?.id ?? null,
      address: this.my_address,
      phase: this.phase,
      reason:
        this.reason ??
        (this.phase === "running" && r !== null && !member(config, r.id)
          ? `waiting to be added to the cluster: 'nvmesh cluster server add ${this.my_address ?? "THIS-ADDRESS"} --name ${this.opts.toma_id}' through any member`
          : null),
      cluster_uuid: this.cluster,
      role: s?.role ?? null,
      term: s?.term ?? null,
      leader: this.leader(),
      leader_ready: r?.leaderReady() ?? false,
      commit: s?.commit ?? null,
      applied: s?.applied ?? null,
      last_index: s?.last_index ?? null,
      peers: config.members
        .filter((m) => m.id !== r?.id)
        .map((m) => {
          const t = this.heard.get(m.id);
          const ago = t === undefined ? null : Math.max(0, now - t);
          return {
            node_id: m.id,
            address: m.address,
            voter: m.voter,
            heard_ms_ago: ago,
            reachable: ago !== null && ago <= timeout_ms,
            match: s?.role === "leader" ? (s.progress[m.id]?.match ?? 0) : null,
            ...this.probeView(m.address, now),
          };
        }),
      hard_state: this.writer?.last ? { seq: this.writer.last.seq, drives: [...this.writer.last.drives] } : null,
      dropped_messages: this.dropped + (this.senders?.dropped ?? 0),
      membership: r === null ? null : member(config, r.id) ? (member(config, r.id)!.voter ? "voter" : "learner") : "none",
      proposals_waiting: this.waiters.size + this.proposals.length,
      warnings: this.phase === "running" && config.members.length > 0 ? membershipWarnings(config) : [],
    };
  }

  private probeView(address: string, now: number): Pick<PeerView, "says" | "answered_ms_ago" | "error"> {
    const p = this.probes.get(address);
    const raft = p?.id?.raft;
    return {
      says: p?.id && raft ? { role: raft.role, term: raft.term, leader: raft.leader, node_id: p.id.incarnation ? `${p.id.toma_id}#${p.id.incarnation}` : null } : null,
      answered_ms_ago: p?.answered_at == null ? null : Math.max(0, now - p.answered_at),
      error: p?.error ?? null,
    };
  }

  /** Asks every other member who it is and what it sees; one question per peer at a time. */
  private probe(): void {
    const r = this.raft;
    if (!r || this.phase !== "running") return;
    for (const m of r.config().members) {
      if (m.id === r.id || m.address === "") continue;
      const prev = this.probes.get(m.address);
      if (prev && prev.at < 0) continue; // still waiting for the last answer
      this.probes.set(m.address, { at: -1, id: prev?.id ?? null, error: prev?.error ?? null, answered_at: prev?.answered_at ?? null });
      this.opts.ask(m.address).then(
        (id) => {
          this.probes.set(m.address, { at: this.clock.now_ms(), id, error: null, answered_at: this.clock.now_ms() });
          this.removedBy(m.address, id);
        },
        (e) => this.probes.set(m.address, { at: this.clock.now_ms(), id: null, error: (e as Error).message, answered_at: prev?.answered_at ?? null }),
      );
    }
  }

  /**
   * A removed follower never hears the commit of its removal: the leader stops replicating to it
   * as soon as the change is appended. It learns it here instead, from the leader's own answer:
   * a leader of a term at least ours whose committed and last configurations both lack this node
   * id, once this node id has been a member. Stopping is never a safety matter (it is a crash);
   * only a node that is out for good should stop, hence both configurations.
   */
  private removedBy(address: string, id: Identity): void {
    const r = this.raft;
    if (!r || this.phase !== "running" || !this.was_member) return;
    if (id.status.kind !== "member" || id.status.cluster_uuid !== this.cluster || id.raft?.role !== "leader") return;
    if (id.raft.term < r.basics().term || !id.raft.committed_config) return;
    if (member(id.raft.committed_config, r.id) || member(id.status.config, r.id)) return;
    this.removed(`the leader at ${address} (term ${id.raft.term}) committed a configuration without this TOMA`);
  }

  private removed(how: string): void {
    this.senders?.stop();
    this.outside(`removed from the TOMA cluster: ${how}. This TOMA takes no part any more; stop it (bringing this server back as a new member is not built yet)`);
  }

  /** Leader with its own-term entry applied: the gate for every leader duty. */
  leaderReady(): boolean {
    return this.raft?.leaderReady() ?? false;
  }

  // ---- start ------------------------------------------------------------------------------------

  private async startup(): Promise<void> {
    const grace_ms = this.opts.grace_ms ?? 10_000;
    while (this.opts.io.drives().length === 0) {
      if (this.phase === "stopped") return;
      this.reason = "waiting for own drives (is this server's target up, serving at least one drive?)";
      await sleep(this.env, 200);
    }
    this.reason = "reading own drives";
    const began = this.clock.now_ms();
    let read = await readOwnDrives(this.env, this.opts.io, this.opts.toma_id, null, this.opts.timings);
    // Drives the newest record lists may still be coming (a target starting), or may come back
    // (moved to another server and back): wait for them, however long. Deciding amnesia instead
    // would cost this server its identity for good; waiting costs nothing (nothing is sent).
    let warned = false;
    while (read.decision.kind === "amnesic" && read.decision.missing.length > 0) {
      if (this.phase === "stopped") return;
      const missing = read.decision.missing.join(", ");
      this.reason = `waiting for own drive(s) ${missing}, which this TOMA's newest hard-state record lists`;
      if (!warned && this.clock.now_ms() - began >= grace_ms) {
        warned = true;
        this.env.log.warn("own drives the hard state needs are still absent; waiting for them (if they are gone for good, replace this server: docs/toma-cluster.md, Membership)", { missing });
      }
      await sleep(this.env, 500);
      read = await readOwnDrives(this.env, this.opts.io, this.opts.toma_id, null, this.opts.timings);
    }
    const slots = read.current.map((c) => ({ drive_uuid: c.drive_uuid, ...classifySlot(c) }));
    const single = slots.flatMap((x) => (x.kind === "single_toma" ? [{ drive_uuid: x.drive_uuid, cluster_uuid: x.state.cluster_uuid }] : []));
    const trusted = read.decision.kind === "trusted" ? read.decision.record : null;
    if (single.length > 0 && trusted) {
      // A drive of our own cluster not yet overwritten by the takeover (it was not served when the
      // start record went out): the start record goes there now. Another cluster's state is not
      // ours to overwrite.
      const foreign = single.filter((x) => x.cluster_uuid !== trusted.cluster_uuid);
      if (foreign.length > 0) {
        return this.outside(`drive(s) ${foreign.map((x) => x.drive_uuid).join(", ")} hold the single-TOMA state of another cluster (${foreign[0]!.cluster_uuid}); remove them from this server`);
      }
    }
    const d = read.decision;
    if (d.kind === "trusted") {
      const r = d.record;
      this.incarnation = r.incarnation;
      this.cluster = r.cluster_uuid;
      this.writer = new HardStateWriter(this.env, this.opts.io, { cluster_uuid: r.cluster_uuid, toma_id: r.toma_id, incarnation: r.incarnation }, { anchor: d.anchor, pending: d.pending }, read.generations, this.opts.timings ?? DEFAULT_HARD_STATE_TIMINGS);
      this.env.log.info("hard state trusted", { node: nodeIdOf(r), seq: r.seq, how: d.how, term: r.term, commit: r.commit });
      return this.begin(nodeIdOf(r), durableOf(r));
    }
    this.incarnation = hex64(this.env);
    if (read.failed.length > 0) {
      // A drive we cannot read may hold our newest record: never found a cluster as if blank.
      return this.outside(`amnesic (${d.reason}), and own drive(s) ${read.failed.join(", ")} could not be read`);
    }
    // Blank, or a single-TOMA cluster's drives (blank or holding its state): a founder, which tells
    // its peers what it read (fixed for this process: a node id stands for one report).
    const unknown = slots.filter((x) => x.kind === "record" || x.kind === "unknown");
    if (unknown.length > 0) {
      const why = unknown.map((x) => `${x.drive_uuid}: ${x.kind === "unknown" ? x.error : "a hard-state record, not of this TOMA's"}`).join("; ");
      return this.outside(`amnesic (${d.reason}); rejoining a cluster as a new member is not built yet (${why})`);
    }
    this.single_toma = reportOf(read.current);
    if (single.length > 0) this.env.log.info("own drives hold a single-TOMA cluster state: reporting it to the peers to take it over", { drives: single.map((x) => x.drive_uuid).join(",") });
    this.phase = "bootstrap";
    const founded = await this.bootstrap();
    if (founded === null) return;
    const other = single.find((x) => x.cluster_uuid !== founded.cluster_uuid);
    if (other) {
      return this.outside(`own drive ${other.drive_uuid} holds the single-TOMA state of cluster ${other.cluster_uuid}, not of cluster ${founded.cluster_uuid} this TOMA would join; remove it from this server`);
    }
    this.cluster = founded.cluster_uuid;
    this.writer = new HardStateWriter(this.env, this.opts.io, { cluster_uuid: founded.cluster_uuid, toma_id: this.opts.toma_id, incarnation: this.incarnation }, null, read.generations, this.opts.timings ?? DEFAULT_HARD_STATE_TIMINGS);
    if (founded.kind === "join") {
      // A new member: no configuration, no log, never a candidate. It waits for the leader to add
      // it (cluster server add), which replicates the snapshot (with the configuration) first.
      this.env.log.info("joining the TOMA cluster as a new member; waiting to be added (nvmesh cluster server add)", { cluster: founded.cluster_uuid, node: `${this.opts.toma_id}#${this.incarnation}` });
      return this.begin(`${this.opts.toma_id}#${this.incarnation}`, blankDurableState());
    }
    if (founded.kind === "adopt_blank") {
      // A founder's node id whose peers' reports are gone: it holds nothing (no vote, no entry)
      // until the leader's snapshot brings the state and the configuration.
      for (const m of founded.config.members) this.known.set(m.id, m.address);
      this.env.log.info("adopting the TOMA cluster a peer founded, without its first snapshot (a founder restarted); the leader sends it", { cluster: founded.cluster_uuid, node: `${this.opts.toma_id}#${this.incarnation}` });
      return this.begin(`${this.opts.toma_id}#${this.incarnation}`, blankDurableState());
    }
    const t = founded.takeover;
    const durable = t
      ? bootstrapDurableState(founded.config, t.data, { index: t.snapshot_index, term: t.snapshot_term })
      : bootstrapDurableState(founded.config, encodeState(emptyState(founded.cluster_uuid)));
    this.env.log.info(founded.kind === "form" ? "founding the TOMA cluster" : "adopting the TOMA cluster a peer founded", { cluster: founded.cluster_uuid, voters: founded.config.members.map((m) => m.id).join(",") });
    if (t) {
      this.env.log.info("taking over the single-TOMA cluster state", { generation: t.state.generation, single_toma_term: t.state.term ?? 0, drives_read: `${t.heard} of ${t.of}`, snapshot_index: t.snapshot_index, snapshot_term: t.snapshot_term });
    }
    return this.begin(`${this.opts.toma_id}#${this.incarnation}`, durable);
  }

  /** Asks every peer until they all answered and bootstrap.ts decides; null when stopped or outside. */
  private async bootstrap(): Promise<Exclude<BootstrapDecision, { kind: "wait" }> | null> {
    const peers = [...this.opts.peers];
    for (;;) {
      if (this.phase !== "bootstrap") return null;
      const answers = await Promise.all(
        peers.map(async (address) => {
          try {
            return { address, id: await this.opts.ask(address), error: null };
          } catch (e) {
            return { address, id: null, error: (e as Error).message };
          }
        }),
      );
      const { decision, my_address } = decideFromAnswers({ toma_id: this.opts.toma_id, incarnation: this.incarnation!, peers: this.opts.peers }, answers);
      if (my_address !== null) this.my_address = my_address;
      if (decision.kind === "form" || decision.kind === "adopt" || decision.kind === "adopt_blank") return decision;
      if (decision.kind === "join") {
        // Until the leader's snapshot brings the configuration, answers go to the addresses the
        // members announced.
        for (const a of answers) {
          const st = a.id?.status;
          if (st?.kind === "member" && st.cluster_uuid === decision.cluster_uuid) for (const m of st.config.members) this.known.set(m.id, m.address);
        }
        return decision;
      }
      this.reason = decision.reason;
      await sleep(this.env, 500);
    }
  }

  private outside(reason: string): void {
    this.timer?.cancel();
    this.probe_timer?.cancel();
    this.phase = "outside";
    this.reason = reason;
    this.env.log.error("TOMA outside the cluster", { reason });
    this.failAll("stopped", `this TOMA left the cluster before the proposal was applied here (${reason}); its outcome is unknown`);
  }

  private failAll(code: ProposalErrorCode, why: string): void {
    for (const p of this.proposals.splice(0)) p.reject(new ProposalError(code, why));
    for (const w of this.waiters.values()) w.reject(new ProposalError(code, why, this.leader()));
    this.waiters.clear();
  }

  /** Proposals past their deadline fail; their entries may still commit (the caller is told). */
  private expire(now: number): void {
    for (const [index, w] of this.waiters) {
      if (now < w.deadline) continue;
      this.waiters.delete(index);
      w.reject(new ProposalError("timeout", `entry ${index} (term ${w.term}) not applied within ${w.timeout_ms / 1000} s; its outcome is unknown (it may still be committed)`, this.leader()));
    }
  }

  /** W5: the start record first; then the core, the senders, the ticks. */
  private async begin(id: NodeId, durable: DurableState): Promise<void> {
    const w = await this.writer!.persist(durable);
    if (!w.ok) return this.outside(`amnesic: ${w.amnesic}; rejoining as a new member is not built yet`);
    if (this.phase === "stopped") return;
    this.durable = durable;
    this.raft = new Raft(
      {
        id,
        election_ticks: this.election_ticks,
        heartbeat_ticks: this.heartbeat_ticks,
        random: (n) => this.env.random.u32() % n,
        trace: (line) => (line.startsWith("ERROR") ? this.env.log.error(`raft: ${line}`) : this.env.log.debug(`raft: ${line}`)),
      },
      durable,
    );
    this.my_address ??= member(this.raft.config(), id)?.address ?? null;
    this.senders = new PeerSenders(
      this.env,
      this.opts.post,
      {
        unreachable: (to) => this.push({ kind: "unreachable", id: to }),
        snapshot: (to, ok) => this.push({ kind: "snapshot", id: to, ok }),
      },
      this.cluster!,
      id,
    );
    this.phase = "running";
    this.reason = null;
    this.env.log.info("TOMA cluster member running", { node: id, term: durable.term, commit: durable.commit });
    this.last_tick_ms = this.clock.now_ms();
    this.timer = this.env.timers.every(this.tick_ms, () => {
      // Ticks are counted on the steady clock: a timer that fired late still gives the ticks
      // that passed, a clock jumping back gives none. At most an election timeout at once.
      const now = this.clock.now_ms();
      const n = Math.floor((now - this.last_tick_ms) / this.tick_ms);
      if (n <= 0) return;
      this.last_tick_ms += n * this.tick_ms;
      this.ticks_due = Math.min(this.ticks_due + n, this.election_ticks);
      this.expire(now);
      this.pump();
    });
    this.probe_timer = this.env.timers.every(1000, () => {
      this.probe();
      this.rewriteOnDriveChange();
    });
    this.pump();
  }

  /**
   * The own drive set changed (a drive served anew, or gone) while Raft wrote nothing: the same
   * durable state goes again as a new record, so that a new drive holds it and a gone drive's
   * absence is behind us (rule W: the record writer decides where). Runs as the loop's turn, so
   * it never overlaps a persist; once per distinct drive set.
   */
  private rewriteOnDriveChange(): void {
    if (this.busy || this.phase !== "running" || !this.writer || !this.durable) return;
    const live = [...this.opts.io.drives()].sort().join(",");
    if (live === this.rewritten_for || live === [...this.writer.drives()].join(",")) return;
    this.rewritten_for = live;
    this.busy = true;
    const durable = this.durable;
    this.writer.persist(durable).then(
      (w) => {
        this.busy = false;
        if (!w.ok) {
          this.senders?.stop();
          return this.outside(`amnesic after an own drive change: ${w.amnesic}; rejoining as a new member is not built yet`);
        }
        this.env.log.info("hard state rewritten for a change of own drives", { seq: w.seq, drives: this.writer!.drives().join(",") });
        this.pump();
      },
      (e) => {
        this.busy = false;
        this.outside(`internal error rewriting the hard state: ${(e as Error).message}`);
      },
    );
  }

  // ---- the loop ---------------------------------------------------------------------------------

  private push(i: Input): void {
    if (this.inbox.length >= MAX_INBOX) {
      this.dropped++;
      return;
    }
    this.inbox.push(i);
  }

  private pump(): void {
    if (this.busy || !this.raft || this.phase !== "running") return;
    this.busy = true;
    this.loop().then(
      () => {
        this.busy = false;
        // Inputs that arrived during the last await.
        if (this.phase === "running" && (this.inbox.length > 0 || this.ticks_due > 0 || this.proposals.length > 0)) this.pump();
      },
      (e) => {
        this.busy = false;
        this.outside(`internal error in the consensus loop: ${(e as Error).stack ?? e}`);
        this.timer?.cancel();
      },
    );
  }

  private async loop(): Promise<void> {
    const r = this.raft!;
    for (;;) {
      if (this.phase !== "running") return;
      for (; this.ticks_due > 0; this.ticks_due--) r.tick();
      for (const i of this.inbox.splice(0)) {
        if (i.kind === "msg") r.step(i.m);
        else if (i.kind === "unreachable") r.reportUnreachable(i.id);
        else r.reportSnapshot(i.id, i.ok);
      }
      for (const p of this.proposals.splice(0)) this.append(r, p);
      if (!r.hasReady()) return;
      await this.handle(r, r.ready());
    }
  }

  /** The loop's turn for one proposal: the core appends it, or says why not. */
  private append(r: Raft, p: ProposalInput): void {
    const b = r.basics();
    if (b.role !== "leader") {
      const lead = this.leader();
      return p.reject(new ProposalError("not_leader", lead ? `this TOMA is not the leader; the leader is ${lead.address || lead.node_id}` : "this TOMA is not the leader, and no leader is known now", lead));
    }
    if (p.body.kind === "normal" && !r.leaderReady()) {
      // A command is computed from the applied state: the leader's must include every commit.
      return p.reject(new ProposalError("refused", "the leader has not applied an entry of its own term yet; retry shortly"));
    }
    const out = p.body.kind === "normal" ? r.propose(p.body.data) : r.proposeConfChange(p.body.change);
    if (!out.ok) {
      const what = p.body.kind === "conf" ? describeChange(p.body.change) : "proposal";
      return p.reject(new ProposalError("refused", `${what} refused: ${out.reason}`, this.leader()));
    }
    this.waiters.set(out.index, { ...p, index: out.index, term: out.term, deadline: this.clock.now_ms() + p.timeout_ms });
  }

  private async handle(r: Raft, rd: Ready): Promise<void> {
    const before = this.view_basics;
    const state_before = this.state;
    if (rd.persist) {
      const w = await this.writer!.persist(rd.persist);
      if (w.ok) this.durable = rd.persist;
      if (!w.ok) {
        // W4: nothing that depends on this state may leave, and this node id is done.
        this.timer?.cancel();
        this.senders?.stop();
        return this.outside(`amnesic while running: ${w.amnesic}; rejoining as a new member is not built yet`);
      }
    }
    const config = r.config();
    // A member removed by an entry appended here (effective on append) is still owed answers: a
    // leader removing itself needs its followers' acknowledgements to commit that very removal.
    for (const m of config.members) if (m.address !== "") this.known.set(m.id, m.address);
    this.senders!.send(rd.messages, (id) => member(config, id)?.address ?? this.known.get(id) ?? null);
    for (const m of rd.messages) if (m.type === "snap" && m.offset === 0) this.env.log.info("sending a snapshot", { msg: describeMessage(m) });
    // Answers go out after advance(): whoever awaits them may propose again at once.
    const settle: (() => void)[] = [];
    if (rd.snapshot) {
      // A new member starts from the blank snapshot (index 0, no state) until the leader's arrives.
      this.state = rd.snapshot.index === 0 ? null : decodeState(rd.snapshot.data);
      this.applied_term = rd.snapshot.term;
      for (const [index, w] of this.waiters) {
        if (index > rd.snapshot.index) continue;
        this.waiters.delete(index);
        settle.push(() => w.reject(new ProposalError("leadership_lost", `entry ${index} was replaced by a snapshot from another leader; its outcome is unknown`, this.leader())));
      }
    }
    for (const e of rd.committed) {
      this.onApply?.(e.index, e.term);
      this.applied_term = e.term;
      let applied: Applied | null = null;
      if (e.kind === "normal" && this.state !== null) {
        applied = applyProposal(this.state, e);
        if (applied.kind === "applied") this.state = applied.state;
        else if (applied.kind === "refused") this.env.log.warn("committed proposal refused by the state machine", { index: e.index, code: applied.code, error: applied.error });
      }
      const w = this.waiters.get(e.index);
      if (!w) continue;
      this.waiters.delete(e.index);
      if (e.term === w.term) settle.push(() => w.resolve({ index: e.index, term: e.term, applied }));
      else settle.push(() => w.reject(new ProposalError("overwritten", `entry ${e.index} was committed with another leader's entry (term ${e.term}, not ${w.term}): the proposal never took effect`, this.leader())));
    }
    r.advance(rd);
    // Appended in a term this TOMA no longer leads: someone else decides whether it commits.
    const now = r.basics();
    for (const [index, w] of this.waiters) {
      if (now.role === "leader" && now.term === w.term) continue;
      this.waiters.delete(index);
      const lead = this.leader();
      settle.push(() =>
        w.reject(new ProposalError("leadership_lost", `this TOMA stopped leading term ${w.term} before entry ${index} was applied; its outcome is unknown (the leader now: ${lead ? lead.address || lead.node_id : "none known"})`, lead)),
      );
    }
    for (const f of settle) f();
    if (rd.role !== before.role || rd.term !== before.term || rd.lead !== before.lead) {
      this.env.log.info("TOMA cluster role", { role: rd.role, term: rd.term, leader: rd.lead ?? "(none)" });
      this.view_basics = { role: rd.role, term: rd.term, lead: rd.lead };
    }
    const b = r.basics();
    if (r.entries().length > COMPACT_AFTER_ENTRIES && this.state !== null && b.applied > r.snapshot().index) {
      r.compact(b.applied, encodeState(this.state));
    }
    this.onAdvance?.();
    if (this.state !== state_before) for (const f of [...this.stateListeners]) f();
    // Removed by a committed configuration (a leader that removed itself, or a member that heard
    // the commit): it takes no part any more.
    if (member(r.config(), r.id)) this.was_member = true;
    else if (this.was_member && !member(this.committedConfig(), r.id) && this.phase === "running") {
      this.removed(`a committed configuration change removed ${r.id}`);
    }
  }

  private view_basics: { role: string; term: number; lead: NodeId | null } = { role: "", term: -1, lead: null };
}

function hex64(env: Env): string {
  return [env.random.u32(), env.random.u32()].map((n) => n.toString(16).padStart(8, "0")).join("");
}
