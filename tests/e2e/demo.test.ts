/**
 * `nvmesh demo --exit` run to completion with the compiled binary: the cluster, the striped
 * volume's check, and the mirror act (a server killed while the mirror is written, brought back,
 * rebuilt, the data and the legs checked), then everything stopped and the temp folder removed.
 */
import { expect, test } from "bun:test";
import { existsSync } from "node:fs";
import { NVMESH, requireBinary, run } from "../support/proc.ts";

test("nvmesh demo --exit: a mirror survives a killed server and rebuilds, then the demo cleans up", async () => {
  requireBinary();
  const r = await run(
    [NVMESH, "demo", "--exit", "--drive-size", "512M", "--capacity", "768M", "--check-size", "16M", "--mirror-capacity", "128M"],
    { timeout_ms: 150_000 },
  );
  const out = r.stdout + r.stderr;
  console.log(out.replace(/^/gm, "  "));
  expect(r.code).toBe(0);
  expect(out).toMatch(/read it back and verified every byte/);
  expect(out).toMatch(/mirror Degraded after [\d.]+ s: legs ok, dead/);
  expect(out).toMatch(/volume demo is offline: it has no second copy/);
  expect(out).toMatch(/rebuilding leg 1: \[[#.]{20}\] \d+%/);
  expect(out).toMatch(/mirror Normal again/);
  expect(out).toMatch(/reads back as last written, and the two legs are byte-identical/);
  expect(out).toMatch(/cluster stopped and cleaned up/);
  const dir = /cluster on files in (\S+)/.exec(out)![1]!;
  expect(existsSync(dir)).toBe(false);
}, 180_000);
