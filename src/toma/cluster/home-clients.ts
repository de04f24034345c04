/**
 * A TOMA's own client daemons, served on the TOMA they are homed on (DESIGN §3 and §9: each TOMA
 * sends SWITCH_TOPO to its own clients, collects their acknowledgements, and reports to the
 * leader). On a TOMA that does not run the leader's control:
 *
 * - a **watch** is answered from this TOMA's applied state, built by the views the leader uses
 *   (volume-views.ts watchAnswerOf, attachInfoOf), held until something the client does not know
 *   happens here (an entry applied, the stable generation moved, its acknowledgement taken);
 * - an **acknowledgement** is recorded here and answered once a switched report carrying it was
 *   taken by the leader (switched.ts): one report carries every acknowledgement that arrived
 *   meanwhile, and one that cannot reach the leader is answered 503 (the daemon tries its next
 *   TOMA; this one keeps it and reports it later);
 * - one exchange with the leader at a time is held there (`known_stable`) and re-sent as soon as
 *   it is answered: it carries every acknowledgement held here (the periodic report, at least
 *   every watch hold), and its answer the leader's stable generation, as soon as it moves.
 *
 * Everything else (registration, attach, leave, a leg's failure report) changes the replicated
 * state or is the leader's to judge: relayed (client-relay.ts). So is a watch or an acknowledgement
 * this TOMA cannot serve well: while it has not exchanged a report with its term's leader within
 * two watch holds (it may be cut off from it: a client kept here would not be counted), for a
 * client its applied state does not list, and while its applied state is older than what the
 * client holds (below).
 *
 * **Never an older topology than the client holds.** A watch names the generation the client
 * knows (`known`), and it acknowledges only generations it was answered; topologies and
 * generations are of one state (attachInfoOf). A TOMA answers only from an applied state at
 * least that new: it waits for its apply to catch up for a watch hold, and relays the watch to
 * the leader (whose applied state holds every committed entry once it serves) if it did not.
 * An acknowledgement above the applied generation is relayed too.
 *
 * Runtime knowledge only, never replicated; sans-I/O over Env.
 */
import type { Env } from "../../engine/env.ts";
import { sleep } from "../../engine/env.ts";
import { steadyClock } from "../../engine/steady-clock.ts";
import * as v from "valibot";
import type { ApiResponse, Caller } from "../api-auth.ts";
import { ClientAckBody } from "../api-types.ts";
import type { ClusterState } from "../cluster-state.ts";
import { DEFAULT_CLIENT_TIMINGS } from "../clients.ts";
import { attachInfoOf, watchAnswerOf } from "../volume-views.ts";
import { clientRouteRefusal, type Relay } from "./client-relay.ts";
import type { DrivePool } from "./drive-pool.ts";
import type { TomaNode } from "./node.ts";
import { DEFAULT_FOLLOW_TIMINGS } from "./relay-follow.ts";
import { SWITCHED_PATH, SwitchedAnswerSchema, type SwitchedReport } from "./switched.ts";

/** Pause after a failed exchange with the leader before the next. */
const RETRY_MS = 500;
/**
 * Longest an acknowledgement waits for the report carrying it: as long as a relayed call waits for
 * a leader (relay-follow.ts), so that an election, this TOMA's own included, is waited out here
 * rather than answered 503, which sends the daemon away from its home (its own call gives up at 10 s).
 */
const ACK_WAIT_MS = DEFAULT_FOLLOW_TIMINGS.budget_ms;
/** How often the leader is looked at while a report is in flight. */
const LEADER_POLL_MS = 100;
/** A report abandoned for a new leader (untilLeaderChanges). */
const LEFT = Symbol("left for a new leader");

const err = (status: number, error: string): ApiResponse => ({ status, body: { error } });

export interface HomeClientsOptions {
  /** This TOMA's id (the report's `server`). */
  name: string;
  /** A management call to the leader, signed with the server key (the relay's). */
  relay: Relay;
  /** How long a watch is held (and the exchange with the leader): the client timings'. */
  watch_hold_ms?: number;
}

export class HomeClients {
  /** Client id → highest generation it acknowledged here (or through this TOMA's relay). */
  private readonly acks = new Map<number, number>();
  /** The highest stable generation a leader answered: a fact once reached (switched.ts). */
  private leader_stable = -1;
  /** The last exchange a leader answered: its term and address, on the steady clock. */
  private contact: { term: number; address: string; at: number } | null = null;
  /** Held watches, woken on any news. */
  private waiters: (() => void)[] = [];
  /** Acknowledgements taken since the last report was sent; the report in flight, if any. */
  private seq = 0;
  private sending = false;
  private readonly ack_waiters: { want: number; done: (ok: boolean) => void }[] = [];
  private stopped = true;
  private readonly clock;
  private readonly hold_ms: number;
  private readonly wake = () => this.notify();

  constructor(
    private readonly env: Env,
    private readonly node: TomaNode,
    private readonly pool: DrivePool,
    private readonly opts: HomeClientsOptions,
  ) {
    this.clock = steadyClock(env.clock);
    this.hold_ms = opts.watch_hold_ms ?? DEFAULT_CLIENT_TIMINGS.watch_hold_ms;
  }

  start(): void {
    this.stopped = false;
    this.node.stateListeners.add(this.wake);
    void this.pollLoop();
  }

  stop(): void {
    this.stopped = true;
    this.node.stateListeners.delete(this.wake);
    this.notify();
    this.settleAcks(Infinity, false);
  }

  /**
   * Serves a client daemon's watch or acknowledgement here; null: not here (the caller relays it).
   * `route` is the path after /v1/clients/ (id first), already checked to be a client route.
   */
  async serve(method: string, path: string, route: readonly string[], body: unknown, caller: Caller): Promise<ApiResponse | null> {
    if (route.length !== 2 || (route[1] !== "watch" && route[1] !== "ack")) return null;
    const no = clientRouteRefusal(route, caller);
    if (no) return no;
    const id = Number(route[0]);
    if (!Number.isSafeInteger(id) || id <= 0) return null;
    if (route[1] === "watch") {
      if (method !== "GET") return err(405, `${method} not allowed on ${path.split("?")[0]}; use GET`);
      return this.watch(id, path);
    }
    if (method !== "POST") return err(405, `${method} not allowed on ${path}; use POST`);
    return this.ack(id, body);
  }

  /** Whether this TOMA serves its clients itself now: a running non-leader, in touch with its term's leader. */
  serving(): boolean {
    if (this.stopped) return false;
    const v = this.node.view();
    if (v.phase !== "running" || v.role === "leader" || v.term === null) return false;
    const lead = this.node.leader();
    const c = this.contact;
    return lead !== null && c !== null && c.term === v.term && c.address === lead.address && this.clock.now_ms() - c.at <= 2 * this.hold_ms;
  }

  /** The stable generation answered with `state`: never above its generation. */
  stableFor(state: ClusterState): number {
    return Math.min(state.generation, Math.max(state.stable, this.leader_stable));
  }

  /** The acknowledgement held for a client: this TOMA's, or what the replicated state says every client acknowledged. */
  ackedOf(id: number, state: ClusterState): number {
    return Math.max(this.acks.get(id) ?? 0, state.stable);
  }

  private async watch(id: number, path: string): Promise<ApiResponse | null> {
    const q = new URLSearchParams(path.split("?")[1] ?? "");
    const known = Number(q.get("known") ?? "-1");
    const known_stable = Number(q.get("stable") ?? "-1");
    if (!Number.isSafeInteger(known) || !Number.isSafeInteger(known_stable)) return err(400, "known and stable must be integers (the generations the client holds)");
    if (!this.serving() || !this.listed(id)) return null;
    // Behind what the client holds: wait for this TOMA's apply, else the leader answers.
    if (this.node.appliedState()!.generation < known) await this.until(() => (this.node.appliedState()?.generation ?? -1) >= known);
    const before = this.node.appliedState();
    if (!before || before.generation < known) return null;
    if (before.generation <= known && this.stableFor(before) <= known_stable && this.ackedOf(id, before) >= before.generation) await this.changed(this.hold_ms);
    const state = this.node.appliedState();
    const entry = state?.clients.find((c) => c.id === id);
    if (!state || !entry || !this.serving()) return null;
    // Applied states only grow: the one answered is at least the one that passed the check above.
    if (state.generation < known) throw new Error(`home TOMA about to answer generation ${state.generation} to a client that holds ${known}`);
    const stable = this.stableFor(state);
    const where = (d: string) => this.pool.locate(d)?.drive.target ?? null;
    return { status: 200, body: watchAnswerOf(state, entry.volumes, this.ackedOf(id, state), stable, (vol) => attachInfoOf(vol, state, where, stable)) };
  }

  private async ack(id: number, body: unknown): Promise<ApiResponse | null> {
    const r = v.safeParse(ClientAckBody, body);
    if (!r.success) return err(400, `invalid ack: ${r.issues.map((i) => i.message).join("; ")}`);
    const state = this.node.appliedState();
    if (!this.serving() || !state || !this.listed(id) || r.output.generation > state.generation) return null;
    this.acked(id, r.output.generation);
    if (!(await this.reported())) {
      return err(503, "this TOMA took the acknowledgement but could not pass it to the leader yet; acknowledge again (here or at another TOMA)");
    }
    return { status: 200, body: { acked: this.ackedOf(id, this.node.appliedState() ?? state) } };
  }

  /** An acknowledgement a client made here, or through this TOMA's relay. */
  acked(id: number, generation: number): void {
    if (generation <= (this.acks.get(id) ?? -1)) return;
    this.acks.set(id, generation);
    this.seq++;
    this.notify();
  }

  private listed(id: number): boolean {
    return this.node.appliedState()?.clients.some((c) => c.id === id) ?? false;
  }

  /** Resolves true once a report sent after now was taken by the leader; false if it failed or took too long. */
  private reported(): Promise<boolean> {
    const want = this.seq;
    return new Promise((resolve) => {
      const w = {
        want,
        done: (ok: boolean) => {
          const i = this.ack_waiters.indexOf(w);
          if (i < 0) return;
          this.ack_waiters.splice(i, 1);
          t.cancel();
          resolve(ok);
        },
      };
      const t = this.env.timers.after(ACK_WAIT_MS, () => w.done(false));
      this.ack_waiters.push(w);
      void this.sendAcks();
    });
  }

  /**
   * Sends the acknowledgements taken since the last report, one report at a time (answered at
   * once); a report the leader did not take is made again (to the leader known then) while an
   * acknowledgement still waits for it: a change of leader costs the daemon no move of its home.
   */
  private async sendAcks(): Promise<void> {
    if (this.sending) return;
    this.sending = true;
    try {
      while (!this.stopped && this.ack_waiters.length > 0) {
        const carried = this.seq;
        if (await this.exchange(false)) this.settleAcks(carried, true);
        else await sleep(this.env, LEADER_POLL_MS);
      }
    } finally {
      this.sending = false;
    }
  }

  private settleAcks(carried: number, ok: boolean): void {
    for (const w of this.ack_waiters.filter((x) => x.want <= carried)) w.done(ok);
  }

  /** The exchange held at the leader, sent again as soon as it is answered. */
  private async pollLoop(): Promise<void> {
    while (!this.stopped) {
      if (!(await this.exchange(true))) await sleep(this.env, RETRY_MS);
    }
  }

  /**
   * One report to the leader this TOMA knows, with every acknowledgement it holds for a client of
   * its applied state; `hold`: answered once the stable generation moved past the one known here.
   */
  private async exchange(hold: boolean): Promise<boolean> {
    const view = this.node.view();
    const lead = this.node.leader();
    if (view.phase !== "running" || view.role === "leader" || view.term === null || lead === null || lead.address === "") return false;
    const state = this.node.appliedState();
    if (state) for (const id of [...this.acks.keys()]) if (!state.clients.some((c) => c.id === id)) this.acks.delete(id);
    const report: SwitchedReport = {
      server: this.opts.name,
      term: view.term,
      clients: [...this.acks].map(([id, acked]) => ({ id, acked })),
      // Held only at a leader already in touch: a new one answers at once, so this TOMA serves
      // its clients again without waiting a hold (its stable generation, restored lower, would
      // hold the report that long).
      ...(hold && this.contact?.term === view.term && this.contact.address === lead.address ? { known_stable: this.leader_stable } : {}),
    };
    try {
      const raw = await this.untilLeaderChanges(this.opts.relay(lead.address, "POST", SWITCHED_PATH, report), lead.address, view.term);
      if (raw === LEFT) return false;
      const a = v.safeParse(SwitchedAnswerSchema, raw);
      if (!a.success) throw new Error(`the leader answered a switched report with ${a.issues[0]!.message}`);
      if (a.output.stable > this.leader_stable) {
        this.leader_stable = a.output.stable;
        this.notify();
      }
      if (a.output.term === view.term) this.contact = { term: a.output.term, address: lead.address, at: this.clock.now_ms() };
      return true;
    } catch (e) {
      this.env.log.debug("switched report to the leader failed", { leader: lead.address, error: (e as Error).message });
      return false;
    }
  }

  /**
   * `call`'s outcome, or LEFT as soon as this TOMA knows another leader or term than the one it
   * was sent to: a report held at a leader whose server was then cut off would wait out the
   * transport's timeout (8 s), while the new leader, elected within about 2 s, waits for these
   * clients' acknowledgements and they for its stable generation. Its late answer is ignored.
   */
  private async untilLeaderChanges(call: Promise<unknown>, address: string, term: number): Promise<unknown> {
    let settled = false;
    const out = call.finally(() => (settled = true));
    out.catch(() => {}); // abandoned: its failure is nobody's news
    const left = (async () => {
      while (!settled && !this.stopped && this.node.leader()?.address === address && this.node.view().term === term) await sleep(this.env, LEADER_POLL_MS);
      return LEFT;
    })();
    return await Promise.race([out, left]);
  }

  private changed(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const t = this.env.timers.after(ms, () => resolve());
      this.waiters.push(() => {
        t.cancel();
        resolve();
      });
    });
  }

  /** Waits (a watch hold at most) until `cond` holds. */
  private async until(cond: () => boolean): Promise<void> {
    const end = this.clock.now_ms() + this.hold_ms;
    while (!cond() && !this.stopped && this.clock.now_ms() < end) await this.changed(end - this.clock.now_ms());
  }

  private notify(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }
}
