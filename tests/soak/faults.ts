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
  // toma: the TOMA alone (a TOMA per server: the leader's whole server); leg: the TOMA, then a leg's target.
  "toma-kill": ["toma", "leg"],
  stop: ["target", "toma"],
  linkdown: [],
  oneway: ONE_WAY,
};

/** Every selector: each kind, and each `kind:variant`. */
export const FAULT_SELECTORS: readonly string[] = FAULT_KINDS.flatMap((k) => [k, ...FAULT_VARIANTS[k].map((v) => `${k}:${v}`)]);

/** What is drawn from: each kind selected, with its selected variants (empty: the kind has none). */
export type FaultSelection = { kind: FaultKind; variants: string[] }[];

/**
 * Parses selectors into a selection, kinds in FAULT_KINDS order. Unknown selectors and
 * `oneway:toma-toma` without a TOMA per server are errors; a bare `oneway` leaves toma-toma out
 * when there is one TOMA.
 */
export function selectFaults(selectors: readonly string[], cluster_mode: boolean): FaultSelection {
  if (selectors.length === 0) throw new Error("no fault kinds to draw from");
  const chosen = new Map<FaultKind, Set<string>>();
  for (const sel of selectors) {
    if (!FAULT_SELECTORS.includes(sel)) throw new Error(`fault '${sel}' is not one of ${FAULT_SELECTORS.join(", ")}`);
    const [kind, variant] = sel.split(":") as [FaultKind, string | undefined];
    if (variant === "toma-toma" && !cluster_mode) throw new Error("fault 'oneway:toma-toma' needs a TOMA per server (--cluster)");
    const set = chosen.get(kind) ?? new Set<string>();
    const all = FAULT_VARIANTS[kind].filter((v) => v !== "toma-toma" || cluster_mode);
    for (const v of variant === undefined ? all : [variant]) set.add(v);
    chosen.set(kind, set);
  }
  return FAULT_KINDS.filter((k) => chosen.has(k)).map((kind) => ({ kind, variants: FAULT_VARIANTS[kind].filter((v) => chosen.get(kind)!.has(v)) }));
}

/** The selection written back as the shortest list of selectors (a kind whose variants are all in). */
export function faultSelectors(sel: FaultSelection, cluster_mode: boolean): string[] {
  return sel.flatMap(({ kind, variants }) => {
    const all = FAULT_VARIANTS[kind].filter((v) => v !== "toma-toma" || cluster_mode);
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
        // Single mode: the TOMA lives in s1, so a paused TOMA is always s1's.
        const process = variantOf(variants) as "target" | "toma";
        return { kind, variant: process, server: process === "toma" && !this.cluster_mode ? 0 : server, process, hold_ms: this.times.pause_ms };
      }
      case "linkdown":
        return { kind, server, hold_ms: span(this.times.linkdown_ms) };
      case "oneway": {
        const way = variantOf(variants) as OneWay;
        const peer = (server + r.int(1, this.servers)) % this.servers;
        // client-toma: the client's TOMA is s1's (its -m address).
        const s = way === "client-toma" ? 0 : server;
        return { kind, variant: way, server: s, way, ...(way === "toma-toma" ? { peer } : {}), hold_ms: this.times.cut_ms };
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
      // The leg's server is read while a TOMA still answers.
      const legServer = plan.variant === "leg" ? c.serverOf(await c.volume(volume), plan.leg!) : null;
      const tomaServer = cluster ? await c.leader() : 0;
      const thost = c.server(tomaServer);
      const downTargets = new Set<number>();
      let label: string;
      if (cluster) {
        // A TOMA per server: the leader's whole server dies, TOMA and target.
        await c.killTomaOn(tomaServer);
        await c.killTarget(tomaServer);
        downTargets.add(tomaServer);
        label = `kill -9 leader ${thost} (TOMA and target)`;
      } else {
        await c.killToma();
        label = `kill -9 TOMA (${thost})`;
      }
      if (legServer !== null && !downTargets.has(legServer)) {
        await Bun.sleep(SECOND_KILL_MS);
        await c.killTarget(legServer);
        downTargets.add(legServer);
        label += `, then target ${c.server(legServer)} (leg ${plan.leg})`;
      } else if (legServer !== null) label += ` (leg ${plan.leg}'s target among them)`;
      return {
        plan: { ...plan, server: legServer ?? tomaServer },
        label,
        heal: async () => {
          for (const t of downTargets) await c.restartTarget(t);
          if (cluster) await c.startTomaOn(tomaServer);
          else await c.restartToma();
        },
      };
    }
    case "stop": {
      const d = plan.process === "toma" ? (c.labOpts.cluster_mode ? c.tomas[plan.server] : c.toma) : c.targets[plan.server];
      if (!d?.alive) throw new Error(`stop: ${plan.process} of ${host} is not running`);
      const pid = d.proc.pid;
      process.kill(pid, "SIGSTOP");
      return {
        plan,
        label: `SIGSTOP ${plan.process} ${host} for ${(plan.hold_ms / 1000).toFixed(0)} s`,
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
      switch (plan.way!) {
        case "client-target":
          cuts = [await c.lab.cutOneWay("client", host, { to_port: TARGET_PORT })];
          break;
        case "target-client":
          cuts = [await c.lab.cutOneWay(host, "client", { from_port: TARGET_PORT })];
          break;
        case "client-toma":
          cuts = [await c.lab.cutOneWay("client", host, { to_port: TOMA_PORT })];
          break;
        case "toma-toma": {
          // Everything the TOMA of `host` says to the peer's TOMA: its requests and its answers.
          const peer = c.server(plan.peer!);
          cuts = [await c.lab.cutOneWay(host, peer, { to_port: TOMA_PORT }), await c.lab.cutOneWay(host, peer, { from_port: TOMA_PORT })];
          break;
        }
      }
      const what = plan.way === "toma-toma" ? `TOMA ${host} -> TOMA ${c.server(plan.peer!)}` : cuts[0]!.label;
      return {
        plan,
        label: `one-way drop ${what}`,
        heal: async () => {
          for (const x of cuts) await c.lab.heal(x);
        },
      };
    }
  }
}
