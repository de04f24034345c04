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

export interface FaultTimes {
  /** kill, toma-kill: how long the process stays dead before it is started again (range, ms). */
  restart_ms: [number, number];
  /** stop: how long SIGSTOP lasts before SIGCONT. */
  pause_ms: number;
  /** linkdown: how long the cable stays pulled (range, ms). */
  linkdown_ms: [number, number];
  /** oneway: how long the one-way drop lasts. */
  cut_ms: number;
}

export const DEFAULT_TIMES: FaultTimes = {
  restart_ms: [3_000, 15_000],
  pause_ms: 35_000,
  linkdown_ms: [5_000, 35_000],
  cut_ms: 35_000,
};

/** One drawn fault: kind, victim(s), how long it lasts. Victims are 0-based server indexes. */
export interface FaultPlan {
  kind: FaultKind;
  /** The server hit (kill, stop, linkdown, oneway's server end); toma-kill finds its own. */
  server: number;
  /** stop: which process of the server is paused. */
  process?: "target" | "toma";
  /** oneway: the direction cut; toma-toma also names the second server. */
  way?: OneWay;
  peer?: number;
  hold_ms: number;
}

export class FaultDraw {
  private readonly rng: Prng;

  constructor(
    readonly seed: number,
    readonly kinds: readonly FaultKind[],
    readonly servers: number,
    readonly cluster_mode: boolean,
    readonly times: FaultTimes,
  ) {
    if (kinds.length === 0) throw new Error("no fault kinds to draw from");
    this.rng = new Prng(seed).fork("soak-faults");
  }

  next(): FaultPlan {
    const r = this.rng;
    const kind = r.pick(this.kinds);
    const server = r.int(0, this.servers);
    const span = ([lo, hi]: [number, number]) => Math.round(r.range(lo, hi));
    switch (kind) {
      case "kill":
      case "toma-kill":
        return { kind, server, hold_ms: span(this.times.restart_ms) };
      case "stop": {
        // Single mode: the TOMA lives in s1, so a paused TOMA is always s1's.
        const process = r.pick(["target", "toma"] as const);
        return { kind, server: process === "toma" && !this.cluster_mode ? 0 : server, process, hold_ms: this.times.pause_ms };
      }
      case "linkdown":
        return { kind, server, hold_ms: span(this.times.linkdown_ms) };
      case "oneway": {
        const ways = ONE_WAY.filter((w) => w !== "toma-toma" || this.cluster_mode);
        const way = r.pick(ways);
        const peer = (server + r.int(1, this.servers)) % this.servers;
        // client-toma: the client's TOMA is s1's (its -m address).
        const s = way === "client-toma" ? 0 : server;
        return { kind, server: s, way, ...(way === "toma-toma" ? { peer } : {}), hold_ms: this.times.cut_ms };
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

/** Injects a drawn fault into the cluster; returns how to heal it. */
export async function inject(c: LabCluster, plan: FaultPlan): Promise<ActiveFault> {
  const host = c.server(plan.server);
  switch (plan.kind) {
    case "kill": {
      await c.killTarget(plan.server);
      return { plan, label: `kill -9 target ${host}`, heal: () => c.restartTarget(plan.server) };
    }
    case "toma-kill": {
      if (!c.labOpts.cluster_mode) {
        await c.killToma();
        return { plan, label: `kill -9 TOMA (${c.server(0)})`, heal: () => c.restartToma() };
      }
      // A TOMA per server: the leader's whole server dies, TOMA and target.
      const leader = await c.leader();
      const lhost = c.server(leader);
      await c.killTomaOn(leader);
      await c.killTarget(leader);
      return {
        plan: { ...plan, server: leader },
        label: `kill -9 leader ${lhost} (TOMA and target)`,
        heal: async () => {
          await c.restartTarget(leader);
          await c.startTomaOn(leader);
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
