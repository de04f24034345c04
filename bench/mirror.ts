/**
 * RAID1 against a single-leg volume and against `nbdkit file`, in the same run, then a rebuild
 * under load. Usage:
 *   npm run build && bun bench/mirror.ts [--seconds 10] [--size 1G] [--rebuild-size 1G] [--rounds 3] [--only NAME]
 *
 * Part 1: one cluster of 3 targets (one file drive each): a RAID1 volume (legs on two targets) and
 * a concatenated volume (one leg, on the third), both pre-filled, and nbdkit serving a pre-filled
 * file of the same size. fio 4k randwrite QD1 and QD32 and 4k randread QD32 through each, the
 * order rotated per workload and round; IOPS, mean and p99 latency, and the ratios, each the median
 * of its rounds (the ratios: the median of the per-round ratios, each measured back to back).
 *
 * Part 2: a fresh cluster with a RAID1 volume of --rebuild-size, filled; fio 4k randwrite QD32
 * runs over it while one leg's drive is evicted (`nvmesh drive evict`: the leg is replaced by a
 * blank one on the third target and copied in full). Prints the copy's duration and rate, and
 * fio's IOPS before and during the rebuild.
 */
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import type { VolumeJson } from "../src/toma/api-types.ts";
import { Cluster } from "../tests/support/cluster.ts";
import { Daemon, ok, requireTool } from "../tests/support/proc.ts";
import { cpuTicks, fill, flag, median, printTable, startNbdkit, TICKS_PER_S } from "./common.ts";

const SECONDS = Number(flag("seconds", "10"));
const SIZE = flag("size", "1G");
const REBUILD_SIZE = flag("rebuild-size", "1G");
/** Runs only the matrix rows whose name contains this (and no rebuild); "rebuild" runs only part 2. */
const ONLY = flag("only", "");
const ROUNDS = Number(flag("rounds", "1"));
const MiB = 2 ** 20;

function bytesOf(size: string): number {
  const m = /^(\d+)([KMGT]?)$/i.exec(size);
  if (!m) throw new Error(`bad size ${size}`);
  return Number(m[1]) * 1024 ** " KMGT".indexOf((m[2] || " ").toUpperCase());
}

interface Job {
  name: string;
  rw: "randwrite" | "randread";
  qd: number;
}
const MATRIX: Job[] = [
  { name: "4k randwrite QD1", rw: "randwrite", qd: 1 },
  { name: "4k randwrite QD32", rw: "randwrite", qd: 32 },
  { name: "4k randread QD32", rw: "randread", qd: 32 },
];

interface Result {
  iops: number;
  lat_us: number;
  p99_us: number;
}

interface FioSide {
  iops: number;
  lat_ns: { mean: number };
  clat_ns: { percentile?: Record<string, number> };
}

async function fio(uri: string, job: Job, out: string): Promise<Result> {
  await ok(
    [
      "fio", "--name=bench", "--ioengine=nbd", `--uri=${uri}`, `--rw=${job.rw}`, "--bs=4k", `--iodepth=${job.qd}`,
      `--runtime=${SECONDS}`, "--time_based", "--ramp_time=1", "--output-format=json", `--output=${out}`,
    ],
    { timeout_ms: (SECONDS + 60) * 1000 },
  );
  const j = JSON.parse(readFileSync(out, "utf8")) as { jobs: { read: FioSide; write: FioSide }[] };
  const side = job.rw === "randwrite" ? j.jobs[0]!.write : j.jobs[0]!.read;
  return { iops: side.iops, lat_us: side.lat_ns.mean / 1000, p99_us: (side.clat_ns.percentile?.["99.000000"] ?? 0) / 1000 };
}

async function matrix(dir: string): Promise<void> {
  const size = bytesOf(SIZE);
  // Each drive holds a RAID1 leg or the single-leg volume, with room to spare.
  const cluster = new Cluster({ targets: 3, drive_size: `${Math.ceil((size + 64 * MiB) / MiB)}M` });
  let nbdkit: Daemon | null = null;
  const rows: { job: Job; raid1: Result; single: Result; nbdkit: Result; vs_single: number; vs_nbdkit: number; lat_ratios: number[] }[] = [];
  try {
    await cluster.start();
    await cluster.cli("volume", "create", "--name", "raid1", "--capacity", SIZE, "--raid-level", "1");
    await cluster.cli("volume", "create", "--name", "single", "--capacity", SIZE, "--raid-level", "concatenated");
    const vols = await cluster.cliJson<VolumeJson[]>("volume", "show");
    const drives = vols.flatMap((v) => v.columns.map((c) => c.drive_uuid));
    if (new Set(drives).size !== 3) throw new Error(`expected the 3 legs on 3 drives: ${drives.join(", ")}`);
    const uris = { raid1: await cluster.attach("raid1"), single: await cluster.attach("single") };
    const peerd = await startNbdkit(dir, SIZE);
    nbdkit = peerd.daemon;
    const peer = peerd.uri;
    console.log(`pre-filling ${SIZE} on each side…`);
    for (const u of [uris.raid1, uris.single, peer]) await fill(u);
    const sides = [
      ["raid1", uris.raid1],
      ["single", uris.single],
      ["nbdkit", peer],
    ] as const;
    // Which target serves which volume, for the CPU table: the daemons' CPU per I/O of each side.
    const targetOf = new Map(vols.flatMap((v) => v.columns.map((c) => [c.drive_uuid, v.name])));
    const daemons: { name: string; pid: number }[] = [{ name: "client", pid: cluster.client!.proc.pid }];
    for (const [t, d] of cluster.targets.entries()) {
      const info = await cluster.cliJson<{ uuid: string; path: string | null }[]>("drive", "show");
      const mine = info.find((x) => x.path !== null && cluster.drives[t]!.includes(x.path));
      daemons.push({ name: `target t${t} (${mine ? targetOf.get(mine.uuid) : "?"})`, pid: d!.proc.pid });
    }
    daemons.push({ name: "nbdkit", pid: nbdkit.proc.pid });
    for (const [i, job] of MATRIX.entries()) {
      if (ONLY && !job.name.includes(ONLY)) continue;
      const rounds: Record<(typeof sides)[number][0], Result>[] = [];
      for (let round = 0; round < ROUNDS; round++) {
        const r: Partial<Record<(typeof sides)[number][0], Result>> = {};
        // Rotate who goes first, so that page-cache warmth and drift do not favour one side.
        for (let k = 0; k < sides.length; k++) {
          const [name, uri] = sides[(i + round + k) % sides.length]!;
          const before = daemons.map((d) => cpuTicks(d.pid));
          r[name] = await fio(uri, job, `${dir}/fio-${name}-${job.rw}-${job.qd}.json`);
          const ios = r[name]!.iops * (SECONDS + 1);
          const used = daemons.map((d, n) => `${d.name} ${(((cpuTicks(d.pid) - before[n]!) / TICKS_PER_S) * 1e6 / ios).toFixed(1)}`);
          console.log(`  ${job.name} ${name}: CPU us per I/O: ${used.join(", ")}`);
        }
        rounds.push(r as Record<(typeof sides)[number][0], Result>);
        console.log(`${job.name}: RAID1 ${r.raid1!.iops.toFixed(0)} | single ${r.single!.iops.toFixed(0)} | nbdkit ${r.nbdkit!.iops.toFixed(0)} IOPS`);
      }
      const mid = (side: (typeof sides)[number][0]): Result => ({
        iops: median(rounds.map((r) => r[side].iops)),
        lat_us: median(rounds.map((r) => r[side].lat_us)),
        p99_us: median(rounds.map((r) => r[side].p99_us)),
      });
      rows.push({
        job,
        raid1: mid("raid1"),
        single: mid("single"),
        nbdkit: mid("nbdkit"),
        vs_single: median(rounds.map((r) => r.raid1.iops / r.single.iops)),
        vs_nbdkit: median(rounds.map((r) => r.raid1.iops / r.nbdkit.iops)),
        lat_ratios: rounds.map((r) => r.raid1.lat_us / r.single.lat_us),
      });
    }
  } finally {
    await nbdkit?.stop();
    await cluster.destroy();
  }
  if (rows.length === 0) return;
  const f0 = (x: number) => x.toFixed(0);
  const f1 = (x: number) => x.toFixed(1);
  const table = rows.map(({ job, raid1, single, nbdkit, vs_single, vs_nbdkit }) => ({
    workload: job.name,
    "RAID1 IOPS": f0(raid1.iops),
    "RAID1 lat us (p99)": `${f1(raid1.lat_us)} (${f0(raid1.p99_us)})`,
    "single IOPS": f0(single.iops),
    "single lat us (p99)": `${f1(single.lat_us)} (${f0(single.p99_us)})`,
    "nbdkit IOPS": f0(nbdkit.iops),
    "nbdkit lat us (p99)": `${f1(nbdkit.lat_us)} (${f0(nbdkit.p99_us)})`,
    "RAID1/single": vs_single.toFixed(2),
    "RAID1/single lat": (raid1.lat_us / single.lat_us).toFixed(2),
    "RAID1/nbdkit": vs_nbdkit.toFixed(2),
  }));
  printTable(table);
  const of = ROUNDS > 1 ? ` (median of ${ROUNDS} rounds)` : "";
  const qd1 = rows.find((r) => r.job.name === "4k randwrite QD1");
  if (qd1) {
    const ratio = median(qd1.lat_ratios);
    console.log(`\ngoal RAID1 QD1 4k write latency <= 1.6x single-leg: ${ratio.toFixed(2)}x${of} ${ratio <= 1.6 ? "MET" : "NOT MET"}`);
  }
  const qd32 = rows.find((r) => r.job.name === "4k randwrite QD32");
  if (qd32) {
    const ratio = qd32.vs_single;
    console.log(`goal RAID1 QD32 4k write IOPS >= 0.7x single-leg: ${ratio.toFixed(2)}x${of} ${ratio >= 0.7 ? "MET" : "NOT MET"}`);
  }
}

/** Mean IOPS of fio's per-window IOPS log between two of its times (ms). */
function meanIops(windows: { t_ms: number; iops: number }[], from_ms: number, to_ms: number): number {
  const w = windows.filter((x) => x.t_ms > from_ms && x.t_ms <= to_ms);
  return w.length === 0 ? 0 : w.reduce((n, x) => n + x.iops, 0) / w.length;
}

async function rebuild(dir: string): Promise<void> {
  const size = bytesOf(REBUILD_SIZE);
  const cluster = new Cluster({ targets: 3, drive_size: `${Math.ceil((size + 64 * MiB) / MiB)}M` });
  let fio: Daemon | null = null;
  try {
    await cluster.start();
    await cluster.cli("volume", "create", "--name", "rb", "--capacity", REBUILD_SIZE, "--raid-level", "1");
    const uri = await cluster.attach("rb");
    console.log(`\nrebuild under load: filling a ${REBUILD_SIZE} RAID1 volume…`);
    await fill(uri);
    const log = `${dir}/rebuild`;
    fio = new Daemon("fio", [
      "fio", "--name=load", "--ioengine=nbd", `--uri=${uri}`, "--rw=randwrite", "--bs=4k", "--iodepth=32",
      "--time_based", "--runtime=3600", `--write_iops_log=${log}`, "--log_avg_msec=500",
    ]);
    const t0 = performance.now();
    await Bun.sleep(Math.max(5, SECONDS) * 1000);
    const v = await cluster.volume("rb");
    const evicted_ms = performance.now() - t0;
    await cluster.cli("drive", "evict", v.columns[1]!.drive_uuid);
    let syncing_ms = 0;
    for (;;) {
      const x = await cluster.volume("rb");
      const r = x.leg_views[1]?.rebuild;
      if (x.legs[1] === "syncing" && syncing_ms === 0) syncing_ms = performance.now() - t0;
      if (r && r.total_bytes > 0 && process.stdout.isTTY) process.stdout.write(`\r  rebuild ${((100 * r.done_bytes) / r.total_bytes).toFixed(0)}%   `);
      if (x.state === "online" && x.legs.every((l) => l === "ok") && x.columns[1]!.drive_uuid !== v.columns[1]!.drive_uuid) break;
      await Bun.sleep(250);
    }
    const normal_ms = performance.now() - t0;
    await Bun.sleep(Math.max(5, SECONDS) * 1000);
    const end_ms = performance.now() - t0;
    fio.proc.kill("SIGINT");
    await fio.proc.exited;
    const copied = [...cluster.toma!.output.matchAll(/rebuild done volume=rb column=1 bytes=(\d+)/g)].map((m) => Number(m[1])).at(-1) ?? 0;
    const started = /rebuild started volume=rb column=1/.exec(cluster.toma!.output);
    const done = /rebuild done volume=rb column=1/.exec(cluster.toma!.output);
    // When the TOMA logged a line: the arrival time of its output chunk.
    const at = (m: RegExpExecArray | null) => {
      if (!m) return NaN;
      let n = 0;
      for (const ch of cluster.toma!.chunks) {
        n += ch.text.length;
        if (n > m.index) return ch.at_ms - t0;
      }
      return NaN;
    };
    const copy_start = at(started);
    const copy_end = at(done);
    const file = readdirSync(dir).find((f) => f.startsWith("rebuild_iops.") && f.endsWith(".log"))!;
    const windows = readFileSync(`${dir}/${file}`, "utf8")
      .split("\n")
      .filter((l) => l.includes(","))
      .map((l) => {
        const [t, iops] = l.split(",").map((x) => Number(x.trim()));
        return { t_ms: t!, iops: iops! };
      });
    // fio's log starts when fio does, about when t0 was taken.
    const before = meanIops(windows, 1000, evicted_ms);
    const during = meanIops(windows, copy_start, copy_end);
    const after = meanIops(windows, normal_ms + 500, end_ms);
    const secs = (copy_end - copy_start) / 1000;
    if (process.stdout.isTTY) process.stdout.write("\r");
    console.log(`  rebuild of a ${REBUILD_SIZE} leg under fio 4k randwrite QD32:`);
    console.log(`  evict → syncing ${((syncing_ms - evicted_ms) / 1000).toFixed(1)} s; copy ${(copied / MiB).toFixed(0)} MiB in ${secs.toFixed(1)} s (${(copied / MiB / secs).toFixed(0)} MiB/s); evict → Normal ${((normal_ms - evicted_ms) / 1000).toFixed(1)} s`);
    console.log(`  fio IOPS before ${before.toFixed(0)}, during the copy ${during.toFixed(0)} (${((100 * during) / before).toFixed(0)}%), after ${after.toFixed(0)}`);
  } finally {
    if (fio?.alive) await fio.stop("SIGKILL");
    await cluster.destroy();
  }
}

async function main(): Promise<void> {
  for (const t of ["fio", "nbdkit"]) requireTool(t);
  const dir = mkdtempSync(`${tmpdir()}/nvmesh-bench-mirror-`);
  try {
    if (ONLY !== "rebuild") await matrix(dir);
    if (ONLY === "" || ONLY === "rebuild") await rebuild(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
