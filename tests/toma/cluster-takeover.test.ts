/**
 * A TOMA cluster taking over a cluster the single TOMA managed (docs/toma-cluster.md, "Taking over
 * a single-TOMA cluster"). The single TOMA runs for real (src/toma/toma.ts over loopback targets
 * with in-memory drives), creates a RAID1 volume and stops; the same drives then become the three
 * servers' own drives of TOMA cluster members over the simulator's Env (cluster-fixture.ts).
 * Checked: every member applies exactly the single TOMA's last state (same cluster uuid, same
 * volume and legs), at a term above the single TOMA's and an index above its generation; the
 * leader's next command applies on top of it; with the state on too few drives every TOMA waits,
 * says why, and writes nothing over it.
 */
import { afterEach, expect, test } from "bun:test";
import type { FormattedDrive } from "../../src/engine/drive/formatted-api.ts";
import { type ClusterState, decodeState, emptyState, encodeState } from "../../src/toma/cluster-state.ts";
import { slotContents } from "../../src/toma/slot-contents.ts";
import { fenceVersion } from "../../src/toma/consensus/proposal.ts";
import { DrivePool } from "../../src/toma/cluster/drive-pool.ts";
import { VolumeOps } from "../../src/toma/cluster/volume-ops.ts";
import { steadyClock } from "../../src/engine/steady-clock.ts";
import { agreedLeader, cluster, driveReport, running, type Server, settle } from "./cluster-fixture.ts";
import { adminApi, MiB, memoryDrive, startTargets, startToma, type TestTarget, testEnv, until } from "./harness.ts";

const env = testEnv();
let cleanup: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const f of cleanup.reverse()) await f();
  cleanup = [];
});

/** Three targets of one drive each, a single TOMA, a RAID1 volume; the TOMA stopped. */
async function singleTomaCluster(): Promise<{ drives: FormattedDrive[][]; state: ClusterState; targets: TestTarget[] }> {
  const targets = await startTargets(env, [1, 1, 1]);
  cleanup.push(() => targets.forEach((t) => t.kill()));
  const { toma } = startToma(env, targets);
  cleanup.push(() => toma.stop());
  await toma.whenReady(5000);
  await until("3 member drives", () => toma.state?.drives.length === 3);
  const r = await adminApi(toma)("POST", "/v1/volumes", { name: "m", capacity_bytes: 2 * MiB, raid_level: "1" });
  expect(r.status).toBe(201);
  const state = toma.state!;
  // What every drive holds once the TOMA stopped: its last state (written to all three).
  await until("the state on every drive", async () => {
    for (const t of targets) {
      const slot = await t.drives[0]!.metaRead();
      if (slot.generation !== state.generation) return false;
    }
    return true;
  });
  await toma.stop();
  for (const t of targets) t.kill();
  return { drives: targets.map((t) => t.drives), state, targets };
}

test("the TOMAs of a single-TOMA cluster take its state over: same uuid, volumes and legs, at a term and index above it", async () => {
  for (const seed of [701, 702]) {
    const { drives, state, targets } = await singleTomaCluster();
    expect(state.volumes.map((v) => v.name)).toEqual(["m"]);
    const c = await cluster(seed, 3, 3, (i) => drives[i]!);
    for (const s of c.servers) c.boot(s);
    expect(await c.world.run(() => running(c).length === 3 && agreedLeader(c) !== null, 30_000)).toBe("done");
    for (const s of c.servers) {
      expect(s.toma!.appliedState()).toEqual(state);
      const v = s.toma!.view();
      expect(v.cluster_uuid).toBe(state.cluster_uuid);
      expect(v.term!).toBeGreaterThan(state.term ?? 0);
      expect(v.applied!).toBeGreaterThan(state.generation);
      // Every version the cluster's entries carry is above what the targets have seen.
      expect(fenceVersion(v.term!, v.applied!)).toBeGreaterThan(fenceVersion(state.term ?? 0, state.generation));
      // The own drive now holds this TOMA's record, above the single TOMA's slot generation.
      expect(v.hard_state!.seq).toBeGreaterThan(state.generation);
    }

    // The leader's next command is computed from, and applied on top of, the taken-over state.
    const leader = c.servers.find((s) => s.name === agreedLeader(c)!.toma)!;
    const clock = steadyClock(leader.env!.clock);
    const pool = new DrivePool(() => clock.now_ms());
    for (const s of c.servers) pool.report(driveReport(s, state.cluster_uuid));
    const ops = new VolumeOps(leader.env!, leader.toma!, pool);
    const r = await settle(c, ops.create({ name: "m2", capacity_bytes: MiB, raid_level: "1" }), 15_000);
    if (!r.ok) throw r.error;
    const after = leader.toma!.appliedState()!;
    expect(after.volumes.map((v) => v.name).sort()).toEqual(["m", "m2"]);
    expect(after.volumes.find((v) => v.name === "m")).toEqual(state.volumes[0]!);
    expect(after.generation).toBeGreaterThan(state.generation + 1);
    expect(await c.world.run(() => running(c).every((s) => s.toma!.appliedState()?.generation === after.generation), c.world.now + 5000)).toBe("done");
    expect(c.world.failure).toBeNull();

    // A single TOMA started again on these drives cannot take them back: it says why, writes nothing.
    for (const s of c.servers) s.machine.crash("process");
    for (const t of targets) await t.revive();
    const { toma } = startToma(env, targets);
    cleanup.push(() => toma.stop());
    await until("the single TOMA read the slots", () => toma.driveViews().filter((d) => d.error?.includes("hard-state record")).length === 3);
    expect(toma.ready).toBe(false);
  }
});

test("the single-TOMA state on too few of its drives: every TOMA waits, says why, and writes nothing over it", async () => {
  const { drives, state } = await singleTomaCluster();
  // Server 0 keeps its drive; servers 1 and 2 got blank drives: 1 of the state's 3 drives is read.
  const mine = drives[0]![0]!;
  const blank = [await memoryDrive("b1"), await memoryDrive("b2")];
  const c = await cluster(703, 3, 3, (i) => (i === 0 ? [mine] : [blank[i - 1]!]));
  for (const s of c.servers) c.boot(s);
  await c.world.run(() => false, 20_000);
  for (const s of c.servers) {
    expect(s.toma!.phase).toBe("bootstrap");
    expect(s.toma!.view().reason).toContain("lists 3 drive(s); the TOMAs read 1 of them, 2 needed");
  }
  const slot = await mine.metaRead();
  expect(slot.generation).toBe(state.generation);
  expect(decodeState(slot.payload!)).toEqual(state);
  for (const d of blank) expect((await d.metaRead()).generation).toBe(0);
});


test("after the takeover: an own drive still holding the state gets the record; another cluster's state is never written over", async () => {
  const { drives, state } = await singleTomaCluster();
  const c = await cluster(704, 3, 3, (i) => drives[i]!);
  for (const s of c.servers) c.boot(s);
  expect(await c.world.run(() => running(c).length === 3 && agreedLeader(c) !== null, 30_000)).toBe("done");

  // A drive of this cluster that was not served when the start record went out, still holding
  // the single TOMA's state: the restarted TOMA trusts its record and writes it there too.
  const s0 = c.servers[0]!;
  const node = s0.toma!.view().node_id;
  s0.machine.crash("process");
  const late = await memoryDrive("late");
  await late.metaWrite(state.generation, encodeState(state));
  s0.drives.push(late);
  c.boot(s0);
  expect(await c.world.run(() => s0.toma!.phase === "running" && agreedLeader(c) !== null, c.world.now + 10_000)).toBe("done");
  expect(s0.toma!.view().node_id).toBe(node);
  const held = slotContents({ drive_uuid: late.info.drive_uuid, ...(await late.metaRead()) });
  expect(held.kind === "hard_state" && held.record.toma_id).toBe(s0.name);

  // Another cluster's single-TOMA state on a drive: outside, naming it; the slot is untouched.
  const s1 = c.servers[1]!;
  s1.machine.crash("process");
  const other = await memoryDrive("other");
  const foreign = { ...emptyState("00000000-0000-4000-8000-00000000beef"), generation: 3 };
  await other.metaWrite(3, encodeState(foreign));
  s1.drives.push(other);
  c.boot(s1);
  expect(await c.world.run(() => s1.toma!.phase === "outside", c.world.now + 10_000)).toBe("done");
  expect(s1.toma!.view().reason).toContain(`${other.info.drive_uuid} hold the single-TOMA state of another cluster`);
  expect((await other.metaRead()).generation).toBe(3);
});

test("a founder whose drive holds neither a record nor a valid state goes outside naming it; the others wait for it", async () => {
  const { drives } = await singleTomaCluster();
  const odd = await memoryDrive("odd");
  await odd.metaWrite(2, new Uint8Array([0xa1, 0x61, 0x78, 0x01])); // CBOR {x: 1}: not a state
  const c = await cluster(705, 3, 3, (i) => (i === 2 ? [...drives[i]!, odd] : drives[i]!));
  for (const s of c.servers) c.boot(s);
  await c.world.run(() => false, 10_000);
  const s2 = c.servers[2]!;
  expect(s2.toma!.phase).toBe("outside");
  expect(s2.toma!.view().reason).toContain(odd.info.drive_uuid);
  for (const s of c.servers.slice(0, 2)) {
    expect(s.toma!.phase).toBe("bootstrap");
    expect(s.toma!.view().reason).toContain("(outside)");
  }
  expect((await odd.metaRead()).generation).toBe(2);
});

test("a server joining later with a drive holding the taken-over state joins (its slot takes its record); one holding another cluster's state stays outside", async () => {
  const { drives, state } = await singleTomaCluster();
  const same = await memoryDrive("same");
  await same.metaWrite(state.generation, encodeState(state));
  const c = await cluster(706, 4, 3, (i) => (i < 3 ? drives[i]! : [same]));
  for (const s of c.servers.slice(0, 3)) c.boot(s);
  expect(await c.world.run(() => running(c).length === 3 && agreedLeader(c) !== null, 30_000)).toBe("done");
  const joiner = c.servers[3]!;
  c.boot(joiner);
  expect(await c.world.run(() => joiner.toma!.phase === "running", c.world.now + 10_000)).toBe("done");
  expect(joiner.toma!.view().cluster_uuid).toBe(state.cluster_uuid);
  expect(joiner.toma!.view().membership).toBe("none");
  const held = slotContents({ drive_uuid: same.info.drive_uuid, ...(await same.metaRead()) });
  expect(held.kind === "hard_state" && held.record.toma_id).toBe(joiner.name);

  // The same server with a drive of another cluster instead: outside, the slot untouched.
  joiner.machine.crash("process");
  const other = await memoryDrive("other");
  await other.metaWrite(3, encodeState({ ...emptyState("00000000-0000-4000-8000-00000000beef"), generation: 3 }));
  joiner.drives.splice(0, 1, other);
  c.boot(joiner);
  expect(await c.world.run(() => joiner.toma!.phase === "outside", c.world.now + 10_000)).toBe("done");
  expect(joiner.toma!.view().reason).toContain(`own drive ${other.info.drive_uuid} holds the single-TOMA state of cluster 00000000-0000-4000-8000-00000000beef`);
  expect((await other.metaRead()).generation).toBe(3);
});

test("a founder that adopts after another founder restarted (its report gone) starts with nothing and gets the taken-over state from the leader", async () => {
  const { drives, state } = await singleTomaCluster();
  const c = await cluster(707, 3, 3, (i) => drives[i]!);
  const [s0, s1, s2] = c.servers as [Server, Server, Server];
  // s2's questions are refused; its answers go out: s0 and s1 found the cluster with it.
  c.refused.add(`${s2.address}>${s0.address}`);
  c.refused.add(`${s2.address}>${s1.address}`);
  for (const s of c.servers) c.boot(s);
  expect(await c.world.run(() => s0.toma!.phase === "running" && s1.toma!.phase === "running", 30_000)).toBe("done");
  s0.machine.crash("process");
  c.boot(s0);
  expect(await c.world.run(() => s0.toma!.phase === "running", c.world.now + 10_000)).toBe("done");
  expect(s2.toma!.phase).toBe("bootstrap");
  c.refused.clear();
  const r = await c.world.run(() => running(c).length === 3 && agreedLeader(c) !== null && s2.toma!.appliedState() !== null, c.world.now + 30_000);
  if (r !== "done") console.log(JSON.stringify(c.servers.map((s) => { const v = s.toma!.view(); return { n: s.name, phase: v.phase, reason: v.reason, role: v.role, term: v.term, m: v.membership, applied: v.applied, peers: v.peers.map((p) => [p.node_id, p.match]) }; })));
  expect(r).toBe("done");
  expect(s2.toma!.appliedState()).toEqual(s1.toma!.appliedState());
  expect(s2.toma!.appliedState()!.volumes).toEqual(state.volumes);
  expect(s2.toma!.view().membership).toBe("voter");
  expect(c.world.failure).toBeNull();
});
