/**
 * CPU profile of the data path: a one-target cluster whose target and client daemons run from
 * source under `bun --cpu-prof-md`, one fio job against the volume, then a graceful stop so both
 * write their profile. Usage:
 *   bun bench/profile.ts [--rw randread] [--bs 4k] [--qd 32] [--seconds 10] [--raid-level concatenated|1]
 *                        [--converged] [--out /tmp/prof]
 * Writes <out>/t0.md (t1.md for RAID1) and <out>/client.md (Bun's markdown profile: hot
 * functions first). With --converged the client daemon hosts t0 and reaches it in-process (the
 * fio matrix's "in-process" side); there is then no t0.md.
 */
import { mkdirSync, readdirSync, renameSync } from "node:fs";
import { Cluster } from "../tests/support/cluster.ts";
import { ROOT, ok, requireTool } from "../tests/support/proc.ts";
import { flag } from "./common.ts";

const RW = flag("rw", "randread");
const BS = flag("bs", "4k");
const QD = flag("qd", "32");
const SECONDS = flag("seconds", "10");
const OUT = flag("out", "/tmp/nvmesh-prof");
const INTERVAL = flag("interval", "200");
/** concatenated: one target; 1: a RAID1 volume with its legs on two targets. */
const RAID = flag("raid-level", "concatenated");
const TARGETS = RAID === "1" ? 2 : 1;
const CONVERGED = process.argv.includes("--converged");

const BUN = process.execPath;
const MAIN = `${ROOT}/src/cmd/main.ts`;

function profiled(name: string): string[] {
  return [BUN, "--cpu-prof-md", `--cpu-prof-dir=${OUT}/${name}`, `--cpu-prof-interval=${INTERVAL}`, MAIN];
}

/** The targets and the client daemon run from source under the profiler. */
class ProfiledCluster extends Cluster {
  protected override nvmesh(name: string): string[] {
    return name === "toma" ? super.nvmesh(name) : profiled(name);
  }
}

requireTool("fio");
mkdirSync(OUT, { recursive: true });
const cluster = new ProfiledCluster({ targets: TARGETS, drive_size: "2G", converged: CONVERGED });
try {
  await cluster.start();
  await cluster.cli("volume", "create", "--name", "prof", "--capacity", "512M", "--raid-level", RAID);
  const uri = await cluster.attach("prof");
  await ok(["fio", "--name=fill", "--ioengine=nbd", `--uri=${uri}`, "--rw=write", "--bs=1M", "--iodepth=8"], {
    timeout_ms: 600_000,
  });
  const out = await ok(
    [
      "fio", "--name=prof", "--ioengine=nbd", `--uri=${uri}`, `--rw=${RW}`, `--bs=${BS}`, `--iodepth=${QD}`,
      `--runtime=${SECONDS}`, "--time_based", "--output-format=terse", "--terse-version=3",
    ],
    { timeout_ms: (Number(SECONDS) + 60) * 1000 },
  );
  const f = out.trim().split(";");
  const read = RW.includes("read");
  console.log(`${RW} ${BS} QD${QD}: ${read ? f[7] : f[48]} IOPS`);
  await cluster.stopAll("SIGTERM");
} finally {
  await cluster.destroy();
}
const profiledTargets = Array.from({ length: TARGETS }, (_, t) => `t${t}`).slice(CONVERGED ? 1 : 0);
for (const name of [...profiledTargets, "client"]) {
  const files = readdirSync(`${OUT}/${name}`).filter((f) => f.endsWith(".md")).sort();
  if (files.length > 0) renameSync(`${OUT}/${name}/${files.at(-1)}`, `${OUT}/${name}.md`);
  console.log(`${OUT}/${name}.md`);
}
