/**
 * The seed sweep CI runs: seeds 1..500 under the default fault schedule, split over two processes
 * (the CI machine has two cores). Every seed must pass; a failure prints its replay line.
 * The nightly-style run is `bun run sim --seeds 5000 --long`.
 */
import { expect, test } from "bun:test";

const SEEDS = 500;
const PROCESSES = 2;

test(`simulator: seeds 1..${SEEDS} all pass`, async () => {
  const per = Math.ceil(SEEDS / PROCESSES);
  const runs = Array.from({ length: PROCESSES }, (_, i) => {
    const from = 1 + i * per;
    const k = Math.min(per, SEEDS - i * per);
    const p = Bun.spawn([process.execPath, "sim/main.ts", "--seeds", String(k), "--from", String(from)], {
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
}, 15 * 60_000);
