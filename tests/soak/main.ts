/**
 * The fault soak from the command line (root; heavy: run it under `flock /work/heavy.lock`):
 *
 *   npm run build && npx bun tests/soak/main.ts --duration 10m --seed 7 --faults kill,stop,linkdown,oneway,toma-kill
 *
 * Prints the seed (a seed replays the same sequence of faults), every fault and volume state as
 * it happens, and a summary; exits 1 on any I/O or verify error, leg difference or a volume that
 * does not come back, 2 on bad arguments. Ctrl-C stops it and cleans up (namespaces, nft, processes).
 */
import { parseArgs } from "node:util";
import { parseSize } from "../../src/cmd/args.ts";
import { FAULT_SELECTORS, selectFaults } from "./faults.ts";
import { DEFAULT_OPTIONS, runSoak, type SoakOptions } from "./soak.ts";

const HELP = `npx bun tests/soak/main.ts [options]   (npm run soak -- [options] builds first)
  --duration 10m       how long faults are injected (s, m suffixes; default 10m)
  --seed N             PRNG seed of the fault sequence (default: random, printed)
  --faults LIST        faults, comma-separated: a kind (all its variants) or kind:variant, of
                       ${FAULT_SELECTORS.join(",")} (default: all)
  --every 10s          a fault every this long, once the volume can take one (default 10s)
  --legs 2|3           RAID1 legs (default 2)
  --servers N          servers (namespaces), at least 3 (default 3)
  --cluster            a TOMA on every server (toma run --peers); default: one TOMA in s1
  --pause 35s          how long a SIGSTOP lasts (default 35s)
  --cut 35s            how long a one-way drop lasts (default 35s)
  --orphan 35s         toma-kill:leg: how long the TOMA and the leg's target stay dead (default 35s)
  --jobs 4 --job-size 16M --bs 4k --iodepth 8 --capacity 256M   fio and the volume
  --recover 180s       how long the volume (and fio's I/O) may take to come back after a fault
  --max-stall 30s      fail the run on a longer I/O stall (default: stalls are reported only)
  --out DIR            logs, fio's files and the summary (default: a new temp folder)
  --keep               keep the cluster's folder (drive files) at the end`;

function duration(text: string, what: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(text.trim());
  if (!m) throw new Error(`${what} '${text}': a number with ms, s, m or h`);
  return Math.round(Number(m[1]) * { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[(m[2] ?? "s") as "ms" | "s" | "m" | "h"]);
}

function positive(text: string, what: string): number {
  const n = Number(text);
  if (!Number.isInteger(n) || n <= 0) throw new Error(`${what} '${text}': a positive integer`);
  return n;
}

function options(argv: string[]): SoakOptions {
  const { values: a } = parseArgs({
    args: argv,
    options: {
      duration: { type: "string" }, seed: { type: "string" }, faults: { type: "string" }, every: { type: "string" },
      legs: { type: "string" }, servers: { type: "string" }, cluster: { type: "boolean" }, pause: { type: "string" },
      cut: { type: "string" }, orphan: { type: "string" }, jobs: { type: "string" }, "job-size": { type: "string" }, bs: { type: "string" },
      iodepth: { type: "string" }, capacity: { type: "string" }, recover: { type: "string" }, "max-stall": { type: "string" }, out: { type: "string" },
      keep: { type: "boolean" }, help: { type: "boolean", short: "h" },
    },
    strict: true,
  });
  if (a.help) {
    console.log(HELP);
    process.exit(0);
  }
  const o: SoakOptions = { ...DEFAULT_OPTIONS, times: { ...DEFAULT_OPTIONS.times }, command: "" };
  if (a.duration) o.duration_ms = duration(a.duration, "--duration");
  o.seed = a.seed !== undefined ? positive(a.seed, "--seed") : 1 + Math.floor(Math.random() * 1_000_000);
  if (a.faults) {
    o.faults = a.faults.split(",").map((k) => k.trim()).filter(Boolean);
  }
  if (a.every) o.every_ms = duration(a.every, "--every");
  if (a.legs) {
    const l = positive(a.legs, "--legs");
    if (l !== 2 && l !== 3) throw new Error("--legs: 2 or 3");
    o.legs = l;
  }
  if (a.servers) o.servers = positive(a.servers, "--servers");
  o.cluster_mode = a.cluster ?? false;
  try {
    selectFaults(o.faults, o.cluster_mode);
  } catch (e) {
    throw new Error(`--faults: ${(e as Error).message}`);
  }
  if (a.pause) o.times.pause_ms = duration(a.pause, "--pause");
  if (a.cut) o.times.cut_ms = duration(a.cut, "--cut");
  if (a.orphan) o.times.orphan_ms = duration(a.orphan, "--orphan");
  if (a.jobs) o.jobs = positive(a.jobs, "--jobs");
  if (a["job-size"]) o.job_size = `${parseSize(a["job-size"], "--job-size")}`;
  if (a.bs) o.bs = `${parseSize(a.bs, "--bs")}`;
  if (a.iodepth) o.iodepth = positive(a.iodepth, "--iodepth");
  if (a.capacity) o.capacity = `${parseSize(a.capacity, "--capacity")}`;
  if (a.recover) o.recover_ms = duration(a.recover, "--recover");
  if (a["max-stall"]) o.max_stall_ms = duration(a["max-stall"], "--max-stall");
  if (a.out) o.out_dir = a.out;
  o.keep = a.keep ?? false;
  // The command that replays this run: the arguments given, with the seed drawn if none was.
  const given = argv.filter((x, i) => x !== "--seed" && argv[i - 1] !== "--seed" && !x.startsWith("--seed="));
  o.command = ["npx", "bun", "tests/soak/main.ts", ...given, "--seed", String(o.seed)].join(" ");
  return o;
}

let opts: SoakOptions;
try {
  opts = options(process.argv.slice(2));
} catch (e) {
  console.error(`${(e as Error).message}\n\n${HELP}`);
  process.exit(2);
}
const abort = new AbortController();
for (const sig of ["SIGINT", "SIGTERM"] as const) {
  process.on(sig, () => {
    if (abort.signal.aborted) return;
    console.error(`\n${sig}: stopping, cleaning up…`);
    abort.abort();
  });
}
console.log(`soak seed ${opts.seed} (replay: ${opts.command})`);
let result: Awaited<ReturnType<typeof runSoak>>;
try {
  result = await runSoak({ ...opts, signal: abort.signal });
} catch (e) {
  // Checked before anything is set up: a missing tool, root, or a build without what was asked.
  console.error((e as Error).message);
  process.exit(2);
}
console.log(`\n${result.summary}\n\nlogs, fio's files and the summary: ${result.out_dir}`);
process.exit(result.ok ? 0 : 1);
