/**
 * A TOMA running as a member of a TOMA cluster (`nvmesh toma run --peers`): sessions to its own
 * server's target(s), whose drives hold its hard state, and the consensus member (node.ts).
 *
 * What this mode does so far: the TOMAs found the cluster, elect a leader, replicate and persist
 * the cluster-state log, survive the loss of a minority, and change membership on the operator's
 * request (membership-ops.ts: a new server joins, a server is removed). What it does not do yet: manage drives,
 * volumes and clients (the single-TOMA controllers are not run here, so no two TOMAs ever act at
 * once); the management API refuses those routes with a message that says so (cluster-api.ts).
 */
import type { Env } from "../../engine/env.ts";
import { uuidFromString } from "../../engine/uuid.ts";
import { type Connect, DEFAULT_LINK_TIMINGS, TargetLink } from "../target-link.ts";
import type { SlotIo } from "./hard-state-io.ts";
import type { Identity } from "./identity.ts";
import { MembershipOps } from "./membership-ops.ts";
import { TomaNode } from "./node.ts";
import type { PeerPost } from "./peer-sender.ts";

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
  grace_ms?: number;
}

export class ClusterMember {
  readonly links: TargetLink[];
  readonly node: TomaNode;
  /** The operator's `cluster server add/remove`, run when this TOMA leads. */
  readonly membership: MembershipOps;

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
  }

  start(): void {
    for (const l of this.links) l.start();
    void this.node.start();
  }

  stop(): void {
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
