/**
 * The simulator's command line:
 *   bun run sim --seed N            replay one seed exactly; prints the result and the trace tail
 *   bun run sim --seeds K [--from S] run K seeds; each failing seed gets a replay line and trace
 *   --trace                          with --seed: print the whole trace
 *   --long                           nightly-style: 4x the virtual time under faults per seed
 *   --mirror                         adds a RAID1 volume to the workload (mirroring, in progress)
 *   --pause                          adds processes paused (SIGSTOP) for 5–20 s to the random faults
 *   --toma-cluster                   a TOMA on every server (Raft; the leader runs the mirror control)
 *   --bug NAME                       plant a known bug (src/engine/planted-bugs.ts): the checker must bite
 */
import { isPlantedBug, plantedBugs } from "../src/engine/planted-bugs.ts";
import { MIRROR_VOLUME } from "./cluster.ts";
import { PAUSE_FAULT_WEIGHT } from "./faults.ts";
import { defaultRunOptions, type RunResult, runSeed } from "./run.ts";

const argv = process.argv.slice(2);
function flag(name: string): string | undefined {
  const i = argv.indexOf(`--${name}`);
  return i >= 0 ? argv[i + 1] : undefined;
}
const has = (name: string) => argv.includes(`--${name}`);

function usage(msg: string): never {
  console.error(`sim: ${msg}\nusage: bun run sim --seed N [--trace] | --seeds K [--from S] [--long]`);
  process.exit(2);
}

function int(name: string, v: string | undefined): number {
  const n = Number(v);
  if (v === undefined || !Number.isInteger(n) || n < 0 || n > 0xffff_ffff) usage(`--${name} needs a whole number, got '${v}'`);
  return n;
}

const bug = flag("bug");
if (bug !== undefined) {
  if (!isPlantedBug(bug)) usage(`unknown bug '${bug}'; planted bugs: ${Object.keys(plantedBugs).join(", ")}`);
  plantedBugs[bug] = true;
  console.log(`sim: planted bug ${bug} is ON`);
}

const opts = defaultRunOptions();
if (has("long")) opts.fault_ms *= 4;
if (has("mirror") || has("toma-cluster")) {
  opts.tweak = (spec) => {
    if (has("mirror")) spec.volumes.push(MIRROR_VOLUME);
    if (has("toma-cluster")) spec.toma_cluster = true;
  };
}
if (has("pause")) opts.faults = { ...opts.faults, weights: { ...opts.faults.weights, process_pause: PAUSE_FAULT_WEIGHT } };
opts.full_trace = has("trace");

function summary(r: RunResult): string {
  const s = r.stats;
  return (
    `seed ${r.seed}: ${r.ok ? "ok" : "FAILED"}  ${r.virtual_ms} virtual ms, ${r.events} events, ` +
    `${s.ops} ops (${s.writes} writes, ${s.reads} reads, ${s.flushes} flushes, ${s.sectors_checked} sectors checked, ` +
    `${(s.read_errors ?? 0) + (s.write_errors ?? 0)} errors under faults), faults ${JSON.stringify(r.injected)}, trace ${r.trace_hash}`
  );
}

function replayLine(seed: number): string {
  return `bun run sim --seed ${seed}${has("long") ? " --long" : ""}${has("mirror") ? " --mirror" : ""}${has("pause") ? " --pause" : ""}${has("toma-cluster") ? " --toma-cluster" : ""}${bug !== undefined ? ` --bug ${bug}` : ""}`;
}

if (flag("seed") !== undefined) {
  const seed = int("seed", flag("seed"));
  const r = await runSeed(seed, opts);
  if (opts.full_trace) for (const l of r.full_trace) console.log(l);
  console.log(summary(r));
  if (!r.ok) {
    console.log(`failure: ${r.failure}`);
    console.log("last events:");
    for (const l of r.last_trace) console.log(`  ${l}`);
    process.exit(1);
  }
} else if (flag("seeds") !== undefined) {
  const k = int("seeds", flag("seeds"));
  const from = flag("from") !== undefined ? int("from", flag("from")) : 1;
  const t0 = performance.now();
  const failed: RunResult[] = [];
  for (let seed = from; seed < from + k; seed++) {
    const r = await runSeed(seed, opts);
    if (!r.ok) {
      failed.push(r);
      console.log(`seed ${seed} FAILED: ${r.failure}`);
      console.log(`  replay: ${replayLine(seed)}`);
      for (const l of r.last_trace.slice(-15)) console.log(`    ${l}`);
    } else if (seed % 50 === 0) {
      console.log(`… ${seed - from + 1}/${k} seeds, ${((performance.now() - t0) / 1000).toFixed(0)} s`);
    }
  }
  const secs = ((performance.now() - t0) / 1000).toFixed(1);
  console.log(`sim: ${k - failed.length} of ${k} seeds passed (${from}..${from + k - 1}) in ${secs} s`);
  if (failed.length > 0) {
    console.log(`failing seeds: ${failed.map((r) => r.seed).join(" ")}`);
    process.exit(1);
  }
} else {
  usage("give --seed N or --seeds K");
}
