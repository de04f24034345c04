/**
 * The operator's membership changes (`cluster server add` / `remove`), run on the leader: each is
 * a sequence of single-server configuration changes chosen by the pure policy
 * (consensus/membership.ts, `nextMembershipChange`), each proposed through the member's proposal
 * path and awaited until committed and applied here before the next is chosen:
 *
 *   add:    add_learner(new) → the learner catches up (snapshot, then log) → [remove(its old
 *           identity), if the server had one] → promote(new)
 *   remove: remove(each member of that server), learners first; never the last voter
 *
 * One operation at a time per TOMA, and the core refuses a second uncommitted change anyway.
 * docs/toma-cluster.md, "Membership".
 */
import type { Env } from "../../engine/env.ts";
import { sleep } from "../../engine/env.ts";
import { steadyClock } from "../../engine/steady-clock.ts";
import { describeChange, describeConfig, member, voterIds } from "../consensus/config.ts";
import { membershipWarnings, type MembershipInput, nextMembershipChange, nodeId, tomaIdOf } from "../consensus/membership.ts";
import type { ConfChange, Config } from "../consensus/types.ts";
import type { Identity } from "./identity.ts";
import { LeaderOpError as MembershipError, leaderOnly, proposalFailure } from "./leader-gate.ts";
import type { TomaNode } from "./node.ts";

export interface MembershipTimings {
  /** How long a new learner may take to catch up before the add gives up (it stays a learner). */
  catch_up_ms: number;
  /** How long one configuration change may take to commit and apply. */
  change_ms: number;
}

export const DEFAULT_MEMBERSHIP_TIMINGS: MembershipTimings = { catch_up_ms: 30_000, change_ms: 10_000 };

export interface MembershipResult {
  /** The changes made, in order (none: nothing to do). */
  changes: string[];
  /** The configuration after them, as this TOMA acts on it. */
  config: Config;
  describe: string;
  /** Fewer than 3 voters, an even count: what the configuration cannot survive. */
  warnings: string[];
  /** The leader removed itself: the others elect a new leader. */
  leader_removed: boolean;
}

/** Membership's refusals: the leader-only operations' error (leader-gate.ts). */
export { LeaderOpError as MembershipError } from "./leader-gate.ts";

export class MembershipOps {
  private running: string | null = null;
  private readonly clock;

  constructor(
    private readonly env: Env,
    private readonly node: TomaNode,
    private readonly ask: (address: string) => Promise<Identity>,
    private readonly timings: MembershipTimings = DEFAULT_MEMBERSHIP_TIMINGS,
  ) {
    this.clock = steadyClock(env.clock);
  }

  /** Adds the server whose TOMA answers at `address` as `name`: a learner first, then a voter. */
  add(name: string, address: string): Promise<MembershipResult> {
    return this.exclusive(`add ${name}`, async () => {
      leaderOnly(this.node);
      let id: Identity;
      try {
        id = await this.ask(address);
      } catch (e) {
        throw new MembershipError(502, `cannot ask the TOMA at ${address} who it is: ${(e as Error).message}`);
      }
      if (id.toma_id !== name) throw new MembershipError(409, `the TOMA at ${address} is named '${id.toma_id}', not '${name}'`);
      const cluster = this.node.view().cluster_uuid;
      const start = `start it with 'nvmesh toma run --name ${name} --peers ${address},<a member's address>' (blank drives) and retry`;
      if (id.status.kind !== "member" || id.incarnation === null) {
        const why = id.status.kind === "outside" ? `outside any cluster: ${id.status.reason}` : id.status.kind === "blank" ? "blank and has not found this cluster yet" : "still starting";
        throw new MembershipError(409, `the TOMA at ${address} is not waiting to join this cluster (it is ${why}); ${start}`);
      }
      if (id.status.cluster_uuid !== cluster) {
        throw new MembershipError(409, `the TOMA at ${address} belongs to cluster ${id.status.cluster_uuid}, not this one (${cluster})`);
      }
      const other = this.node.config().members.find((m) => m.address === address && tomaIdOf(m.id) !== name);
      if (other) throw new MembershipError(409, `${address} is the address of member ${other.id}; remove it first`);
      const announced = [{ toma_id: name, incarnation: id.incarnation, address, has_drives: true }];
      const current = nodeId(name, id.incarnation);
      const changes: string[] = [];
      let waiting_since: number | null = null;
      for (;;) {
        const next = nextMembershipChange(this.input({ announced, remove: [] }));
        if (next) {
          waiting_since = null;
          changes.push(await this.change(next));
          continue;
        }
        if (member(this.node.config(), current)?.voter) return this.result(changes, false);
        // A learner still catching up (the snapshot, then the log): wait for its match.
        const now = this.clock.now_ms();
        waiting_since ??= now;
        leaderOnly(this.node);
        if (now - waiting_since > this.timings.catch_up_ms) {
          const r = this.node.replication(current);
          throw new MembershipError(
            504,
            `${current} is a learner but did not catch up within ${this.timings.catch_up_ms / 1000} s (it holds the log up to ${r.match}, the commit is ${r.commit}); ` +
              `it stays a learner: check that it is up and reachable from the leader, and run the add again to promote it`,
          );
        }
        await sleep(this.env, 100);
      }
    });
  }

  /** Removes every member of the server `name` (its TOMA then stops taking part). */
  remove(name: string): Promise<MembershipResult> {
    return this.exclusive(`remove ${name}`, async () => {
      leaderOnly(this.node);
      const config = this.node.config();
      const mine = config.members.filter((m) => tomaIdOf(m.id) === name);
      if (mine.length === 0) throw new MembershipError(404, `no member of the TOMA cluster is named '${name}' (${describeConfig(config)})`);
      if (voterIds(config).every((v) => tomaIdOf(v) === name)) {
        throw new MembershipError(409, `'${name}' holds the last voter of the TOMA cluster: removing it would leave nobody to elect a leader or commit anything; add another server first`);
      }
      const self = this.node.view().node_id;
      const leader_removed = mine.some((m) => m.id === self);
      const changes: string[] = [];
      for (;;) {
        const next = nextMembershipChange(this.input({ announced: [], remove: [name] }));
        if (!next) return this.result(changes, leader_removed);
        changes.push(await this.change(next));
      }
    });
  }

  private input(x: Pick<MembershipInput, "announced" | "remove">): MembershipInput {
    return { config: this.node.config(), match: (id) => this.node.replication(id).match, commit: this.node.view().commit ?? 0, ...x };
  }

  /** One configuration change through the proposal path, awaited until applied here. */
  private async change(c: ConfChange): Promise<string> {
    leaderOnly(this.node);
    const what = describeChange(c);
    this.env.log.info("membership change", { change: what });
    try {
      await this.node.propose({ kind: "conf", change: c }, this.timings.change_ms);
    } catch (e) {
      throw proposalFailure(this.node, what, e);
    }
    return what;
  }

  private result(changes: string[], leader_removed: boolean): MembershipResult {
    const config = this.node.config();
    return { changes, config, describe: describeConfig(config), warnings: membershipWarnings(config), leader_removed };
  }


  private async exclusive<T>(what: string, fn: () => Promise<T>): Promise<T> {
    if (this.running !== null) throw new MembershipError(409, `a membership change is already running here (${this.running}); wait for it to finish`);
    this.running = what;
    try {
      return await fn();
    } finally {
      this.running = null;
    }
  }
}
