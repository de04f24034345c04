/**
 * Named simulator scenarios (scenarios.test.ts, mirror-scenarios.test.ts): no random faults, a
 * quiet network and quiet drives, a scripted fault, then healing and the full checks of every
 * seed (sim/run.ts).
 */
import { expect } from "bun:test";
import { type ClusterSpec, MIRROR_VOLUME, type ServerSim, type SimCluster } from "../../sim/cluster.ts";
import { quietDriveProfile } from "../../sim/drive.ts";
import { quietProfile } from "../../sim/net.ts";
import { defaultRunOptions, type RunResult, runSeed } from "../../sim/run.ts";

export interface ScenarioOptions {
  seed?: number;
  fault_ms?: number;
  /** Operations may fail during the fault (a power loss: flushes report the loss). */
  expectErrors?: boolean;
  /** More changes to the cluster (a mirror volume...). */
  tweak?: (spec: ClusterSpec) => void;
}

export async function scenario(script: (c: SimCluster) => void, o: ScenarioOptions = {}): Promise<RunResult> {
  const r = await runScenario(script, o);
  if (!r.ok || (!o.expectErrors && r.errors.length > 0)) {
    console.log([r.failure, ...r.full_trace.filter((l) => / (warn|error|info) /.test(l) && !/ net /.test(l)), ...r.last_trace].join("\n"));
  }
  expect(r.failure).toBeNull();
  if (!o.expectErrors) expect(r.errors).toEqual([]);
  return r;
}

/** The same run, its result returned as it is (a planted bug's scenario must fail). */
export async function runScenario(script: (c: SimCluster) => void, o: ScenarioOptions = {}): Promise<RunResult> {
  const opts = defaultRunOptions();
  opts.fault_ms = o.fault_ms ?? 15_000;
  opts.faults = { ...opts.faults, weights: {} };
  opts.full_trace = true;
  opts.tweak = (spec) => {
    spec.net = quietProfile();
    spec.drive = quietDriveProfile();
    spec.workload = { ...spec.workload, lanes: 2, think_ms: [1, 30] };
    o.tweak?.(spec);
  };
  opts.script = script;
  return runSeed(o.seed ?? 1, opts);
}

/** Runs `fn` at `at_ms` after the fault phase starts, once `ready()` holds (polled every ms). */
export function when(c: SimCluster, at_ms: number, ready: () => boolean, fn: () => void): void {
  const poll = () => (ready() ? fn() : c.world.after(1, poll));
  c.world.after(at_ms, poll);
}

/** The mirror volume's record in the state the TOMA acts on (undefined before it exists). */
export const mirror = (c: SimCluster) => c.clusterState()?.volumes.find((v) => v.name === MIRROR_VOLUME.name);

/** The server holding the drive of column `column` of the mirror now. */
export function legServer(c: SimCluster, column: number): ServerSim {
  const uuid = mirror(c)!.columns[column]!.drive_uuid;
  const medium = [...c.uuidOf].find(([, u]) => u === uuid)![0];
  return c.servers.find((s) => s.media.includes(medium))!;
}

/** A leg of the mirror not on the TOMA's server (so the TOMA stays out of the fault). */
export const legAwayFromToma = (c: SimCluster) => (legServer(c, 1) !== c.tomaServer ? 1 : 0);

/** The mirror's topology steps, in order ("ok,dead", ...). */
export const steps = (r: RunResult) => r.full_trace.filter((l) => l.includes("topology step volume=mirror")).map((l) => l.split("legs=")[1]!);

/** The server whose TOMA leads with its control running (a TOMA cluster), if any. */
export const leaderServer = (c: SimCluster) => c.servers.find((s) => s.member !== null && s.member === c.leaderMember());

/** A server already down is booted (not twice). */
export const boot = (c: SimCluster, s: ServerSim) => s.node.alive || c.bootServer(s);

/** A TOMA on every server, with the mirror volume in the workload; the fault phase lasts `fault_ms`. */
export const inCluster = (fault_ms: number) => ({
  fault_ms,
  tweak: (spec: ClusterSpec) => {
    spec.volumes.push(MIRROR_VOLUME);
    spec.toma_cluster = true;
  },
});
