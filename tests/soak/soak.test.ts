/**
 * The fault soak, two minutes of it, as CI runs it: servers as network namespaces, a 2-leg RAID1,
 * fio verifying through it from the client host, a fault every 10 s from a fixed seed, drawn from
 * the kinds that pass on today's code (docs/soak.md says which fail and why). Fails on any I/O or
 * verify error, a leg difference on the drive files, or a volume that does not come back. Timings
 * are printed (the summary), never asserted. Needs root (ip netns).
 */
import { expect, test } from "bun:test";
import { DEFAULT_OPTIONS, runSoak } from "./soak.ts";

const SEED = 21;
const FAULTS = ["kill", "toma-kill"] as const;

test("soak: 2 minutes of kill -9 of targets and the TOMA under fio verify, on separate network stacks", async () => {
  const r = await runSoak({
    ...DEFAULT_OPTIONS,
    duration_ms: 120_000,
    seed: SEED,
    faults: [...FAULTS],
    command: `npx bun tests/soak/main.ts --duration 2m --faults ${FAULTS.join(",")} --seed ${SEED}`,
  });
  console.log(r.summary);
  expect(r.faults.length).toBeGreaterThan(0);
  expect(r.errors).toEqual([]);
  expect(r.leg_differences).toBe(0);
  expect(r.failures).toEqual([]);
}, 900_000);
