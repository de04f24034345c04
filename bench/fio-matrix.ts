/**
 * The fio matrix through an nvmesh volume on one target, and in the same run through `nbdkit file`
 * serving the same kind of file: prints both and the ratios. nvmesh runs twice: with the target
 * in its own process, reached over TCP loopback (a remote target's path, minus the wire), and
 * with the target hosted by the client daemon (`client serve --drive`), reached in-process (a
 * converged host's path to its own drives). Usage:
 *   npm run build && bun bench/fio-matrix.ts [--seconds 10] [--size 1G] [--rounds 3] [--only randread]
 * Both sides are pre-filled, so reads hit written data, not holes in a sparse file.
 */
import { mkdtempSync, rmSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { Cluster } from "../tests/support/cluster.ts";
import { Daemon, ok, requireTool } from "../tests/support/proc.ts";
import { fill, flag, printTable, startNbdkit, median } from "./common.ts";

const SECONDS = Number(flag("seconds", "10"));
const SIZE = flag("size", "1G");
/** Runs only the workloads whose name contains this (e.g. "randread", "QD1"); the goals need both 4k randread rows. */
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

const SIDES = ["tcp", "inproc", "nbdkit"] as const;

type Side = (typeof SIDES)[number];

async function main(): Promise<void> {
  for (const t of ["fio", "nbdkit"]) requireTool(t);
  const dir = mkdtempSync(`${tmpdir()}/nvmesh-bench-`);
  const tcp = new Cluster({ targets: 1, drive_size: "4G" });
  const inproc = new Cluster({ targets: 1, drive_size: "4G", converged: true });
  const results: { job: Job; r: Record<Side, Result> }[] = [];
  let nbdkit: Daemon | null = null;
  try {
    const uris = {} as Record<Side, string>;
    for (const [side, cluster] of [["tcp", tcp], ["inproc", inproc]] as const) {
      await cluster.start();
      await cluster.cli("volume", "create", "--name", "bench", "--capacity", SIZE, "--raid-level", "concatenated");
      uris[side] = await cluster.attach("bench");
    }
    const peerd = await startNbdkit(dir, SIZE);
    nbdkit = peerd.daemon;
    uris.nbdkit = peerd.uri;
    console.log(`pre-filling ${SIZE} on every side…`);
    for (const side of SIDES) await fill(uris[side]);
    const rounds = new Map<Job, Record<Side, Result>[]>();
    for (let round = 0; round < ROUNDS; round++) {
      for (const [i, job] of MATRIX.entries()) {
        if (ONLY && !job.name.includes(ONLY)) continue;
        // Rotate which side goes first so page-cache warmth and noise do not favour one.
        const r = {} as Record<Side, Result>;
        for (let k = 0; k < SIDES.length; k++) {
          const side = SIDES[(i + k + round) % SIDES.length]!;
          r[side] = await fio(uris[side], job, dir, SECONDS);
        }
        rounds.set(job, [...(rounds.get(job) ?? []), r]);
        console.log(`${job.name}: ${SIDES.map((s) => `${s} ${r[s].iops.toFixed(0)} IOPS ${r[s].lat_us.toFixed(1)} us`).join(" | ")}`);
      }
    }
    for (const [job, rs] of rounds) {
      const r = {} as Record<Side, Result>;
      for (const side of SIDES) {
        r[side] = { iops: median(rs.map((x) => x[side].iops)), mib_s: median(rs.map((x) => x[side].mib_s)), lat_us: median(rs.map((x) => x[side].lat_us)) };
      }
      results.push({ job, r });
    }
  } finally {
    await nbdkit?.stop();
    await tcp.destroy();
    await inproc.destroy();
    rmSync(dir, { recursive: true, force: true });
  }
  const rows = results.map(({ job, r }) => ({
    workload: job.name,
    "TCP IOPS": r.tcp.iops.toFixed(0),
    "TCP lat us": r.tcp.lat_us.toFixed(1),
    "in-process IOPS": r.inproc.iops.toFixed(0),
    "in-process lat us": r.inproc.lat_us.toFixed(1),
    "nbdkit IOPS": r.nbdkit.iops.toFixed(0),
    "nbdkit MiB/s": r.nbdkit.mib_s.toFixed(0),
    "nbdkit lat us": r.nbdkit.lat_us.toFixed(1),
    "IOPS ratio TCP / in-proc": `${(r.tcp.iops / r.nbdkit.iops).toFixed(2)} / ${(r.inproc.iops / r.nbdkit.iops).toFixed(2)}`,
    "lat ratio TCP / in-proc": `${(r.tcp.lat_us / r.nbdkit.lat_us).toFixed(2)} / ${(r.inproc.lat_us / r.nbdkit.lat_us).toFixed(2)}`,
  }));
  printTable(rows);
  const qd1 = results.find((x) => x.job.name === "4k randread QD1");
  const qd32 = results.find((x) => x.job.name === "4k randread QD32");
  if (!qd1 || !qd32) return;
  for (const [side, what] of [["tcp", "target over TCP"], ["inproc", "target in the client's process"]] as const) {
    const lat = qd1.r[side].lat_us / qd1.r.nbdkit.lat_us;
    const iops = qd32.r[side].iops / qd32.r.nbdkit.iops;
    console.log(`\n${what}:`);
    console.log(`  goal QD1 4k read latency <= 1.5x nbdkit: ${lat.toFixed(2)}x ${lat <= 1.5 ? "MET" : "NOT MET"}`);
    console.log(`  goal QD32 4k read IOPS >= 0.7x nbdkit:   ${iops.toFixed(2)}x ${iops >= 0.7 ? "MET" : "NOT MET"}`);
  }
}

await main();
