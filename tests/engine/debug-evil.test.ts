/**
 * Two clients run the verify workload on one debug-format RAID1 volume over a real target; one of
 * them has an evil switch on. Forensics (the library scan over both legs' data areas) must find
 * the corruption and name that client, with the right class; a clean run must show none. The
 * same is shown with real processes in tests/e2e/debug-format.test.ts.
 */
import { EVIL_CLASS } from "../debugfmt/fixtures.ts";
import { afterEach, describe, expect, test } from "bun:test";
import type { EvilKind } from "../../src/engine/client/debug-evil.ts";
import { layoutPeerPosition, layoutPlacement } from "../../src/debugfmt/placement.ts";
import { scan, type ScanResult } from "../../src/debugfmt/scan.ts";
import { runVerifyWorker, type VerifyWorkerResult } from "../../src/debugfmt/verify-worker.ts";
import type { PatternSpec } from "../../src/debugfmt/pattern.ts";
import { startVolume, type VolumeFixture } from "./volume-fixture.ts";

const MiB = 1024 * 1024;
const GOOD = { client_id: 11, client_name: "good" };
const EVIL = { client_id: 99, client_name: "evil" };
let open: VolumeFixture[] = [];

afterEach(async () => {
  for (const f of open) await f.close();
  open = [];
});

/** Worker 0 on the good client, worker 1 on the other; then both legs scanned side by side. */
async function run(evil: EvilKind | null, every = 2, skew = 0): Promise<{ result: ScanResult; workers: VerifyWorkerResult[]; byNeighbours: ScanResult }> {
  const f = await startVolume("1", { capacity_bytes: 2 * MiB, debug_format: true, skew, ...GOOD });
  open.push(f);
  const other = f.client({ ...EVIL, ...(evil ? { evil: { kind: evil, every } } : {}) });
  const spec: PatternSpec = { seed_id: 7, workers: 2, blocks: (2 * MiB) / 4096, block_sectors: 8, base_lba: 0 };
  // Each worker owns 256 blocks: 200 steps stay within the first pass (no block written twice).
  const workers = await Promise.all(
    [f.debug!, other].map((dev, worker) => runVerifyWorker(dev, { spec, worker, should_stop: () => false, max_steps: 200 })),
  );
  // Placement from the layout, as `forensics scan` takes it from the cluster state on the drives.
  const files = [0, 1].map((c) => ({ name: f.source(c).name, drive_uuid: f.layout.columns[c]!.drive_uuid, extent_bytes: MiB }));
  const result = await scan(f.source(0), {
    peer: f.source(1),
    volume_uuid: f.layout.volume_uuid,
    placement: layoutPlacement(files, [f.layout]),
    known_volumes: new Set([f.layout.volume_uuid]),
    peer_position: layoutPeerPosition(files[0]!, files[1]!, [f.layout]),
  });
  // The same scan judging places from the neighbours only, legs position by position (no layout).
  const byNeighbours = await scan(f.source(0), { peer: f.source(1), volume_uuid: f.layout.volume_uuid });
  return { result, workers, byNeighbours };
}

function classesOf(r: ScanResult): Set<string> {
  return new Set(r.problems.map((p) => p.class));
}

describe("forensics names the evil client", () => {
  test("a clean run of two clients: zero problems, both workers clean", async () => {
    const { result, workers, byNeighbours } = await run(null);
    expect(byNeighbours.problems).toEqual([]);
    expect(workers.map((w) => [w.mismatch, w.error])).toEqual([[null, null], [null, null]]);
    expect(workers.every((w) => w.writes === 200)).toBe(true);
    expect(result.problems).toEqual([]);
    expect(result.clients.map((c) => c.client_name).sort()).toEqual(["evil", "good"]);
    expect(result.peer!.same).toBeGreaterThan(3000);
  });

  test("legs on different extents of their drives are compared block by block, through the layout", async () => {
    const clean = await run(null, 2, 3);
    expect(clean.result.problems).toEqual([]);
    expect(clean.result.peer!.same).toBeGreaterThan(3000);
    const skipped = await run("skip-leg", 2, 3);
    const found = skipped.result.problems.filter((p) => p.class === "skipped_leg");
    expect(found.length).toBeGreaterThan(0);
    for (const p of skipped.result.problems) if (p.culprit !== null) expect(p.culprit).toEqual(EVIL);
  }, 20_000);

  const cases: [EvilKind, string][] = Object.entries(EVIL_CLASS) as [EvilKind, string][];
  for (const [kind, cls] of cases) {
    test(`${kind}: found as ${cls}, and only the evil client is named`, async () => {
      const { result } = await run(kind);
      expect(classesOf(result)).toContain(cls);
      const named = result.problems.filter((p) => p.class === cls);
      expect(named.length).toBeGreaterThan(0);
      for (const p of named) expect(p.culprit).toEqual(EVIL);
      // Nobody else is ever accused.
      for (const p of result.problems) if (p.culprit !== null) expect(p.culprit).toEqual(EVIL);
    }, 20_000);
  }
});
