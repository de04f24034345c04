/**
 * The soak's faults: what each kind does to a LabCluster, and the seeded draw of the next one.
 * The draw depends on the seed and the options only (never on timing), so a seed replays the same
 * sequence of faults; when each one starts depends on how fast the volume recovers from the last.
 */
import { Prng } from "../../sim/prng.ts";
import type { OneWayCut } from "../support/netns.ts";
import { type LabCluster, TARGET_PORT, TOMA_PORT } from "./lab-cluster.ts";

export const FAULT_KINDS = ["kill", "toma-kill", "stop", "linkdown", "oneway"] as const;
export type FaultKind = (typeof FAULT_KINDS)[number];

/** The one-way cuts drawn from (toma-toma only with a TOMA per server). */
export const ONE_WAY = ["client-target", "target-client", "client-toma", "toma-toma"] as const;
export type OneWay = (typeof ONE_WAY)[number];

/**
 * Each kind's variants. A selector (`--faults`) names a kind, meaning all its variants, or one
 * variant as `kind:variant`, so that a fault the product does not survive yet can be left out
 * while its siblings are still drawn, and switched on when it does.
 */
export const FAULT_VARIANTS: Record<FaultKind, readonly string[]> = {
  kill: [],
  // toma: the TOMA (a TOMA per server: the leader's); server: the leader's whole server, TOMA and
  // target; leg: the TOMA (the leader's) and a leg's target.
  "toma-kill": ["toma", "server", "leg"],
  stop: ["target", "toma"],
  linkdown: [],
  oneway: ONE_WAY,
};

/** Variants that need a TOMA per server (--cluster): without one they are not drawn. */
const CLUSTER_ONLY: readonly string[] = ["toma-kill:server", "oneway:toma-toma"];

/** The variants of a kind that the mode has. */
function variantsIn(kind: FaultKind, cluster_mode: boolean): string[] {
  return FAULT_VARIANTS[kind].filter((v) => cluster_mode || !CLUSTER_ONLY.includes(`${kind}:${v}`));
}

/** Every selector: each kind, and each `kind:variant`. */
export const FAULT_SELECTORS: readonly string[] = FAULT_KINDS.flatMap((k) => [k, ...FAULT_VARIANTS[k].map((v) => `${k}:${v}`)]);

/** What is drawn from: each kind selected, with its selected variants (empty: the kind has none). */
export type FaultSelection = { kind: FaultKind; variants: string[] }[];

/**
 * Parses selectors into a selection, kinds in FAULT_KINDS order. Unknown selectors and a
 * cluster-only variant (CLUSTER_ONLY) without a TOMA per server are errors; a bare kind leaves
 * those out when there is one TOMA (so a seed of single mode draws what it drew before they came).
 */
export function selectFaults(selectors: readonly string[], cluster_mode: boolean): FaultSelection {
  if (selectors.length === 0) throw new Error("no fault kinds to draw from");
  const chosen = new Map<FaultKind, Set<string>>();
  for (const sel of selectors) {
    if (!FAULT_SELECTORS.includes(sel)) throw new Error(`fault '${sel}' is not one of ${FAULT_SELECTORS.join(", ")}`);
    const [kind, variant] = sel.split(":") as [FaultKind, string | undefined];
    if (CLUSTER_ONLY.includes(sel) && !cluster_mode) throw new Error(`fault '${sel}' needs a TOMA per server (--cluster)`);
    const set = chosen.get(kind) ?? new Set<string>();
    const all = variantsIn(kind, cluster_mode);
    for (const v of variant === undefined ? all : [variant]) set.add(v);
    chosen.set(kind, set);
  }
  return FAULT_KINDS.filter((k) => chosen.has(k)).map((kind) => ({ kind, variants: FAULT_VARIANTS[kind].filter((v) => chosen.get(kind)!.has(v)) }));
}

/** The selection written back as the shortest list of selectors (a kind whose variants are all in). */
export function faultSelectors(sel: FaultSelection, cluster_mode: boolean): string[] {
  return sel.flatMap(({ kind, variants }) => {
    const all = variantsIn(kind, cluster_mode);
    return variants.length === all.length ? [kind] : variants.map((v) => `${kind}:${v}`);
  });
}

export interface FaultTimes {
  /** kill, toma-kill: how long the process stays dead before it is started again (range, ms). */
  restart_ms: [number, number];
  /** stop: how long SIGSTOP lasts before SIGCONT. */
  pause_ms: number;
  /** linkdown: how long the cable stays pulled (range, ms). */
  linkdown_ms: [number, number];
  /** oneway: how long the one-way drop lasts. */
  cut_ms: number;
  /**
   * toma-kill:leg: how long the TOMA and the leg's target stay dead; longer than the client's
   * 30 s I/O timeout, since what it asks is whether writes survive a dead leg with no TOMA to
   * move the volume to Degraded.
   */
  orphan_ms: number;
}

export const DEFAULT_TIMES: FaultTimes = {
  restart_ms: [3_000, 15_000],
  pause_ms: 35_000,
  linkdown_ms: [5_000, 35_000],
  cut_ms: 35_000,
  orphan_ms: 35_000,
};

/** One drawn fault: kind, victim(s), how long it lasts. Victims are 0-based server indexes. */
export interface FaultPlan {
  kind: FaultKind;
  /** The server hit (kill, stop, linkdown, oneway's server end); toma-kill finds its own. */
  server: number;
  /** The variant drawn, for kinds that have them (FAULT_VARIANTS). */
  variant?: string;
  /** toma-kill:leg: which leg of the volume (column index) loses its target after the TOMA. */
  leg?: number;
  /** stop: which process of the server is paused. */
  process?: "target" | "toma";
  /** oneway: the direction cut; toma-toma also names the second server. */
  way?: OneWay;
  peer?: number;
  /** oneway:toma-toma: the leader's TOMA is one end (found when injected): which way is cut. */
  from_leader?: boolean;
  hold_ms: number;
}

export class FaultDraw {
  private readonly rng: Prng;
  readonly selection: FaultSelection;

  /** `legs`: the volume's legs, which toma-kill:leg draws from. */
  constructor(
    readonly seed: number,
    selectors: readonly string[],
    readonly servers: number,
    readonly cluster_mode: boolean,
    readonly times: FaultTimes,
    readonly legs = 2,
  ) {
    this.selection = selectFaults(selectors, cluster_mode);
    this.rng = new Prng(seed).fork("soak-faults");
  }

  next(): FaultPlan {
    const r = this.rng;
    // A kind with one variant selected draws no variant: a seed drawn before a kind gained a
    // variant (toma-kill had one) replays the same sequence with that one variant selected.
    const variantOf = (variants: string[]) => (variants.length === 1 ? variants[0]! : r.pick(variants));
    const { kind, variants } = r.pick(this.selection);
    const server = r.int(0, this.servers);
    const span = ([lo, hi]: [number, number]) => Math.round(r.range(lo, hi));
    switch (kind) {
      case "kill":
        return { kind, server, hold_ms: span(this.times.restart_ms) };
      case "toma-kill": {
        const variant = variantOf(variants);
        if (variant === "leg") return { kind, variant, server, leg: r.int(0, this.legs), hold_ms: this.times.orphan_ms };
        return { kind, variant, server, hold_ms: span(this.times.restart_ms) };
      }
      case "stop": {
        // Single mode: the TOMA lives in s1, so a paused TOMA is always s1's; a TOMA per server:
        // the leader's, found when injected.
        const process = variantOf(variants) as "target" | "toma";
        return { kind, variant: process, server: process === "toma" && !this.cluster_mode ? 0 : server, process, hold_ms: this.times.pause_ms };
      }
      case "linkdown":
        return { kind, server, hold_ms: span(this.times.linkdown_ms) };
      case "oneway": {
        const way = variantOf(variants) as OneWay;
        const peer = (server + r.int(1, this.servers)) % this.servers;
        // client-toma: the client's TOMA is s1's (its -m address); a TOMA per server: the leader's,
        // where the client daemon is homed, found when injected.
        const s = way === "client-toma" ? 0 : server;
        if (way === "toma-toma") return { kind, variant: way, server: s, way, peer, from_leader: r.int(0, 2) === 0, hold_ms: this.times.cut_ms };
        return { kind, variant: way, server: s, way, hold_ms: this.times.cut_ms };
      }
    }
  }
}

/** A fault in force: what it did, and how to undo it. */
export interface ActiveFault {
  plan: FaultPlan;
  label: string;
  heal: () => Promise<void>;
}

/** Between the TOMA's death and a leg's, in toma-kill:leg: the client notices the first alone. */
const SECOND_KILL_MS = 2_000;

/** Injects a drawn fault into the cluster; returns how to heal it. `volume`: the soak's volume. */
export async function inject(c: LabCluster, plan: FaultPlan, volume: string): Promise<ActiveFault> {
  const host = c.server(plan.server);
  switch (plan.kind) {
    case "kill": {
      await c.killTarget(plan.server);
      return { plan, label: `kill -9 target ${host}`, heal: () => c.restartTarget(plan.server) };
    }
    case "toma-kill": {
      const cluster = c.labOpts.cluster_mode;
      // The legs' servers are read while a TOMA still answers.
      const v = plan.variant === "leg" ? await c.volume(volume) : null;
      const legServer = v ? c.serverOf(v, plan.leg!) : null;
      const leader = cluster ? await c.leader() : 0;
      // A TOMA per server, leg: the TOMA and the leg's target of one server, so that one server is
      // impaired as with every fault: the leader's when it holds a leg of the volume (the TOMA
      // that leads dies with a leg), else the drawn leg's. The leader's TOMA with a target of
      // another server leaves a majority of TOMAs but only one with its drives: a TOMA without
      // its drives cannot vote (its vote must be durable first), so no leader is elected until
      // one of them is back (docs/soak.md, results).
      const leaderLeg = cluster && v ? v.columns.findIndex((_, i) => c.serverOf(v, i) === leader) : -1;
      const tomaServer = cluster && legServer !== null && leaderLeg < 0 ? legServer : leader;
      const legOfVictim = leaderLeg >= 0 ? leaderLeg : plan.leg;
      const thost = c.server(tomaServer);
      const downTargets = new Set<number>();
      let label: string;
      if (!cluster) {
        await c.killToma();
        label = `kill -9 TOMA (${thost})`;
      } else if (plan.variant === "server" || plan.variant === "leg") {
        // A whole server: its TOMA and its target, at once.
        await Promise.all([c.killTomaOn(tomaServer), c.killTarget(tomaServer)]);
        downTargets.add(tomaServer);
        const role = tomaServer === leader ? "leader" : "follower";
        label = `kill -9 ${role} ${thost}'s TOMA and target${plan.variant === "leg" ? ` (leg ${legOfVictim})` : ""}`;
      } else {
        await c.killTomaOn(tomaServer);
        label = `kill -9 leader ${thost}'s TOMA`;
      }
      if (!cluster && legServer !== null) {
        // One TOMA: the client notices its death alone first.
        await Bun.sleep(SECOND_KILL_MS);
        await c.killTarget(legServer);
        downTargets.add(legServer);
        label += `, then target ${c.server(legServer)} (leg ${plan.leg})`;
      }
      return {
        plan: { ...plan, server: cluster ? tomaServer : (legServer ?? tomaServer), ...(legOfVictim !== undefined ? { leg: legOfVictim } : {}) },
        label,
        heal: async () => {
          for (const t of downTargets) await c.restartTarget(t);
          if (cluster) await c.startTomaOn(tomaServer);
          else await c.restartToma();
        },
      };
    }
    case "stop": {
      const leader = plan.process === "toma" && c.labOpts.cluster_mode ? await c.leader() : null;
      const server = leader ?? plan.server;
      const d = plan.process === "toma" ? (leader !== null ? c.tomas[server] : c.toma) : c.targets[server];
      if (!d?.alive) throw new Error(`stop: ${plan.process} of ${c.server(server)} is not running`);
      const pid = d.proc.pid;
      process.kill(pid, "SIGSTOP");
      return {
        plan: { ...plan, server },
        label: `SIGSTOP ${leader !== null ? "leader's " : ""}${plan.process} ${c.server(server)} for ${(plan.hold_ms / 1000).toFixed(0)} s`,
        heal: async () => {
          if (d.alive) process.kill(pid, "SIGCONT");
        },
      };
    }
    case "linkdown": {
      await c.lab.setLink(host, false);
      return { plan, label: `link down ${host}`, heal: () => c.lab.setLink(host, true) };
    }
    case "oneway": {
      let cuts: OneWayCut[];
      let what: string | undefined;
      let server = plan.server;
      switch (plan.way!) {
        case "client-target":
          cuts = [await c.lab.cutOneWay("client", host, { to_port: TARGET_PORT })];
          break;
        case "target-client":
          cuts = [await c.lab.cutOneWay(host, "client", { from_port: TARGET_PORT })];
          break;
        case "client-toma": {
          // A TOMA per server: the client is cut off from the leader's TOMA (its home relays its
          // calls there, or it is its home); the other TOMAs still hear it.
          if (c.labOpts.cluster_mode) server = await c.leader();
          cuts = [await c.lab.cutOneWay("client", c.server(server), { to_port: TOMA_PORT })];
          break;
        }
        case "toma-toma": {
          // The leader's TOMA and another (the one drawn, or after the leader when it is the
          // leader); everything one says to the other, its requests and its answers.
          const leader = await c.leader();
          const other = plan.server !== leader ? plan.server : plan.peer !== leader ? plan.peer! : (leader + 1) % c.serverCount();
          const [from, to] = plan.from_leader ? [leader, other] : [other, leader];
          server = from;
          const [f, t] = [c.server(from), c.server(to)];
          cuts = [await c.lab.cutOneWay(f, t, { to_port: TOMA_PORT }), await c.lab.cutOneWay(f, t, { from_port: TOMA_PORT })];
          what = `TOMA ${f}${from === leader ? " (leader)" : ""} -> TOMA ${t}${to === leader ? " (leader)" : ""}`;
          break;
        }
      }
      what ??= plan.way === "client-toma" && c.labOpts.cluster_mode ? `${cuts[0]!.label} (the leader's TOMA)` : cuts[0]!.label;
      return {
        plan: { ...plan, server },
        label: `one-way drop ${what}`,
        heal: async () => {
          for (const x of cuts) await c.lab.heal(x);
        },
      };
    }
  }
}
