/**
 * The seed sweeps CI runs, each split over two processes (the CI machine has two cores): seeds
 * 1..500 under the default fault schedule, and seeds 1..MIRROR_SEEDS with a RAID1 volume in the
 * workload (`--mirror`: topology steps, rebuilds, stale locks, the end-of-run leg check), each
 * with one TOMA and again with a TOMA on every server (`--toma-cluster`: elections, the leader's
 * control, clients re-homing, Raft's election and state machine safety checked on the members).
 * Every seed must pass; a failure prints its replay line. Longer runs:
 * `bun run sim --seeds 5000 --long`, `bun run sim --seeds 5000 --mirror`,
 * `bun run sim --seeds 3000 --mirror --toma-cluster`, `bun run sim --seeds 2000 --toma-cluster`.
 */
import { expect, test } from "bun:test";

const PROCESSES = 2;
const MIRROR_SEEDS = 400;
const CLUSTER_SEEDS = 200;
const CLUSTER_DEFAULT_SEEDS = 500;

async function sweep(seeds: number, extra: string[]): Promise<void> {
  const per = Math.ceil(seeds / PROCESSES);
  const runs = Array.from({ length: PROCESSES }, (_, i) => {
    const from = 1 + i * per;
    const k = Math.min(per, seeds - i * per);
    const p = Bun.spawn([process.execPath, "sim/main.ts", "--seeds", String(k), "--from", String(from), ...extra], {
      stdout: "pipe",
      stderr: "pipe",
    });
    // Read both pipes while waiting, so a chatty failure cannot fill a pipe and stall the child.
    return Promise.all([p.exited, new Response(p.stdout).text(), new Response(p.stderr).text()]).then(
      ([code, out, err]) => ({ code, out, err }),
    );
  });
  const results = await Promise.all(runs);
  for (const r of results) {
    const summary = r.out.split("\n").filter((l) => l.startsWith("sim: ") || l.startsWith("failing seeds"));
    console.log(summary.join("\n"));
    if (r.code !== 0) console.log(r.out.split("\n").filter((l) => !l.startsWith("…")).join("\n"), r.err);
  }
  expect(results.map((r) => r.code)).toEqual(results.map(() => 0));
}

test("simulator: seeds 1..500 all pass", () => sweep(500, []), 15 * 60_000);

test(`simulator with a TOMA on every server: seeds 1..${CLUSTER_DEFAULT_SEEDS} all pass`, () => sweep(CLUSTER_DEFAULT_SEEDS, ["--toma-cluster"]), 15 * 60_000);

test(`simulator with a RAID1 volume: seeds 1..${MIRROR_SEEDS} all pass`, () => sweep(MIRROR_SEEDS, ["--mirror"]), 15 * 60_000);

test(`simulator with a TOMA on every server and a RAID1 volume: seeds 1..${CLUSTER_SEEDS} all pass`, () => sweep(CLUSTER_SEEDS, ["--mirror", "--toma-cluster"]), 15 * 60_000);
