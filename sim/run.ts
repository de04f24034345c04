/**
 * One seed, start to end: draw the cluster and its fault profile from the seed, set it up, run the
 * workload under faults, heal everything, and check that the cluster comes back (liveness) and that
 * every read of the whole run was right (safety).
 */
import { checkLegsEqual } from "./leg-check.ts";
import { defaultSpec, type ClusterSpec, SimCluster } from "./cluster.ts";
import { randomDriveProfile } from "./drive.ts";
import { DEFAULT_FAULT_WEIGHTS, FaultInjector, type FaultOptions } from "./faults.ts";
import { randomProfile } from "./net.ts";
import type { Prng } from "./prng.ts";
import { World } from "./world.ts";

export interface RunOptions {
  /** Virtual ms of workload under faults. */
  fault_ms: number;
  /** Virtual ms of workload after healing, every operation of which must succeed. */
  calm_ms: number;
  /** After healing, operations invoked within this many virtual ms (and before the first
   * flush of each workload, which reports losses of the fault phase) may still fail. */
  heal_grace_ms: number;
  faults: FaultOptions;
  full_trace?: boolean;
  /** Changes the drawn cluster (scenarios and planted-bug tests). */
  tweak?: (spec: ClusterSpec, prng: Prng) => void;
  /** A scenario's own faults, scheduled when the fault phase begins (see tests/sim/scenarios). */
  script?: (cluster: SimCluster) => void;
}

export function defaultRunOptions(): RunOptions {
  return {
    fault_ms: 20_000,
    calm_ms: 5_000,
    heal_grace_ms: 15_000,
    faults: { mean_gap_ms: 1500, duration_ms: [200, 6000], weights: DEFAULT_FAULT_WEIGHTS },
  };
}

export interface RunResult {
  seed: number;
  ok: boolean;
  failure: string | null;
  trace_hash: string;
  trace_lines: number;
  events: number;
  virtual_ms: number;
  stats: Record<string, number>;
  injected: Record<string, number>;
  last_trace: string[];
  full_trace: string[];
  /** Failed operations per workload, with invocation times (scenarios assert on them). */
  errors: number[];
}

export function drawSpec(prng: Prng): ClusterSpec {
  const spec = defaultSpec();
  spec.net = randomProfile(prng.fork("net-profile"));
  spec.drive = randomDriveProfile(prng.fork("drive-profile"));
  const w = prng.fork("workload-profile");
  spec.workload = {
    ...spec.workload,
    lanes: w.int(1, 4),
    p_write: w.range(0.3, 0.7),
    p_flush: w.range(0.02, 0.15),
    p_fua: w.range(0, 0.4),
  };
  return spec;
}

let current: World | null = null;
let hooked = false;

/** An exception no code caught kills a real daemon: in the simulator it fails the seed. */
function hookUnhandled(): void {
  if (hooked) return;
  hooked = true;
  process.on("unhandledRejection", (e) => {
    current?.fail(`unhandled rejection: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`);
  });
}

export async function runSeed(seed: number, opts: RunOptions = defaultRunOptions()): Promise<RunResult> {
  hookUnhandled();
  const world = new World(seed, { full_trace: opts.full_trace });
  current = world;
  const spec = drawSpec(world.prng.fork("spec"));
  opts.tweak?.(spec, world.prng.fork("tweak"));
  const cluster = new SimCluster(world, spec);
  const faults = new FaultInjector(cluster, world.prng.fork("faults"), opts.faults);
  try {
    await cluster.setup();
    world.log("sim", "setup done: workload starts, faults start");
    faults.start();
    opts.script?.(cluster);
    await world.advance(opts.fault_ms);
    faults.stop();
    faults.healAll();
    await world.advance(opts.heal_grace_ms);
    if (world.failure) throw new Error(world.failure);
    await cluster.runUntil(() => cluster.clients.every((c) => c.ready), 30_000, "every client attached after healing");
    // One flush per workload first: it reports (EIO) any loss of cached writes from the fault
    // phase, which a client learns only at its next flush. From then on nothing may fail.
    let flushing = 0;
    for (const c of cluster.clients) for (const w of c.workloads) {
      flushing++;
      void w.flush().finally(() => flushing--);
    }
    await cluster.runUntil(() => flushing === 0, spec.io_timeout_ms + 30_000, "the first flushes after healing");
    const calm = world.now;
    await world.advance(opts.calm_ms);
    if (world.failure) throw new Error(world.failure);
    await cluster.stopWorkloads(spec.io_timeout_ms + 30_000);
    const late = cluster.allWorkloads.flatMap((w) => w.errors).filter((t) => t >= calm);
    if (late.length > 0) {
      world.fail(`liveness: ${late.length} operations failed after the cluster was healed and settled`);
    }
    await finalCheck(cluster);
    if (!world.failure) await checkLegsEqual(cluster);
  } catch (e) {
    world.fail((e as Error).message);
  } finally {
    current = null;
  }
  return {
    seed,
    ok: world.failure === null,
    failure: world.failure,
    trace_hash: world.traceHash,
    trace_lines: world.traceLines,
    events: world.events,
    virtual_ms: Math.round(world.now),
    stats: { ...cluster.checker.stats, ops: cluster.allWorkloads.reduce((a, w) => a + w.ops, 0) },
    injected: faults.injected,
    last_trace: world.lastTrace(40),
    full_trace: world.fullTrace(),
    errors: cluster.allWorkloads.flatMap((w) => w.errors),
  };
}

/** Every client flushes and reads its whole range of every volume: all must succeed and check. */
async function finalCheck(cluster: SimCluster): Promise<void> {
  let pending = 0;
  let errors = 0;
  for (const c of cluster.clients) {
    for (const w of c.workloads) {
      pending++;
      void w.verifyAll().then(
        (n) => {
          errors += n;
          pending--;
        },
        () => {
          errors++;
          pending--;
        },
      );
    }
  }
  await cluster.runUntil(() => pending === 0, 60_000, "final verification");
  if (errors > 0) cluster.world.fail(`liveness: ${errors} operations of the final verification failed`);
}
