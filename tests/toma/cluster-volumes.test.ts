/**
 * The leader's pool and volume commands (src/toma/cluster/volume-ops.ts, drive-pool.ts) over the
 * simulator's Env with real formatted drives, the real consensus member and transport
 * (cluster-fixture.ts). Checked: the drives the servers report are added, one command at a time,
 * and every member applies the same state; a RAID1 volume has its legs on two servers, a 3-way
 * mirror on three; a follower refuses with the leader's address; bad requests are refused with
 * the reason and change nothing (name taken, no room); two creates at once are both applied, one
 * after the other; after the leader's crash the new leader, once the servers reported to it,
 * allocates on them; a 10 TiB RAID1 volume is one small command, and a member that missed many
 * commands catches up by a snapshot sent in chunks. The size bounds themselves:
 * cluster-size-bounds.test.ts. Deleting a
 * volume is the leader's mirror control's (tests/e2e/toma-volumes-cluster.test.ts).
 */
import { expect, test } from "bun:test";
import { encode } from "cbor-x";
import { encodeState, type VolumeRecord } from "../../src/toma/cluster-state.ts";
import type { Raft } from "../../src/toma/consensus/raft.ts";
import { MAX_SNAPSHOT_CHUNK_BYTES } from "../../src/toma/consensus/types.ts";
import { encodeProposal } from "../../src/toma/consensus/proposal.ts";
import { DrivePool, type DriveReport } from "../../src/toma/cluster/drive-pool.ts";
import { LeaderOpError } from "../../src/toma/cluster/leader-gate.ts";
import { VolumeOps } from "../../src/toma/cluster/volume-ops.ts";
import { steadyClock } from "../../src/engine/steady-clock.ts";
import { agreedLeader, type Cluster, cluster, driveReport, running, type Server, settle } from "./cluster-fixture.ts";

const MiB = 1 << 20;
const TiB = 2 ** 40;

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
  const { ops } = await pooled(c, leader);
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

/** `n` servers h0.. report one drive each of `tib` TiB, with the default 16 MiB extents. */
async function hugeDrives(c: Cluster, leader: Server, pool: DrivePool, ops: VolumeOps, n: number, tib: number) {
  const cluster_uuid = leader.toma!.view().cluster_uuid!;
  const before = leader.toma!.appliedState()!.drives.length;
  for (let i = 0; i < n; i++) {
    const drive_uuid = `0000000${i}-0000-4000-8000-0000000000e0`;
    pool.report({ server: `h${i}`, drives: [{ drive_uuid, target: "x:1", path: "/dev/huge", size_bytes: tib * TiB, cluster_uuid, extent_size_bytes: 16 * MiB, extent_count: (tib * TiB) / (16 * MiB), state: "ok", error: null }] });
  }
  // As each report does: a call while the previous round still runs does nothing.
  const added = () => {
    ops.addReported();
    return leader.toma!.appliedState()!.drives.length === before + n;
  };
  expect(await c.world.run(added, c.world.now + 10_000)).toBe("done");
}

const raftOf = (s: Server) => (s.toma as unknown as { raft: Raft }).raft;

test("a 10 TiB RAID1 volume is one command of a few hundred bytes (a RAID1 volume above about 30 GiB was once refused)", async () => {
  const { c, leader, followers } = await started(331);
  const { pool, ops } = await pooled(c, leader);
  await hugeDrives(c, leader, pool, ops, 2, 12);
  const ten = await ok(c, ops.create({ name: "ten", capacity_bytes: 10 * TiB, raid_level: "1" }));
  expect(ten.columns.map((col) => col.extents.length)).toEqual([640 * 1024, 640 * 1024]);
  const { uuid, name, capacity_bytes, raid_level, stripe_width, stripe_size_bytes, extent_size_bytes, columns, mirrors } = ten;
  const cmd = encodeProposal({ computed_at: 1, cmd: { kind: "create_volume", uuid, name, capacity_bytes, raid_level, stripe_width, stripe_size_bytes, extent_size_bytes, columns, mirrors } });
  expect(cmd.length).toBeLessThan(400);
  const gen = leader.toma!.appliedState()!.generation;
  expect(await c.world.run(() => followers.every((f) => f.toma!.appliedState()?.generation === gen), c.world.now + 5000)).toBe("done");
  for (const f of followers) expect(f.toma!.appliedState()).toEqual(leader.toma!.appliedState());
  expect(c.world.failure).toBeNull();
});

test("a member that missed 70 volumes catches up by a snapshot in chunks; the state it gets is the leader's", async () => {
  const { c, leader, followers } = await started(332);
  const { pool, ops } = await pooled(c, leader);
  await hugeDrives(c, leader, pool, ops, 4, 2);
  // One follower is down while 70 volumes are created: more entries than the log keeps, so the
  // leader compacts them away and the follower can only catch up by a snapshot.
  const away = followers[0]!;
  away.machine.crash("process");
  for (let i = 0; i < 70; i++) await ok(c, ops.create({ name: `v${i}`, capacity_bytes: 16 * 1024 * MiB, raid_level: "1" }));
  const state = leader.toma!.appliedState()!;
  const bytes = encodeState(state).length;
  expect(raftOf(leader).snapshot().index).toBeGreaterThan(state.generation - 66);
  // More than one chunk, and beyond the 40 KiB one message could once carry as plain lists.
  expect(bytes).toBeGreaterThan(MAX_SNAPSHOT_CHUNK_BYTES);
  const plain = encode({ ...state, format: 1 }).length;
  expect(plain).toBeGreaterThan(40 * 1024);
  console.log(`state of ${state.volumes.length} volumes: ${bytes} bytes as runs, ${plain} as plain extent lists`);
  c.boot(away);
  expect(await c.world.run(() => away.toma!.appliedState()?.generation === leader.toma!.appliedState()!.generation, c.world.now + 30_000)).toBe("done");
  expect(away.toma!.appliedState()).toEqual(leader.toma!.appliedState());
  expect(raftOf(away).snapshot().index).toBeGreaterThan(state.generation - 66);
  expect(c.world.failure).toBeNull();
});
