/**
 * The trust theorem under random churn (record-model.ts): for every seed, at every start, the
 * trusted record is never older than one its incarnation relied on. RECORD_SEEDS=N runs more.
 */
import { expect, test } from "bun:test";
import { type RecordModelStats, runRecordModel } from "./record-model.ts";

const SEEDS = Number(process.env.RECORD_SEEDS ?? 2000);

test(`hard-state records: the trust theorem holds for seeds 1..${SEEDS}`, () => {
  const total: Omit<RecordModelStats, "violation"> = { starts: 0, trusted_full: 0, trusted_split: 0, amnesic: 0, resurrected: 0, writes: 0 };
  const failures: string[] = [];
  for (let seed = 1; seed <= SEEDS; seed++) {
    const r = runRecordModel(seed);
    if (r.violation) failures.push(`${r.violation} (replay: runRecordModel(${seed}, 300, console.log))`);
    for (const k of Object.keys(total) as (keyof typeof total)[]) total[k] += r[k];
  }
  console.log(`record model, ${SEEDS} seeds:`, total);
  expect(failures).toEqual([]);
  // The run exercised every path of the rule, or it proves little.
  expect(total.trusted_full).toBeGreaterThan(SEEDS);
  expect(total.trusted_split).toBeGreaterThan(SEEDS / 10);
  expect(total.resurrected).toBeGreaterThan(SEEDS / 10);
  expect(total.amnesic).toBeGreaterThan(SEEDS);
}, 120_000);
