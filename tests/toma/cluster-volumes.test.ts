/**
 * The leader's pool and volume commands (src/toma/cluster/volume-ops.ts, drive-pool.ts) over the
 * simulator's Env with real formatted drives, the real consensus member and transport
 * (cluster-fixture.ts). Checked: the drives the servers report are added, one command at a time,
 * and every member applies the same state; a RAID1 volume has its legs on two servers, a 3-way
 * mirror on three; a follower refuses with the leader's address; bad requests are refused with
 * the reason and change nothing (name taken, no room, a command or a state too large for the
 * cluster to carry); two creates at once are both applied, one after the other; after the
 * leader's crash the new leader, once the servers reported to it, allocates on them. Deleting a
 * volume is the leader's mirror control's (tests/e2e/toma-volumes-cluster.test.ts).
 */
import { expect, test } from "bun:test";
import type { VolumeRecord } from "../../src/toma/cluster-state.ts";
import { DrivePool, type DriveReport } from "../../src/toma/cluster/drive-pool.ts";
import { LeaderOpError } from "../../src/toma/cluster/leader-gate.ts";
import { VolumeOps } from "../../src/toma/cluster/volume-ops.ts";
import { steadyClock } from "../../src/engine/steady-clock.ts";
import { agreedLeader, type Cluster, cluster, driveReport, running, type Server, settle } from "./cluster-fixture.ts";

const MiB = 1 << 20;

async function ok<T>(c: Cluster, p: Promise<T>): Promise<T> {
  const r = await settle(c, p, 15_000);
  if (!r.ok) throw r.error;
  return r.value;
}

async function refused(c: Cluster, p: Promise<unknown>): Promise<LeaderOpError> {
  const r = await settle(c, p, 15_000);
  expect(r.ok).toBe(false);
  const e = (r as { error: unknown }).error;
  expect(e).toBeInstanceOf(LeaderOpError);
  return e as LeaderOpError;
}

/** The leader's pool and commands, as a member builds them, over the leader's Env. */
function opsOn(s: Server) {
  const clock = steadyClock(s.env!.clock);
  const pool = new DrivePool(() => clock.now_ms());
  return { pool, ops: new VolumeOps(s.env!, s.toma!, pool) };
}

async function started(seed: number) {
  const c = await cluster(seed, 3, 3);
  for (const s of c.servers) c.boot(s);
  expect(await c.world.run(() => running(c).length === 3 && agreedLeader(c) !== null, 30_000)).toBe("done");
  const leader = c.servers.find((s) => s.name === agreedLeader(c)!.toma)!;
  return { c, leader, followers: c.servers.filter((s) => s !== leader) };
}

/** Every server reports to the leader; the leader adds the drives; every member applies them. */
async function pooled(c: Cluster, leader: Server) {
  const { pool, ops } = opsOn(leader);
  const cluster_uuid = leader.toma!.view().cluster_uuid!;
  for (const s of c.servers) pool.report(driveReport(s, cluster_uuid));
  ops.addReported();
  const all = c.servers.flatMap((s) => s.drives.map((d) => d.info.drive_uuid)).sort();
  expect(await c.world.run(() => running(c).every((s) => s.toma!.appliedState()?.drives.map((d) => d.drive_uuid).sort().join() === all.join()), c.world.now + 20_000)).toBe("done");
  return { pool, ops, server: (d: string) => c.servers.find((s) => s.drives.some((x) => x.info.drive_uuid === d))!.name };
}

test("reported drives are added; RAID1 legs on two servers, a 3-way mirror on three; every member applies the same; a follower names the leader", async () => {
  for (let seed = 301; seed <= 303; seed++) {
    const { c, leader, followers } = await started(seed);
    const { ops, server } = await pooled(c, leader);
    const m1 = await ok(c, ops.create({ name: "m1", capacity_bytes: 2 * MiB, raid_level: "1" }));
    expect(m1.columns.length).toBe(2);
    expect(new Set(m1.columns.map((col) => server(col.drive_uuid))).size).toBe(2);
    const m3 = await ok(c, ops.create({ name: "m3", capacity_bytes: MiB, raid_level: "1", mirrors: 3 }));
    expect(new Set(m3.columns.map((col) => server(col.drive_uuid))).size).toBe(3);
    const gen = leader.toma!.appliedState()!.generation;
    expect(await c.world.run(() => followers.every((f) => f.toma!.appliedState()?.generation === gen), c.world.now + 5000)).toBe("done");
    for (const f of followers) expect(f.toma!.appliedState()).toEqual(leader.toma!.appliedState());
    // A follower's commands refuse at once with the leader's address.
    const e = await refused(c, opsOn(followers[0]!).ops.create({ name: "m9", capacity_bytes: MiB, raid_level: "1" }));
    expect(e.status).toBe(421);
    expect(e.leader).toBe(leader.address);
    expect(c.world.failure).toBeNull();
  }
});

test("bad requests are refused with the reason and change nothing; two creates at once both apply, one after the other", async () => {
  const { c, leader } = await started(311);
  const { pool, ops } = await pooled(c, leader);
  await ok(c, ops.create({ name: "m1", capacity_bytes: 2 * MiB, raid_level: "1" }));
  const before = leader.toma!.appliedState()!;
  const taken = await refused(c, ops.create({ name: "m1", capacity_bytes: MiB, raid_level: "1" }));
  expect([taken.status, taken.message]).toEqual([409, expect.stringContaining("already exists")]);
  const big = await refused(c, ops.create({ name: "big", capacity_bytes: 64 * MiB, raid_level: "1" }));
  expect(big.status).toBe(507);
  expect(leader.toma!.appliedState()).toEqual(before);

  // Two at once: the second is computed from the state the first left (no stale refusal).
  const [a, b] = await Promise.all([ok(c, ops.create({ name: "a", capacity_bytes: MiB, raid_level: "0" })), ok(c, ops.create({ name: "b", capacity_bytes: MiB, raid_level: "concatenated" }))]);
  expect([a.name, b.name]).toEqual(["a", "b"]);
  expect(b.created_seq).toBeGreaterThan(a.created_seq);

  // A server reporting a large drive: a volume whose command lists more extents than a log
  // entry may hold is refused before it is proposed; so is a state too large for one snapshot.
  const cluster_uuid = before.cluster_uuid;
  const huge = (n: number) => `0000000${n}-0000-4000-8000-0000000000f0`;
  const hugeReport = (name: string, n: number): DriveReport => ({
    server: name,
    drives: [{ drive_uuid: huge(n), target: "x:1", path: "/dev/huge", size_bytes: 16384 * MiB, cluster_uuid, extent_size_bytes: MiB, extent_count: 16384, state: "ok", error: null }],
  });
  pool.report(hugeReport("h0", 7));
  pool.report(hugeReport("h1", 8));
  ops.addReported();
  expect(await c.world.run(() => leader.toma!.appliedState()!.drives.length === 8, c.world.now + 10_000)).toBe("done");
  const wide = await refused(c, ops.create({ name: "wide", capacity_bytes: 4000 * MiB, raid_level: "1" }));
  expect([wide.status, wide.message]).toEqual([507, expect.stringContaining("log entry may hold")]);
  let made = 0;
  let last: LeaderOpError | null = null;
  for (let i = 0; i < 40 && last === null; i++) {
    const r = await settle(c, ops.create({ name: `s${i}`, capacity_bytes: 1000 * MiB, raid_level: "1" }), 15_000);
    if (r.ok) made++;
    else last = r.error as LeaderOpError;
  }
  expect(last?.status).toBe(507);
  expect(last?.message).toContain("in one snapshot");
  console.log(`state limit: ${made} RAID1 volumes of 1000 MiB on 1 MiB extents fit before the 40 KiB state bound`);
  expect(made).toBeGreaterThan(0);
  expect(pool.view().servers.map((s) => s.server)).toContain("h0");
  expect(c.world.failure).toBeNull();
});

test("after the leader's crash the new leader, once the servers reported to it, shows the volume and creates another", async () => {
  const { c, leader } = await started(321);
  const { ops } = await pooled(c, leader);
  const m1: VolumeRecord = await ok(c, ops.create({ name: "m1", capacity_bytes: 2 * MiB, raid_level: "1" }));
  leader.machine.crash("process");
  expect(await c.world.run(() => agreedLeader(c) !== null && agreedLeader(c)!.toma !== leader.name, c.world.now + 20_000)).toBe("done");
  const next = c.servers.find((s) => s.name === agreedLeader(c)!.toma)!;
  expect(next.toma!.appliedState()!.volumes.find((v) => v.name === "m1")).toEqual(m1);
  const fresh = opsOn(next);
  // No server has reported to it yet: nothing is usable, and it says so.
  const none = await refused(c, fresh.ops.create({ name: "m2", capacity_bytes: MiB, raid_level: "1" }));
  expect([none.status, none.message]).toEqual([507, expect.stringContaining("no usable drive")]);
  for (const s of running(c)) fresh.pool.report(driveReport(s, next.toma!.view().cluster_uuid!));
  const m2 = await ok(c, fresh.ops.create({ name: "m2", capacity_bytes: MiB, raid_level: "1" }));
  expect(next.toma!.appliedState()!.volumes.map((v) => v.name)).toEqual(["m1", "m2"]);
  // Its legs are on the servers that reported, never on the crashed leader's drives.
  const crashed = new Set(leader.drives.map((d) => d.info.drive_uuid));
  expect(m2.columns.some((col) => crashed.has(col.drive_uuid))).toBe(false);
  expect(c.world.failure).toBeNull();
});
