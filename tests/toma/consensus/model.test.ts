/**
 * The consensus core under the randomized model (model.ts): safety checked all along, liveness
 * after the heal, and no disruption by a one-way cut. A failing seed prints its replay line.
 * MODEL_SEEDS=N runs more (docs/toma-cluster.md gives the last sweep of 10000 seeds).
 */
import { expect, test } from "bun:test";
import { runModel } from "./model.ts";

const SEEDS = Number(process.env.MODEL_SEEDS ?? 1000);

test(`consensus model: seeds 1..${SEEDS} keep every safety property and heal`, () => {
  const total: Record<string, number> = {};
  const failures: string[] = [];
  let checked = 0;
  for (let seed = 1; seed <= SEEDS; seed++) {
    const r = runModel(seed);
    if (r.violation) failures.push(`${r.violation.split("\n")[0]} (replay: runModel(${seed}, {log: console.log}))`);
    if (r.liveness_checked) checked++;
    for (const [k, v] of Object.entries(r.stats)) total[k] = (total[k] ?? 0) + v;
  }
  console.log(`consensus model, ${SEEDS} seeds, liveness checked in ${checked}:`, total);
  expect(failures).toEqual([]);
  // Liveness is skipped only where faults cost a majority of voters for good (reported above).
  expect(checked).toBeGreaterThan(SEEDS * 0.9);
  // The faults happened, and the paths they open were taken.
  for (const k of ["elections", "crashes", "crash_mid_write", "crash_after_send", "amnesia", "amnesic_at_start", "trusted_split", "conf_add_learner", "conf_remove", "conf_promote", "cut_phase_passed", "dropped"]) {
    expect(total[k] ?? 0).toBeGreaterThan(0);
  }
}, 300_000);
