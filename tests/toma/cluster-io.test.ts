/**
 * The TOMA cluster member's I/O pieces on their own, over the simulator's Env: the hard-state
 * writer on real formatted drives (one of which refuses every metadata write, as a drive with an
 * unreadable slot does), and the peer senders' bounds (one request in flight per peer, queued
 * messages batched, a dead peer's backlog dropped and reported).
 */
import { expect, test } from "bun:test";
import { formatDrive } from "../../src/engine/drive/format.ts";
import type { FormattedDrive } from "../../src/engine/drive/formatted-api.ts";
import { openDrive } from "../../src/engine/drive/formatted-drive.ts";
import { MemoryStore } from "../../src/engine/drive/memory-store.ts";
import { HardStateWriter, readOwnDrives } from "../../src/toma/cluster/hard-state-io.ts";
import { MAX_QUEUED_PER_PEER, PeerSenders } from "../../src/toma/cluster/peer-sender.ts";
import { decodeEnvelope } from "../../src/toma/consensus/messages.ts";
import { bootstrapDurableState } from "../../src/toma/consensus/raft.ts";
import { votersConfig } from "../../src/toma/consensus/config.ts";
import type { Message } from "../../src/toma/consensus/types.ts";
import { SimNode } from "../../sim/node.ts";
import { World } from "../../sim/world.ts";
import { NO_NET, slotIo } from "./cluster-fixture.ts";


async function drives(n: number): Promise<FormattedDrive[]> {
  const out: FormattedDrive[] = [];
  for (let k = 0; k < n; k++) {
    const store = new MemoryStore(8 * 1024 * 1024);
    await formatDrive(store, { drive_uuid: `0000000a-0000-4000-8000-00000000000${k}`, extent_size_bytes: 1024 * 1024 });
    out.push(await openDrive(store, `d${k}`));
  }
  return out;
}

function envOf(world: World) {
  return new SimNode(world, "s", { forIncarnation: () => NO_NET }, { offset_ms: 0, rate: 1 }).boot().env;
}

/**
 * Runs the world until p settles. A world with no event queued is idle at once, though p may be
 * about to queue one (after a few awaits of its own): let those run and go on.
 */
async function settle<T>(world: World, p: Promise<T>): Promise<T> {
  let done = false;
  p.finally(() => (done = true)).catch(() => {});
  const until = world.now + 60_000;
  for (let idle = 0; !done && idle < 100; idle++) {
    if ((await world.run(() => done, until)) !== "idle") break;
    await new Promise((r) => setTimeout(r, 0));
  }
  return await p;
}

test("a drive that refuses every write is left out; the record lands on the others and is trusted after", async () => {
  const world = new World(1);
  const env = envOf(world);
  const ds = await drives(3);
  const refusing = ds[1]!.info.drive_uuid;
  const io = slotIo(world, () => ds, new Set([refusing]));
  const who = { cluster_uuid: "0000000c-0000-4000-8000-000000000000", toma_id: "s1", incarnation: "00000000000000aa" };
  const w = new HardStateWriter(env, io, who, null, new Map(ds.map((d) => [d.info.drive_uuid, 0])));
  const state = bootstrapDurableState(votersConfig(["s1#00000000000000aa"]), new Uint8Array([1]));
  const r = await settle(world, w.persist(state));
  expect(r.ok).toBe(true);
  // The first attempt (all three) did not complete; the second, without the refusing drive, did.
  expect(w.last!.drives).toEqual(ds.map((d) => d.info.drive_uuid).filter((u) => u !== refusing).sort());
  const again = await settle(world, w.persist({ ...state, term: 2 }));
  expect(again.ok).toBe(true);
  // A restart trusts the last record in full.
  const read = await settle(world, readOwnDrives(env, io, "s1", null));
  expect(read.decision.kind).toBe("trusted");
  if (read.decision.kind === "trusted") expect(read.decision.record.term).toBe(2);
});

test("no drive left: the write waits (nothing is lost, nothing sent) and completes once the drive is back", async () => {
  const world = new World(2);
  const env = envOf(world);
  const ds = await drives(2);
  let present = [true, true];
  const io = slotIo(world, () => ds.filter((_, i) => present[i]));
  const who = { cluster_uuid: "0000000c-0000-4000-8000-000000000000", toma_id: "s1", incarnation: "00000000000000aa" };
  const w = new HardStateWriter(env, io, who, null, new Map(ds.map((d) => [d.info.drive_uuid, 0])));
  const state = bootstrapDurableState(votersConfig(["s1#00000000000000aa"]), new Uint8Array([1]));
  expect((await settle(world, w.persist(state))).ok).toBe(true);
  present = [false, false];
  let done = false;
  const p = w.persist({ ...state, term: 2 }).finally(() => (done = true));
  for (let i = 0; i < 100 && world.now < 20_000; i++) {
    await world.run(() => done, 20_000);
    await new Promise((r) => setTimeout(r, 0));
  }
  expect(done).toBe(false);
  expect(w.waiting).toBe("no own drive left to write to");
  // The target is back with one of the two drives: the record goes there, and is complete.
  present = [false, true];
  expect((await settle(world, p)).ok).toBe(true);
  expect(w.waiting).toBeNull();
  expect(w.last!.drives).toEqual([ds[1]!.info.drive_uuid]);
  expect(w.amnesia).toBeNull();
  // A restart trusts it, from that drive alone.
  const read = await settle(world, readOwnDrives(env, io, "s1", null));
  expect(read.decision.kind).toBe("trusted");
  if (read.decision.kind === "trusted") expect(read.decision.record.term).toBe(2);
});

test("a drive holding another TOMA's hard state of this cluster (it came from that server) is never written over", async () => {
  const world = new World(3);
  const env = envOf(world);
  const ds = await drives(2);
  const cluster_uuid = "0000000c-0000-4000-8000-000000000000";
  // Drive 1 was s2's: it holds s2's record.
  const s2io = slotIo(world, () => [ds[1]!]);
  const s2 = new HardStateWriter(env, s2io, { cluster_uuid, toma_id: "s2", incarnation: "00000000000000bb" }, null, new Map([[ds[1]!.info.drive_uuid, 0]]));
  const s2state = bootstrapDurableState(votersConfig(["s2#00000000000000bb"]), new Uint8Array([2]));
  expect((await settle(world, s2.persist(s2state))).ok).toBe(true);
  // Now both drives are served on s1's server.
  const io = slotIo(world, () => ds);
  const w = new HardStateWriter(env, io, { cluster_uuid, toma_id: "s1", incarnation: "00000000000000aa" }, null, new Map(ds.map((d) => [d.info.drive_uuid, 0])));
  const state = bootstrapDurableState(votersConfig(["s1#00000000000000aa"]), new Uint8Array([1]));
  expect((await settle(world, w.persist(state))).ok).toBe(true);
  expect(w.last!.drives).toEqual([ds[0]!.info.drive_uuid]);
  // Drive 1 goes home: s2 trusts its record there.
  const home = await settle(world, readOwnDrives(env, s2io, "s2", null));
  expect(home.decision.kind).toBe("trusted");
});

test("peer senders: one request in flight per peer, the rest batched; a dead peer's backlog is dropped and reported", async () => {
  const world = new World(3);
  const env = envOf(world);
  const posted: { address: string; count: number }[] = [];
  let inflight = 0;
  let max_inflight = 0;
  let alive = true;
  const unreachable: string[] = [];
  const s = new PeerSenders(
    env,
    (address, bytes) => {
      inflight++;
      max_inflight = Math.max(max_inflight, inflight);
      const d = decodeEnvelope(bytes);
      expect(d.ok).toBe(true);
      posted.push({ address, count: d.ok ? d.value.msgs.length : 0 });
      return new Promise((resolve, reject) =>
        world.after(10, () => {
          inflight--;
          if (alive) resolve();
          else reject(new Error("connection refused"));
        }),
      );
    },
    { unreachable: (to) => unreachable.push(to), snapshot: () => {} },
    "0000000c-0000-4000-8000-000000000000",
    "a#01",
  );
  const hb = (i: number): Message => ({ type: "heartbeat", from: "a#01", to: "b#02", term: 1, commit: i, read_round: 0 });
  const addr = () => "10.0.0.2:4000";
  for (let i = 0; i < 5; i++) s.send([hb(i)], addr);
  await world.advance(100);
  // The first went alone; the four queued while it was in flight went together.
  expect(posted.map((p) => p.count)).toEqual([1, 4]);
  expect(max_inflight).toBe(1);

  alive = false;
  for (let i = 0; i < MAX_QUEUED_PER_PEER + 10; i++) s.send([hb(i)], addr);
  expect(s.queued()["b#02"]).toBeLessThanOrEqual(MAX_QUEUED_PER_PEER);
  await world.advance(100);
  expect(unreachable.length).toBeGreaterThan(0);
  expect(s.queued()["b#02"]).toBe(0);
  expect(s.dropped).toBeGreaterThan(0);
});
