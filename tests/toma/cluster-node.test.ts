/**
 * The TOMA cluster member (src/toma/cluster/node.ts) over the simulator's Env: virtual time,
 * per-machine clocks, processes that crash (their timers never fire again). Each TOMA's drives are
 * real formatted drives in memory, reached through the same SlotIo the runtime uses over a target
 * session; messages go through the real envelope codec and the real peer senders, delivered by
 * the simulated world after a delay. Checked: a leader is elected and every TOMA agrees on it and
 * its term; its hard state is on its drives; killing the leader gives a new one in a higher term;
 * the old one restarts from its drives as the same node id and follows.
 */
import { expect, test } from "bun:test";
import { formatDrive } from "../../src/engine/drive/format.ts";
import { openDrive } from "../../src/engine/drive/formatted-drive.ts";
import { MemoryStore } from "../../src/engine/drive/memory-store.ts";
import { decodeRecord } from "../../src/toma/consensus/hard-state-record.ts";
import { TomaNode } from "../../src/toma/cluster/node.ts";
import { agreedLeader, cluster, running, slotIo } from "./cluster-fixture.ts";


test("three TOMAs found a cluster, elect one leader, survive its crash, and take it back from its drives (seeds 1..20)", async () => {
  const took: number[] = [];
  for (let seed = 1; seed <= 20; seed++) took.push(await electKillRestart(seed));
  console.log(`new leader after the old one crashed, virtual ms: max ${Math.max(...took).toFixed(0)}, median ${took.sort((a, b) => a - b)[10]!.toFixed(0)}`);
});

/** One run; returns the virtual ms from the leader's crash to a new leader all agree on. */
async function electKillRestart(seed: number): Promise<number> {
  const c = await cluster(seed);
  for (const s of c.servers) c.boot(s);
  expect(await c.world.run(() => running(c).length === 3 && agreedLeader(c) !== null, 30_000)).toBe("done");
  const first = agreedLeader(c)!;
  // Every TOMA founded the same cluster with the same three voters.
  const views = c.servers.map((s) => s.toma!.view());
  expect(new Set(views.map((v) => v.cluster_uuid)).size).toBe(1);
  for (const v of views) expect(v.peers.map((p) => p.address).sort()).toEqual(c.servers.map((s) => s.address).filter((a) => a !== v.address).sort());

  // The leader's hard state is on both of its drives: the record of its node id, at its term.
  const leader = c.servers.find((s) => s.name === first.toma)!;
  const lv = leader.toma!.view();
  for (const d of leader.drives) {
    const slot = await d.metaRead();
    const rec = decodeRecord(slot.payload!, { slot_generation: slot.generation, drive_uuid: d.info.drive_uuid });
    expect(rec.kind).toBe("record");
    if (rec.kind !== "record") throw new Error(`seed ${seed}: no record`);
    expect(`${rec.record.toma_id}#${rec.record.incarnation}`).toBe(lv.node_id!);
    expect(rec.record.term).toBe(first.term);
    expect(rec.record.drives).toEqual(leader.drives.map((x) => x.info.drive_uuid).sort());
  }

  // Kill the leader: the two others elect a new one in a higher term, within a few seconds.
  leader.machine.crash("process");
  const killed_at = c.world.now;
  expect(await c.world.run(() => agreedLeader(c) !== null && agreedLeader(c)!.term > first.term, c.world.now + 10_000)).toBe("done");
  const second = agreedLeader(c)!;
  expect(second.toma).not.toBe(first.toma);
  const took_ms = c.world.now - killed_at;
  expect(took_ms).toBeLessThan(5000);

  // Restart it: it trusts its own record, keeps its node id, and follows the new leader.
  c.boot(leader);
  expect(await c.world.run(() => running(c).length === 3 && agreedLeader(c) !== null && leader.toma!.view().role === "follower", c.world.now + 10_000)).toBe("done");
  const back = leader.toma!.view();
  expect(back.node_id).toBe(lv.node_id);
  expect(back.term).toBeGreaterThanOrEqual(second.term);
  expect(back.leader?.node_id).toBe(c.servers.find((s) => s.name === agreedLeader(c)!.toma)!.toma!.view().node_id!);
  expect(c.world.failure).toBeNull();
  return took_ms;
}

test("every TOMA killed at once comes back from its drives alone: same cluster, same node ids, a leader in a later term", async () => {
  for (let seed = 21; seed <= 30; seed++) {
    const c = await cluster(seed);
    for (const s of c.servers) c.boot(s);
    expect(await c.world.run(() => running(c).length === 3 && agreedLeader(c) !== null, 30_000)).toBe("done");
    const before = c.servers.map((s) => s.toma!.view());
    const term = agreedLeader(c)!.term;
    for (const s of c.servers) s.machine.crash("power");
    await c.world.advance(3000);
    for (const s of c.servers) c.boot(s);
    expect(await c.world.run(() => running(c).length === 3 && agreedLeader(c) !== null, c.world.now + 30_000)).toBe("done");
    const after = c.servers.map((s) => s.toma!.view());
    expect(after.map((v) => v.node_id)).toEqual(before.map((v) => v.node_id));
    expect(new Set(after.map((v) => v.cluster_uuid))).toEqual(new Set([before[0]!.cluster_uuid]));
    expect(agreedLeader(c)!.term).toBeGreaterThan(term);
  }
});

test("own drives coming and going are followed by a rewrite: a restart then needs only the drives still there", async () => {
  const c = await cluster(31);
  for (const s of c.servers) c.boot(s);
  expect(await c.world.run(() => running(c).length === 3 && agreedLeader(c) !== null, 30_000)).toBe("done");
  const s = c.servers.find((x) => x.toma!.view().role === "follower")!;
  const node = s.toma!.view().node_id;
  // A drive is plugged in: within a few seconds the record lists it too.
  const store = new MemoryStore(8 * 1024 * 1024);
  await formatDrive(store, { drive_uuid: "0000000f-0000-4000-8000-00000000000f", extent_size_bytes: 1024 * 1024 });
  s.drives.push(await openDrive(store, "new"));
  expect(await c.world.run(() => s.toma!.view().hard_state?.drives.length === 3, c.world.now + 5000)).toBe("done");
  // The two original drives are pulled: the record follows onto the new one alone (it meets the
  // last complete record there).
  s.drives.splice(0, 2);
  expect(await c.world.run(() => s.toma!.view().hard_state?.drives.join(",") === "0000000f-0000-4000-8000-00000000000f", c.world.now + 5000)).toBe("done");
  // Restarted with only that drive, the TOMA is the same node id and follows.
  s.machine.crash("process");
  c.boot(s);
  expect(await c.world.run(() => s.toma!.phase === "running" && s.toma!.view().role === "follower" && agreedLeader(c) !== null, c.world.now + 10_000)).toBe("done");
  expect(s.toma!.view().node_id).toBe(node!);
});

test("a follower that stops hearing the leader (one way) cannot disturb it: no new term, no new leader", async () => {
  for (let seed = 41; seed <= 45; seed++) {
    const c = await cluster(seed);
    for (const s of c.servers) c.boot(s);
    expect(await c.world.run(() => running(c).length === 3 && agreedLeader(c) !== null, 30_000)).toBe("done");
    const { toma: leaderName, term } = agreedLeader(c)!;
    const leader = c.servers.find((s) => s.name === leaderName)!;
    const deaf = c.servers.find((s) => s !== leader)!;
    const other = c.servers.find((s) => s !== leader && s !== deaf)!;
    c.cuts.add(`${leader.address}>${deaf.address}`);
    // 20 s: about 13 election timeouts of the deaf follower. It asks for pre-votes and gets none.
    const until = c.world.now + 20_000;
    let changed = false;
    while (c.world.now < until && !changed) {
      await c.world.advance(500);
      for (const s of [leader, other, deaf]) if (s.toma!.view().term !== term) changed = true;
      if (leader.toma!.view().role !== "leader") changed = true;
    }
    expect(changed).toBe(false);
    expect(deaf.toma!.view().role).toBe("pre_candidate");
    c.cuts.clear();
    expect(await c.world.run(() => agreedLeader(c)?.term === term && deaf.toma!.view().role === "follower", c.world.now + 10_000)).toBe("done");
  }
});

test("a TOMA whose peers never answer does not found a cluster alone, and says whom it waits for", async () => {
  const c = await cluster(11);
  c.boot(c.servers[0]!);
  await c.world.advance(5000);
  const v = c.servers[0]!.toma!.view();
  expect(v.phase).toBe("bootstrap");
  expect(v.reason).toContain("10.0.0.2:4000");
  // Nothing was written to its drives: it is still blank for the bootstrap that will come.
  for (const d of c.servers[0]!.drives) expect((await d.metaRead()).generation).toBe(0);
});

test("a TOMA whose own drives cannot be read does not take itself for blank", async () => {
  const c = await cluster(17);
  const s = c.servers[0]!;
  const { env } = s.machine.boot();
  s.toma = new TomaNode(env, {
    toma_id: s.name,
    peers: [s.address],
    io: { drives: () => s.drives.map((d) => d.info.drive_uuid), read: () => Promise.reject(new Error("EIO")), write: () => Promise.reject(new Error("EIO")) },
    post: () => Promise.reject(new Error("unused")),
    ask: () => Promise.reject(new Error("unused")),
  });
  void s.toma.start();
  await c.world.advance(5000);
  expect(s.toma.phase).toBe("outside");
  expect(s.toma.view().reason).toContain("could not be read");
});

test("peers given different lists never found a cluster", async () => {
  const c = await cluster(13);
  for (const s of c.servers) c.boot(s);
  // Give the third TOMA another list: rebuild it with a different peer set.
  c.servers[2]!.machine.crash("process");
  const s = c.servers[2]!;
  const { env } = s.machine.boot();
  s.toma = new TomaNode(env, {
    toma_id: s.name,
    peers: [c.servers[0]!.address, s.address, "10.0.0.9:4000"],
    io: slotIo(c.world, () => s.drives),
    post: () => Promise.reject(new Error("unused")),
    ask: () => Promise.reject(new Error("refused")),
  });
  void s.toma.start();
  await c.world.advance(5000);
  for (const x of c.servers.slice(0, 2)) {
    expect(x.toma!.phase).toBe("bootstrap");
    expect(x.toma!.view().reason).toContain("10.0.0.3:4000");
  }
});
