/**
 * A/B of two nvmesh builds on one fio job: each round starts a one-target cluster per build (the
 * builds alternated, the first one rotated per round), pre-fills its volume, runs fio, and samples
 * the CPU of the target and the client daemon from /proc around the run. Prints each round and
 * the medians. What a change to the data path is judged by, on a machine too noisy for one run:
 *   npm run build && cp dist/nvmesh /tmp/nvmesh-B     # (and the build to compare, as A)
 *   bun bench/ab.ts --a /tmp/nvmesh-A --b /tmp/nvmesh-B [--rw randwrite] [--bs 4k] [--qd 32]
 *                   [--seconds 8] [--rounds 3] [--size 512M] [--drive-size 2G] [--converged] [--raid-level 1]
 * --converged: the client daemon hosts the target and reaches it in-process (the "in-process"
 * side of bench/fio-matrix.ts); the target's CPU is then the client's. --raid-level 1: a RAID1
 * volume with legs on two targets (bench/mirror.ts's shape); "target" is then both together.
 */
import { Cluster } from "../tests/support/cluster.ts";
import { ok, requireTool } from "../tests/support/proc.ts";
import { cpuTicks, fill, flag, median, TICKS_PER_S } from "./common.ts";

const A = flag("a", "");
const B = flag("b", "");
const RW = flag("rw", "randwrite");
const BS = flag("bs", "4k");
const QD = flag("qd", "32");
const SECONDS = Number(flag("seconds", "8"));
const ROUNDS = Number(flag("rounds", "3"));
const RAID = flag("raid-level", "concatenated");
const SIZE = flag("size", "512M");
const DRIVE_SIZE = flag("drive-size", "2G");
const CONVERGED = process.argv.includes("--converged");
if (!A || !B) throw new Error("usage: bun bench/ab.ts --a BINARY --b BINARY [--rw randwrite] [--bs 4k] [--qd 32] ...");

/** Every daemon runs the given binary. */
class BuildCluster extends Cluster {
  constructor(
    private readonly bin: string,
    opts: ConstructorParameters<typeof Cluster>[0],
  ) {
    super(opts);
  }
  protected override nvmesh(_name: string): string[] {
    return [this.bin];
  }
}

interface Point {
  iops: number;
  lat_us: number;
  target_us: number;
  client_us: number;
}

async function one(bin: string): Promise<Point> {
  const targets = RAID === "1" ? 2 : 1;
  const c = new BuildCluster(bin, { targets, drive_size: DRIVE_SIZE, converged: CONVERGED });
  try {
    await c.start();
    await c.cli("volume", "create", "--name", "ab", "--capacity", SIZE, "--raid-level", RAID);
    const uri = await c.attach("ab");
    await fill(uri);
    const client = c.client!.proc.pid;
    const tpids = CONVERGED ? [] : c.targets.map((t) => t!.proc.pid);
    const t0 = tpids.reduce((s, p) => s + cpuTicks(p), 0);
    const c0 = cpuTicks(client);
    const out = await ok(
      [
        "fio", "--name=ab", "--ioengine=nbd", `--uri=${uri}`, `--rw=${RW}`, `--bs=${BS}`, `--iodepth=${QD}`,
        `--runtime=${SECONDS}`, "--time_based", "--ramp_time=1", "--output-format=terse", "--terse-version=3",
      ],
      { timeout_ms: (SECONDS + 60) * 1000 },
    );
    const t1 = tpids.reduce((s, p) => s + cpuTicks(p), 0);
    const c1 = cpuTicks(client);
    const f = out.trim().split(";");
    const read = !RW.includes("write");
    const iops = Number(read ? f[7] : f[48]);
    const lat_us = Number(read ? f[39] : f[80]); // lat mean (µs) of the side
    // CPU includes the ramp second: count its I/Os too.
    const ios = iops * (SECONDS + 1);
    const us = (ticks: number) => (ticks / TICKS_PER_S) * 1e6 / ios;
    return { iops, lat_us, target_us: us(t1 - t0), client_us: us(c1 - c0) };
  } finally {
    await c.destroy();
  }
}

requireTool("fio");
const results: Record<"A" | "B", Point[]> = { A: [], B: [] };
const fmt = (p: Point) =>
  `${Math.round(p.iops)} IOPS, lat ${p.lat_us.toFixed(1)} us, CPU/IO target ${CONVERGED ? "-" : p.target_us.toFixed(1)} client ${p.client_us.toFixed(1)} us`;
console.log(`${RW} ${BS} QD${QD} ${CONVERGED ? "in-process" : "TCP"}${RAID === "1" ? " RAID1" : ""}, ${SIZE} volume, ${SECONDS} s, ${ROUNDS} rounds\nA = ${A}\nB = ${B}`);
for (let r = 0; r < ROUNDS; r++) {
  const order: ("A" | "B")[] = r % 2 === 0 ? ["A", "B"] : ["B", "A"];
  for (const k of order) {
    const p = await one(k === "A" ? A : B);
    results[k].push(p);
    console.log(`round ${r + 1} ${k}: ${fmt(p)}`);
  }
}
for (const k of ["A", "B"] as const) {
  const xs = results[k];
  const m: Point = {
    iops: median(xs.map((p) => p.iops)),
    lat_us: median(xs.map((p) => p.lat_us)),
    target_us: median(xs.map((p) => p.target_us)),
    client_us: median(xs.map((p) => p.client_us)),
  };
  console.log(`median ${k}: ${fmt(m)}`);
}
console.log(`B / A IOPS: ${(median(results.B.map((p) => p.iops)) / median(results.A.map((p) => p.iops))).toFixed(2)}x`);
