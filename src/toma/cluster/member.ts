/**
 * A TOMA running as a member of a TOMA cluster (`nvmesh toma run --peers`): sessions to its own
 * server's target(s), whose drives hold its hard state, and the consensus member (node.ts).
 *
 * The TOMAs found the cluster, elect a leader, replicate and persist the cluster-state log,
 * survive the loss of a minority, and change membership on the operator's request
 * (membership-ops.ts). Each TOMA claims and reports its own server's drives (drive-reporter.ts);
 * the leader adds them to the state and creates volumes (volume-ops.ts), and runs the mirror
 * control and serves the client daemons while it leads (leader-control.ts); every other TOMA
 * serves its own client daemons' watches and acknowledgements and reports them switched to the
 * leader (home-clients.ts); each TOMA copies the rebuilding legs of its own drives that the
 * leader hands to it (rebuild-runner.ts); any TOMA answers reads from its applied state.
 */
import type { Env } from "../../engine/env.ts";
import { uuidFromString } from "../../engine/uuid.ts";
import { type Connect, DEFAULT_LINK_TIMINGS, TargetLink } from "../target-link.ts";
import { DrivePool, type DriveReport, type ReportAnswer } from "./drive-pool.ts";
import { LocalFences } from "./local-fences.ts";
import { DriveReporter } from "./drive-reporter.ts";
import type { SlotIo } from "./hard-state-io.ts";
import type { Identity } from "./identity.ts";
import { MembershipOps } from "./membership-ops.ts";
import { TomaNode } from "./node.ts";
import type { PeerPost } from "./peer-sender.ts";
import { VolumeOps } from "./volume-ops.ts";
import { LeaderControl } from "./leader-control.ts";
import { DEFAULT_MIRROR_TIMINGS, type MirrorTimings } from "../mirror-control.ts";
import { type RebuildConnect, RebuildRunner } from "./rebuild-runner.ts";
import { steadyClock } from "../../engine/steady-clock.ts";
import { ClientHearing } from "./client-hearing.ts";
import type { Relay } from "./client-relay.ts";
import { HomeClients } from "./home-clients.ts";
import { followLeader } from "./relay-follow.ts";

export interface MemberOptions {
  /** This server's TOMA id (toma run --name). */
  name: string;
  /** The own server's target(s): their drives hold this TOMA's hard state. */
  targets: readonly string[];
  /** Every TOMA's management address, this one's included, the same list on every TOMA. */
  peers: readonly string[];
  connect: Connect;
  post: PeerPost;
  ask: (address: string) => Promise<Identity>;
  /** POST this TOMA's drive report to the leader at `address` (drive-pool.ts); answers its body. */
  report: (address: string, report: DriveReport) => Promise<unknown>;
  /** Opens the leader's own session to any server's target (leader-control.ts). */
  control_connect: Connect;
  /** Opens a session of a rebuild copy the leader handed to this TOMA (rebuild-runner.ts). */
  rebuild_connect: RebuildConnect;
  mirror_timings?: Partial<MirrorTimings>;
  grace_ms?: number;
  /** The cluster's server key (null: --insecure): client daemons' secrets derive from it. */
  server_key: Uint8Array | null;
  /**
   * A client daemon's call relayed to the leader, signed with the server key (client-relay.ts);
   * null: refer the daemon to the leader instead (421 naming it).
   */
  relay: Relay | null;
}

export class ClusterMember {
  readonly links: TargetLink[];
  readonly node: TomaNode;
  /** The operator's `cluster server add/remove`, run when this TOMA leads. */
  readonly membership: MembershipOps;
  /** The servers' drives as last reported (to the leader, or by it). */
  readonly pool: DrivePool;
  /** The leader's drive and volume commands. */
  readonly volumes: VolumeOps;
  readonly reporter: DriveReporter;
  /** The leader's mirror control and client service, while this TOMA leads. */
  readonly control: LeaderControl;
  /** The client daemons this TOMA heard, reported to the leader (their liveness by more than one path). */
  readonly hearing: ClientHearing;
  /** Relays a client daemon's call to the leader (client-relay.ts); null: 421 naming it. */
  readonly relay: Relay | null;
  /** Serves this TOMA's own client daemons' watches and acknowledgements (with a relay only). */
  readonly home: HomeClients | null;
  /** The rebuild copies the leader handed to this TOMA (rebuild-runner.ts). */
  readonly rebuilds: RebuildRunner;
  /** The fence tables of this server's own drives, from the applied state (local-fences.ts). */
  readonly fences: LocalFences;

  constructor(
    readonly env: Env,
    opts: MemberOptions,
  ) {
    this.links = opts.targets.map((a) => new TargetLink(env, a, opts.connect, DEFAULT_LINK_TIMINGS));
    this.node = new TomaNode(env, {
      toma_id: opts.name,
      peers: opts.peers,
      io: ownDrives(this.links),
      post: opts.post,
      ask: opts.ask,
      grace_ms: opts.grace_ms,
    });
    this.membership = new MembershipOps(env, this.node, opts.ask);
    const clock = steadyClock(env.clock);
    this.pool = new DrivePool(() => clock.now_ms());
    this.volumes = new VolumeOps(env, this.node, this.pool);
    this.hearing = new ClientHearing(() => clock.now_ms());
    // A relayed call follows the leader: sent again to a new one rather than waiting out the old.
    this.relay = opts.relay === null ? null : followLeader(env, () => this.node.leader(), opts.relay);
    // Its switched reports go to one leader each, tagged with the term they are sent in (a new
    // leader would refuse one of an older term): made again rather than followed.
    this.home = opts.relay ? new HomeClients(env, this.node, this.pool, { name: opts.name, relay: opts.relay, watch_hold_ms: opts.mirror_timings?.watch_hold_ms }) : null;
    const pause_ms = opts.mirror_timings?.rebuild_pause_ms ?? DEFAULT_MIRROR_TIMINGS.rebuild_pause_ms;
    this.rebuilds = new RebuildRunner(env, { term: () => this.node.view().term, state: () => this.node.appliedState() }, this.pool, this.links, opts.rebuild_connect, pause_ms);
    this.fences = new LocalFences({
      env,
      links: this.links,
      applied: () => {
        const st = this.node.appliedState();
        const version = this.node.appliedVersion();
        return st !== null && version !== null && this.node.phase === "running" ? { state: st, version } : null;
      },
    });
    this.reporter = new DriveReporter(env, opts.name, this.node, this.links, this.pool, opts.report, () => this.volumes.addReported(), opts.peers, () => this.hearing.report(), this.rebuilds, (d) => this.fences.confirmed(d));
    this.fences.onConfirmed = () => this.reporter.kick();
    this.control = new LeaderControl(env, this.node, this.pool, this.volumes, { connect: opts.control_connect, mirror_timings: opts.mirror_timings, server_key: opts.server_key, name: opts.name });
  }

  /** A server's report, on the leader: kept, the new drives added; answers the pool and the rebuilds handed to it. */
  received(r: DriveReport): ReportAnswer {
    this.pool.report(r);
    const ctl = this.control.active();
    const clients = ctl?.mirror.clients;
    for (const h of r.clients ?? []) clients?.heardVia(h.id, h.heard_ms_ago);
    this.volumes.addReported();
    ctl?.delegation.received(r.server, r.rebuilds ?? []);
    const orders = ctl?.delegation.ordersFor(r.server) ?? [];
    return { ...this.pool.view(), ...(orders.length > 0 ? { rebuild_orders: orders } : {}) };
  }

  start(): void {
    for (const l of this.links) l.start();
    void this.node.start();
    this.reporter.start();
    this.fences.start();
    this.control.start();
    this.home?.start();
  }

  stop(): void {
    this.home?.stop();
    this.control.stop();
    this.rebuilds.stop();
    this.fences.stop();
    this.reporter.stop();
    this.node.stop();
    for (const l of this.links) l.stop();
  }
}

/**
 * The own drives as the hard state reaches them: every drive the own target(s) serve, through this
 * TOMA's session (HELLO as role toma under its name, so a new process is served only after the
 * previous one's writes finished: docs/toma-cluster.md, A4).
 */
export function ownDrives(links: readonly TargetLink[]): SlotIo {
  const where = (u: string) => {
    const l = links.find((x) => x.session !== null && x.drives.some((d) => d.drive_uuid === u));
    if (!l) throw new Error(`drive ${u} is not served by this server's target(s) now`);
    return l.session!;
  };
  return {
    drives: () => links.flatMap((l) => (l.session === null ? [] : l.drives.filter((d) => d.state === "ok").map((d) => d.drive_uuid))),
    read: async (u) => where(u).metaRead(uuidFromString(u)),
    write: async (u, g, p) => where(u).metaWrite(uuidFromString(u), g, p),
  };
}
