/**
 * The fio matrix through an nvmesh volume on one target, and in the same run through `nbdkit file`
 * serving the same kind of file: prints both and the ratios. Usage:
 *   npm run build && bun bench/fio-matrix.ts [--seconds 10] [--size 1G]
 * Both sides are pre-filled, so reads hit written data, not holes in a sparse file.
 */
import { mkdtempSync, rmSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { Cluster } from "../tests/support/cluster.ts";
import { Daemon, ok, requireTool } from "../tests/support/proc.ts";
import { fill, flag, printTable, startNbdkit } from "./common.ts";

const SECONDS = Number(flag("seconds", "10"));
const SIZE = flag("size", "1G");
/** Runs only the workloads whose name contains this (e.g. "randread", "QD1"); the goals need both 4k randread rows. */
const ONLY = flag("only", "");

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

async function main(): Promise<void> {
  for (const t of ["fio", "nbdkit"]) requireTool(t);
  const dir = mkdtempSync(`${tmpdir()}/nvmesh-bench-`);
  const cluster = new Cluster({ targets: 1, drive_size: "4G" });
  const results: { job: Job; nvmesh: Result; nbdkit: Result }[] = [];
  let nbdkit: Daemon | null = null;
  try {
    await cluster.start();
    await cluster.cli("volume", "create", "--name", "bench", "--capacity", SIZE, "--raid-level", "concatenated");
    const uri = await cluster.attach("bench");
    const peerd = await startNbdkit(dir, SIZE);
    nbdkit = peerd.daemon;
    const peer = peerd.uri;
    console.log(`pre-filling ${SIZE} on both sides…`);
    await fill(uri);
    await fill(peer);
    for (const [i, job] of MATRIX.entries()) {
      if (ONLY && !job.name.includes(ONLY)) continue;
      // Alternate which side goes first so page-cache warmth does not favour one.
      const first = await fio(i % 2 ? peer : uri, job, dir, SECONDS);
      const second = await fio(i % 2 ? uri : peer, job, dir, SECONDS);
      const [a, b] = i % 2 ? [second, first] : [first, second];
      results.push({ job, nvmesh: a, nbdkit: b });
      console.log(`${job.name}: nvmesh ${a.iops.toFixed(0)} IOPS ${a.lat_us.toFixed(1)} us | nbdkit ${b.iops.toFixed(0)} IOPS ${b.lat_us.toFixed(1)} us`);
    }
  } finally {
    await nbdkit?.stop();
    await cluster.destroy();
    rmSync(dir, { recursive: true, force: true });
  }
  const rows = results.map(({ job, nvmesh, nbdkit }) => ({
    workload: job.name,
    "nvmesh IOPS": nvmesh.iops.toFixed(0),
    "nvmesh MiB/s": nvmesh.mib_s.toFixed(0),
    "nvmesh lat us": nvmesh.lat_us.toFixed(1),
    "nbdkit IOPS": nbdkit.iops.toFixed(0),
    "nbdkit MiB/s": nbdkit.mib_s.toFixed(0),
    "nbdkit lat us": nbdkit.lat_us.toFixed(1),
    "IOPS ratio": (nvmesh.iops / nbdkit.iops).toFixed(2),
    "lat ratio": (nvmesh.lat_us / nbdkit.lat_us).toFixed(2),
  }));
  printTable(rows);
  const qd1 = results.find((r) => r.job.name === "4k randread QD1");
  const qd32 = results.find((r) => r.job.name === "4k randread QD32");
  if (!qd1 || !qd32) return;
  const latRatio = qd1.nvmesh.lat_us / qd1.nbdkit.lat_us;
  const iopsRatio = qd32.nvmesh.iops / qd32.nbdkit.iops;
  console.log(`\ngoal QD1 4k read latency <= 1.5x nbdkit: ${latRatio.toFixed(2)}x ${latRatio <= 1.5 ? "MET" : "NOT MET"}`);
  console.log(`goal QD32 4k read IOPS >= 0.7x nbdkit:   ${iopsRatio.toFixed(2)}x ${iopsRatio >= 0.7 ? "MET" : "NOT MET"}`);
}

await main();
