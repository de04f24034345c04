/**
 * `nvmesh demo --exit` run to completion with the compiled binary: three servers, each a target
 * and a TOMA of a TOMA cluster; the striped volume's check; the mirror act (the leader's server
 * killed while the mirror is written: a new leader in a later term, Degraded, no I/O error; the
 * server back: its TOMA rejoins as the same node, the leg is rebuilt, Normal, data and legs
 * checked); the TOMA cluster's status; then everything stopped and the temp folder removed.
 */
import { expect, test } from "bun:test";
import { existsSync } from "node:fs";
import { NVMESH, requireBinary, run } from "../support/proc.ts";

test("nvmesh demo --exit: the leader's server killed under writes, a new leader, the mirror rebuilt, then the demo cleans up", async () => {
  requireBinary();
  const r = await run(
    [NVMESH, "demo", "--exit", "--drive-size", "512M", "--capacity", "768M", "--check-size", "16M", "--mirror-capacity", "128M"],
    { timeout_ms: 150_000 },
  );
  const out = r.stdout + r.stderr;
  console.log(out.replace(/^/gm, "  "));
  expect(r.code).toBe(0);
  expect(out).toMatch(/TOMA cluster of 3: server1 on \S+, server2 on \S+, server3 on \S+; cluster \S+ founded on the drives themselves, leader server\d in term \d+/);
  expect(out).toMatch(/read it back and verified every byte/);
  // The leader before the kill, and a new one, in a later term, after it.
  const before = /the TOMA cluster's leader is (server\d) \(TOMA on \S+, node (\S+)\), term (\d+)/.exec(out)!;
  expect(before).not.toBeNull();
  expect(out).toContain(`kill -9 ${before[1]}, the leader's server: its TOMA and its target, with leg`);
  const after = /new leader: (server\d) in term (\d+), [\d.]+ s after the kill/.exec(out)!;
  expect(after).not.toBeNull();
  expect(after[1]).not.toBe(before[1]);
  expect(Number(after[2])).toBeGreaterThan(Number(before[3]));
  expect(out).toMatch(/mirror Degraded after [\d.]+ s: legs (ok|dead), (ok|dead), (ok|dead)/);
  expect(out.match(/ {2}degraded: \d+ MiB\/s, .* no I\/O error/g)?.length).toBe(3);
  expect(out).toMatch(/volume demo is offline: it has no second copy/);
  // Back: the same node rejoins, the leg is rebuilt, Normal, and nothing the writer did failed.
  expect(out).toContain(`${before[1]}'s TOMA rejoined`);
  expect(out).toContain(`node ${before[2]}, the same node, follower in term`);
  expect(out).toMatch(/rebuilding leg \d: \[[#.]{20}\] \d+%/);
  expect(out).toMatch(/mirror Normal again/);
  expect(out).toMatch(/the writer saw no I\/O error: all \d+ of its writes/);
  expect(out).toMatch(/reads back as last written, and the 3 legs are byte-identical/);
  // The TOMA cluster's status at the end: one leader, every TOMA up with its target, Normal.
  const status = /TOMA cluster: term (\d+), leader (server\d) \S+ · (.*)/.exec(out)!;
  expect(status).not.toBeNull();
  expect(status[2]).toBe(after[1]);
  expect(status[3]!.match(/server\d (leader|follower) \(term \d+\), target up/g)?.length).toBe(3);
  expect(out).toMatch(/drives 3 ok, 0 missing · demo online, mirror online/);
  expect(out).toMatch(/cluster stopped and cleaned up/);
  const dir = /cluster on files in (\S+)/.exec(out)![1]!;
  expect(existsSync(dir)).toBe(false);
}, 180_000);
