/**
 * Who keeps a drive's fence table, as the leader decides it from the drive reports
 * (cluster/fence-duty.ts): the drive's own TOMA while it reports freshly and confirms the current
 * table; the leader itself for a silent TOMA, or one that has not confirmed for too long. The
 * real DrivePool, on a clock the test moves.
 */
import { expect, test } from "bun:test";
import type { Env } from "../../src/engine/env.ts";
import { type LogLine, recordingLogger } from "../engine/target-fixture.ts";
import { DrivePool, type ReportedDrive } from "../../src/toma/cluster/drive-pool.ts";
import { FENCE_DUTY_GRACE_MS, FENCE_OWNER_FRESH_MS, FenceDuty } from "../../src/toma/cluster/fence-duty.ts";
import { tableDigest } from "../../src/toma/fencing.ts";
import { testEnv } from "./harness.ts";

const CLUSTER = "0f0e0d0c-0b0a-4908-8706-050403020100";
const DRIVE = "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee";
const KEY = JSON.stringify({ volumes: [], set: [{ client_id: 7, min_generation: 5, volumes: [] }] });
const NEWER = JSON.stringify({ volumes: [], set: [] });

function setup() {
  let now = 1000;
  const lines: LogLine[] = [];
  const env: Env = { ...testEnv(), clock: { now_ms: () => now }, log: recordingLogger(lines) };
  const pool = new DrivePool(() => now);
  const duty = new FenceDuty(env, pool);
  const report = (fence: ReportedDrive["fence"] | null) => {
    const d: ReportedDrive = { drive_uuid: DRIVE, target: "s1:4420", path: "/dev/x", size_bytes: 1 << 30, cluster_uuid: CLUSTER, extent_size_bytes: 1 << 20, extent_count: 1000, state: "ok", error: null, ...(fence ? { fence } : {}) };
    pool.report({ server: "s1", drives: [d] });
  };
  return { duty, report, lines, advance: (ms: number) => void (now += ms) };
}

test("a fresh report naming the current table: confirmed, and the leader pushes nothing", () => {
  const { duty, report } = setup();
  report({ version: 2 ** 32 + 9, generation: 9, table: tableDigest(KEY) });
  expect(duty.keeper(DRIVE, KEY)).toBe("confirmed");
  // A newer table than the one confirmed: its TOMA is on it, for a while.
  expect(duty.keeper(DRIVE, NEWER)).toBe("owner");
});

test("a TOMA that reports but does not confirm the current table within the grace: the leader keeps it", () => {
  const { duty, report, advance, lines } = setup();
  report(null);
  expect(duty.keeper(DRIVE, KEY)).toBe("owner");
  advance(FENCE_DUTY_GRACE_MS - 1);
  report(null);
  expect(duty.keeper(DRIVE, KEY)).toBe("owner");
  advance(1);
  expect(duty.keeper(DRIVE, KEY)).toBe("self");
  expect(lines.filter((l) => l.msg === "the leader keeps a drive's fence table itself").length).toBe(1);
  // Confirmed at last: back to its TOMA.
  report({ version: 7, generation: 7, table: tableDigest(KEY) });
  expect(duty.keeper(DRIVE, KEY)).toBe("confirmed");
  expect(duty.kept().size).toBe(0);
});

test("a silent TOMA (its report too old), or a drive nobody reports: the leader keeps its table, even one it confirmed", () => {
  const { duty, report, advance } = setup();
  report({ version: 7, generation: 7, table: tableDigest(KEY) });
  advance(FENCE_OWNER_FRESH_MS + 1);
  expect(duty.keeper(DRIVE, KEY)).toBe("self");
  expect(duty.kept().get(DRIVE)).toContain("silent");
  expect(duty.keeper("bbbbbbbb-bbbb-4ccc-8ddd-eeeeeeeeeeee", KEY)).toBe("self");
});
