/**
 * The leader's side of a rebuild handed to the TOMA serving the leg's drive (rebuild-orders.ts):
 * who copies, how a report ends an order, the silent-TOMA rule, and which lock owners stay
 * protected until the leader's control-plane version passed their order's.
 */
import { expect, test } from "bun:test";
import type { Env } from "../../src/engine/env.ts";
import { realEnv } from "../../src/engine/runtime/real-env.ts";
import { apply, type ClusterState } from "../../src/toma/cluster-state.ts";
import { fenceVersion } from "../../src/toma/consensus/proposal.ts";
import { DrivePool, REPORT_FRESH_MS, type ReportedDrive } from "../../src/toma/cluster/drive-pool.ts";
import { RebuildDelegation, SHUN_MS } from "../../src/toma/cluster/rebuild-orders.ts";
import type { RebuildJob } from "../../src/toma/cluster/rebuild-wire.ts";
import type { RebuildOutcome } from "../../src/toma/mirror-control.ts";
import { MiB, quietLogger } from "./harness.ts";
import { D, withMirror } from "./mirror-state.ts";

const TERM = 3;

function fixture() {
  let now = 1_000_000;
  const env: Env = { ...realEnv("delegation-test", quietLogger), clock: { now_ms: () => now } };
  let state: ClusterState = withMirror();
  // Leg 1 (drive 2, on server s2) comes back: Degraded, then Rebuild.
  for (const legs of [["ok", "dead"], ["ok", "syncing"]] as const) {
    const r = apply(state, { kind: "set_legs", uuid: state.volumes[0]!.uuid, legs: [...legs] });
    if (!r.ok) throw new Error(r.error);
    state = r.state;
  }
  let generation = state.generation;
  const pool = new DrivePool(() => now);
  const drive = (u: string): ReportedDrive => ({
    drive_uuid: u,
    target: `t-${u.slice(-1)}:4420`,
    path: "mem",
    size_bytes: 8 * MiB,
    cluster_uuid: state.cluster_uuid,
    extent_size_bytes: MiB,
    extent_count: 8,
    state: "ok",
    error: null,
  });
  const report = (server: string, ...drives: string[]) => pool.report({ server, drives: drives.map(drive) });
  report("s1", D(1));
  report("s2", D(2));
  const d = new RebuildDelegation(env, "s1", pool, TERM, () => fenceVersion(TERM, generation));
  const ends: RebuildOutcome[] = [];
  const progress = { done_bytes: 0, total_bytes: 0 };
  const hand = () => d.hand(state.volumes[0]!, 1, 0, true, progress, (o) => ends.push(o));
  const job = (over: Partial<RebuildJob> = {}): RebuildJob => {
    const o = d.ordersFor("s2")[0]!;
    return { volume_uuid: o.volume_uuid, column: 1, topology_seq: o.topology_seq, term: TERM, owner_id: o.owner_id, state: "running", done_bytes: 0, total_bytes: 2 * MiB, from_epoch: null, error: null, ...over };
  };
  return {
    d,
    state: () => state,
    ends,
    progress,
    hand,
    job,
    report,
    advance: (ms: number) => (now += ms),
    commit: () => generation++,
  };
}

test("a syncing leg on another server's drive is handed to that server's TOMA; its report of done ends the order", () => {
  const f = fixture();
  expect(f.hand()).toBe(true);
  const [o] = f.d.ordersFor("s2");
  expect(o).toMatchObject({ column: 1, source: 0, topology_seq: f.state().volumes[0]!.topology_seq, term: TERM, version: fenceVersion(TERM, f.state().generation), clear_bits: true });
  expect(f.d.ordersFor("s1")).toEqual([]);
  // Its locks are a TOMA's, never a dead client's; the volume's extents may not be released.
  expect(f.d.owners().has(o!.owner_id)).toBe(true);
  expect(f.d.busyOn(o!.volume_uuid)).toBe(true);
  f.d.received("s2", [f.job({ done_bytes: MiB })]);
  expect(f.progress).toEqual({ done_bytes: MiB, total_bytes: 2 * MiB });
  expect(f.ends).toEqual([]);
  f.d.received("s2", [f.job({ state: "done", done_bytes: 2 * MiB, from_epoch: 7 })]);
  expect(f.ends).toEqual([{ ok: true, from_epoch: 7 }]);
  expect(f.d.ordersFor("s2")).toEqual([]);
  // Its requests are admitted at the drives until the leader's version passes the order's.
  expect(f.d.owners().has(o!.owner_id)).toBe(true);
  f.commit();
  f.d.check();
  expect(f.d.owners().has(o!.owner_id)).toBe(false);
  expect(f.d.busyOn(o!.volume_uuid)).toBe(false);
});

test("a job of another order (older term, generation or owner), or from another server, is no news", () => {
  const f = fixture();
  f.hand();
  for (const [server, over] of [
    ["s2", { term: TERM - 1 }],
    ["s2", { topology_seq: 1 }],
    ["s2", { owner_id: 12345 }],
    ["s1", {}],
  ] as const) {
    f.d.received(server, [f.job({ ...over, state: "done", from_epoch: 1 })]);
  }
  expect(f.ends).toEqual([]);
  expect(f.d.ordersFor("s2").length).toBe(1);
});

test("the leader copies itself a leg on its own server's drive, or on a silent server's, or after its server failed twice", () => {
  const f = fixture();
  // Leg 1's drive on the leader's own server.
  f.report("s1", D(1), D(2));
  f.report("s2");
  expect(f.hand()).toBe(false);
  // On s2, whose report is stale.
  const g = fixture();
  g.advance(REPORT_FRESH_MS + 1);
  g.report("s1", D(1));
  expect(g.hand()).toBe(false);
  // On s2, which reported two failures for this generation.
  const h = fixture();
  for (let i = 0; i < 2; i++) {
    expect(h.hand()).toBe(true);
    h.d.received("s2", [h.job({ state: "failed", error: "STALE" })]);
  }
  expect(h.ends).toEqual([
    { ok: false, error: "server s2: STALE", report: false },
    { ok: false, error: "server s2: STALE", report: false },
  ]);
  expect(h.hand()).toBe(false);
});

test("a silent TOMA loses its order; the leg goes out and back only while the leader's version has not passed the order's", () => {
  const f = fixture();
  f.hand();
  const owner = f.d.ordersFor("s2")[0]!.owner_id;
  f.d.received("s2", [f.job()]);
  // s2's TOMA stops reporting (dead or paused; its target lives): the order is taken back.
  f.advance(REPORT_FRESH_MS + 1);
  f.report("s1", D(1));
  f.d.check();
  expect(f.ends).toEqual([{ ok: false, error: "the TOMA of server s2 is silent", report: true }]);
  expect(f.d.ordersFor("s2")).toEqual([]);
  // Its copy may still hold a lock it can still use: protected until the version moved on.
  expect(f.d.owners().has(owner)).toBe(true);
  f.commit();
  expect(f.d.owners().has(owner)).toBe(false);
  // s2 reports again: handed nothing for SHUN_MS (a TOMA that reports but never runs an order
  // would otherwise make the leg go out and back at every generation), then handed again.
  f.report("s2", D(2));
  expect(f.hand()).toBe(false);
  f.advance(SHUN_MS);
  f.report("s1", D(1));
  f.report("s2", D(2));
  expect(f.hand()).toBe(true);
  // A version already past the order's needs no step.
  const g = fixture();
  g.hand();
  g.d.received("s2", [g.job()]);
  g.commit();
  g.advance(REPORT_FRESH_MS + 1);
  g.report("s1", D(1));
  g.d.check();
  expect(g.ends).toEqual([{ ok: false, error: "the TOMA of server s2 is silent", report: false }]);
});

test("an order its TOMA never lists within a report's freshness is taken back; a drive now served elsewhere too", () => {
  const f = fixture();
  f.hand();
  f.advance(REPORT_FRESH_MS - 1000);
  f.report("s2", D(2));
  f.d.check();
  expect(f.ends).toEqual([]);
  f.advance(1001);
  f.report("s2", D(2));
  f.d.check();
  expect(f.ends.length).toBe(1);
  const g = fixture();
  g.hand();
  g.d.received("s2", [g.job()]);
  g.report("s2");
  g.report("s3", D(2));
  g.d.check();
  expect(g.ends).toEqual([{ ok: false, error: "the TOMA of server s2 is silent", report: true }]);
});
