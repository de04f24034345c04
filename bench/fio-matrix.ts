/**
 * The fio matrix through an nvmesh volume on one target, and in the same run through two C
 * peers serving the same kind of file: `nbdkit file` (one hop: fio → unix socket → nbdkit), and
 * nbdkit's `nbd` plugin forwarding over TCP to `nbdkit file` (two hops, the shape of nvmesh's
 * client daemon → target). nvmesh runs twice: with the target in its own process, reached over
 * TCP loopback (a remote target's path, minus the wire), and with the target hosted by the client
 * daemon (`client serve --drive`), reached in-process (a converged host's path to its own
 * drives). Prints every side, the ratios, the CPU each daemon used per I/O (from /proc), and the
 * goals as MET / NOT MET lines. Usage:
 *   npm run build && bun bench/fio-matrix.ts [--seconds 10] [--size 1G] [--rounds 3] [--only randread]
 * Both sides are pre-filled, so reads hit written data, not holes in a sparse file. The drive I/O
 * path of the targets follows NVMESH_DRIVE_IO (default auto: io_uring where the kernel allows).
 */
import { mkdtempSync, rmSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { Cluster } from "../tests/support/cluster.ts";
import { Daemon, ok, requireTool } from "../tests/support/proc.ts";
import { fill, flag, printTable, startNbdkit, startNbdkitTwoHop, median, cpuTicks, TICKS_PER_S } from "./common.ts";

const SECONDS = Number(flag("seconds", "10"));
const SIZE = flag("size", "1G");
/** Runs only the workloads whose name contains this (e.g. "randread", "QD1"). */
const ONLY = flag("only", "");
/**
 * Rounds of the whole matrix; each point's table entry is the median of its rounds. nbdkit's QD32
 * numbers swing by 2x from run to run on this VM (thread placement), so one round can mislead.
 */
const ROUNDS = Number(flag("rounds", "1"));

interface Job {
  name: string;
  rw: string;
  bs: string;
  qd: number;
}
const MATRIX: Job[] = [
  { name: "4k randread QD1", rw: "randread", bs: "4k", qd: 1 },
  { name: "4k randread QD32", rw: "randread", bs: "4k", qd: 32 },
  { name: "4k randwrite QD1", rw: "randwrite", bs: "4k", qd: 1 },
  { name: "4k randwrite QD32", rw: "randwrite", bs: "4k", qd: 32 },
  { name: "128k read QD8", rw: "read", bs: "128k", qd: 8 },
  { name: "128k write QD8", rw: "write", bs: "128k", qd: 8 },
];

interface Result {
  iops: number;
  mib_s: number;
  lat_us: number;
}

async function fio(uri: string, job: Job, dir: string, seconds: number): Promise<Result> {
  const out = `${dir}/fio-${job.rw}-${job.bs}-${job.qd}.json`;
  await ok(
    [
      "fio", "--name=bench", "--ioengine=nbd", `--uri=${uri}`, `--rw=${job.rw}`, `--bs=${job.bs}`,
      `--iodepth=${job.qd}`, `--runtime=${seconds}`, "--time_based", "--ramp_time=1",
      "--output-format=json", `--output=${out}`,
    ],
    { timeout_ms: (seconds + 60) * 1000 },
  );
  const j = JSON.parse(readFileSync(out, "utf8")) as {
    jobs: { read: FioSide; write: FioSide }[];
  };
  const side = job.rw.includes("write") ? j.jobs[0]!.write : j.jobs[0]!.read;
  return { iops: side.iops, mib_s: side.bw_bytes / 2 ** 20, lat_us: side.lat_ns.mean / 1000 };
}
interface FioSide {
  iops: number;
  bw_bytes: number;
  lat_ns: { mean: number };
}

const SIDES = ["tcp", "inproc", "nbdkit", "nbdkit2"] as const;
type Side = (typeof SIDES)[number];
const SIDE_NAMES: Record<Side, string> = { tcp: "TCP", inproc: "in-process", nbdkit: "nbdkit", nbdkit2: "nbdkit 2-hop" };

/** Each side's daemons, by name, whose CPU is sampled around every fio run. */
type Procs = Record<Side, { name: string; pid: number }[]>;

async function main(): Promise<void> {
  for (const t of ["fio", "nbdkit"]) requireTool(t);
  const dir = mkdtempSync(`${tmpdir()}/nvmesh-bench-`);
  const tcp = new Cluster({ targets: 1, drive_size: "4G" });
  const inproc = new Cluster({ targets: 1, drive_size: "4G", converged: true });
  const results: { job: Job; r: Record<Side, Result>; cpu: Record<Side, Record<string, number>> }[] = [];
  const daemons: Daemon[] = [];
  try {
    const uris = {} as Record<Side, string>;
    for (const [side, cluster] of [["tcp", tcp], ["inproc", inproc]] as const) {
      await cluster.start();
      await cluster.cli("volume", "create", "--name", "bench", "--capacity", SIZE, "--raid-level", "concatenated");
      uris[side] = await cluster.attach("bench");
    }
    console.log(`target drive I/O: ${JSON.stringify((await tcp.cliJson<{ io: string | null }[]>("target", "show")).map((t) => t.io))}`);
    const one = await startNbdkit(dir, SIZE);
    daemons.push(one.daemon);
    uris.nbdkit = one.uri;
    const two = await startNbdkitTwoHop(dir, SIZE);
    daemons.push(...two.daemons);
    uris.nbdkit2 = two.uri;
    const procs: Procs = {
      tcp: [{ name: "client", pid: tcp.client!.proc.pid }, { name: "target", pid: tcp.targets[0]!.proc.pid }],
      inproc: [{ name: "client+target", pid: inproc.client!.proc.pid }],
      nbdkit: [{ name: "nbdkit", pid: one.daemon.proc.pid }],
      nbdkit2: [{ name: "nbd plugin", pid: two.daemons[0]!.proc.pid }, { name: "file", pid: two.daemons[1]!.proc.pid }],
    };
    console.log(`pre-filling ${SIZE} on every side…`);
    for (const side of SIDES) await fill(uris[side]);
    const rounds = new Map<Job, { r: Record<Side, Result>; cpu: Record<Side, Record<string, number>> }[]>();
    for (let round = 0; round < ROUNDS; round++) {
      for (const [i, job] of MATRIX.entries()) {
        if (ONLY && !job.name.includes(ONLY)) continue;
        // Rotate which side goes first so page-cache warmth and noise do not favour one.
        const r = {} as Record<Side, Result>;
        const cpu = {} as Record<Side, Record<string, number>>;
        for (let k = 0; k < SIDES.length; k++) {
          const side = SIDES[(i + k + round) % SIDES.length]!;
          const before = procs[side].map((p) => cpuTicks(p.pid));
          r[side] = await fio(uris[side], job, dir, SECONDS);
          // CPU microseconds per I/O of each daemon (ramp included, so slightly high).
          const ios = r[side].iops * (SECONDS + 1);
          cpu[side] = Object.fromEntries(procs[side].map((p, n) => [p.name, ((cpuTicks(p.pid) - before[n]!) / TICKS_PER_S) * 1e6 / ios]));
        }
        rounds.set(job, [...(rounds.get(job) ?? []), { r, cpu }]);
        console.log(`${job.name}: ${SIDES.map((s) => `${s} ${r[s].iops.toFixed(0)} IOPS ${r[s].lat_us.toFixed(1)} us`).join(" | ")}`);
      }
    }
    for (const [job, rs] of rounds) {
      const r = {} as Record<Side, Result>;
      const cpu = {} as Record<Side, Record<string, number>>;
      for (const side of SIDES) {
        r[side] = { iops: median(rs.map((x) => x.r[side].iops)), mib_s: median(rs.map((x) => x.r[side].mib_s)), lat_us: median(rs.map((x) => x.r[side].lat_us)) };
        cpu[side] = Object.fromEntries(Object.keys(rs[0]!.cpu[side]).map((name) => [name, median(rs.map((x) => x.cpu[side][name]!))]));
      }
      results.push({ job, r, cpu });
    }
  } finally {
    for (const d of daemons) await d.stop();
    await tcp.destroy();
    await inproc.destroy();
    rmSync(dir, { recursive: true, force: true });
  }
  const f0 = (x: number) => x.toFixed(0);
  const f1 = (x: number) => x.toFixed(1);
  const f2 = (x: number) => x.toFixed(2);
  printTable(
    results.map(({ job, r }) => ({
      workload: job.name,
      ...Object.fromEntries(SIDES.flatMap((s) => [[`${SIDE_NAMES[s]} IOPS`, f0(r[s].iops)], [`${SIDE_NAMES[s]} lat us`, f1(r[s].lat_us)]])),
      "TCP / 2-hop IOPS (lat)": `${f2(r.tcp.iops / r.nbdkit2.iops)} (${f2(r.tcp.lat_us / r.nbdkit2.lat_us)})`,
      "TCP / nbdkit IOPS": f2(r.tcp.iops / r.nbdkit.iops),
      "in-proc / nbdkit IOPS (lat)": `${f2(r.inproc.iops / r.nbdkit.iops)} (${f2(r.inproc.lat_us / r.nbdkit.lat_us)})`,
    })),
  );
  printTable(
    results.map(({ job, cpu }) => ({
      "CPU us per I/O": job.name,
      ...Object.fromEntries(SIDES.flatMap((s) => Object.entries(cpu[s]).map(([name, us]) => [`${SIDE_NAMES[s]}: ${name}`, f1(us)]))),
    })),
  );
  const of = ROUNDS > 1 ? ` (median of ${ROUNDS} rounds)` : "";
  console.log(`\ngoals${of}:`);
  const goal = (what: string, ratio: number, limit: number, atLeast: boolean) => {
    const met = atLeast ? ratio >= limit : ratio <= limit;
    console.log(`  ${what} ${atLeast ? ">=" : "<="} ${limit.toFixed(1)}x: ${ratio.toFixed(2)}x ${met ? "MET" : "NOT MET"}`);
  };
  for (const { job, r } of results) {
    goal(`TCP ${job.name} IOPS vs nbdkit 2-hop`, r.tcp.iops / r.nbdkit2.iops, 1.0, true);
    if (job.qd === 1) goal(`TCP ${job.name} latency vs nbdkit 2-hop`, r.tcp.lat_us / r.nbdkit2.lat_us, 1.0, false);
    if ((job.bs === "4k" && job.qd === 32) || job.bs === "128k") goal(`TCP ${job.name} IOPS vs nbdkit`, r.tcp.iops / r.nbdkit.iops, 0.8, true);
  }
  for (const { job, r } of results) {
    goal(`in-process ${job.name} IOPS vs nbdkit`, r.inproc.iops / r.nbdkit.iops, 1.0, true);
    if (job.qd === 1) goal(`in-process ${job.name} latency vs nbdkit`, r.inproc.lat_us / r.nbdkit.lat_us, 1.2, false);
  }
}

await main();
