/**
 * A mirror client lets go of a leg the topology drops: a write waiting on one leg whose drive
 * holds it (a target that stopped answering for it) completes on the other leg once a topology
 * without that leg is installed, and the switch can be acknowledged (drained) while the stuck
 * request is still on the dropped leg. The stuck write landing later changes nothing we read.
 * Real target, real sessions, memory drives (tests/engine/volume-fixture.ts's way).
 */
import { afterEach, expect, test } from "bun:test";
import { TargetPool } from "../../src/engine/client/target-pool.ts";
import { VolumeDevice } from "../../src/engine/client/volume-device.ts";
import type { FormattedDrive } from "../../src/engine/drive/formatted-api.ts";
import type { AttachInfo, VolumeLayout } from "../../src/engine/layout/types.ts";
import { openSession } from "../../src/engine/wire/session.ts";
import { gatedDrive, memoryDrive, randomUuidString, startTarget, type TargetHarness } from "./target-fixture.ts";

const MiB = 1024 * 1024;
let target: TargetHarness | null = null;
let device: VolumeDevice | null = null;
let pool: TargetPool | null = null;
afterEach(async () => {
  await device?.close().catch(() => {});
  pool?.close();
  target?.stop();
  device = pool = target = null;
});

/** A 4 MiB RAID1 over two drives of the target at `address` (extents 1..4 of each), in Normal at generation 5. */
function raid1(drives: FormattedDrive[], address: string): AttachInfo {
  const layout: VolumeLayout = {
    volume_uuid: randomUuidString(),
    name: "m",
    incarnation: 1,
    capacity_bytes: 4 * MiB,
    raid_level: "1",
    columns: drives.map((d) => ({ drive_uuid: d.info.drive_uuid, extents: [1, 2, 3, 4] })),
    stripe_size_bytes: 0,
    mirrors: 2,
    extent_size_bytes: MiB,
    block_size: 512,
    debug_format: false,
  };
  return {
    layout,
    drives: drives.map((d) => ({ drive_uuid: d.info.drive_uuid, target: address })),
    generation: 5,
    topology_generation: 5,
    stable_generation: 5,
    topology: [{ legs: ["RWL", "RWL"], interleaved: true, dirty: false }],
  };
}

test("a write stuck on a leg completes on the other once a topology drops the leg; the switch drains without it", async () => {
  const good = await memoryDrive(16);
  const bad = await gatedDrive(16);
  target = await startTarget([good, bad.drive]);
  const normal = raid1([good, bad.drive], target.address);
  const { layout } = normal;
  pool = new TargetPool(target.env, openSession, "mirror-drop", { uuid: layout.volume_uuid, incarnation: layout.incarnation });
  pool.setIdentity(9, 5);
  pool.setLocations(normal.drives);
  const reports: number[] = [];
  device = new VolumeDevice(target.env, pool, normal, { refresh: async () => normal, report: (c) => reports.push(c), io_timeout_ms: 60_000 });

  const data = new Uint8Array(4096).fill(0x5a);
  let done = false;
  const w = device.write(0, data, false).then(() => (done = true));
  while (bad.started() === 0) await Bun.sleep(1);
  await Bun.sleep(200);
  expect(done).toBe(false); // held by the stuck leg

  // The TOMA drops leg 1 (Degraded) and every client switched: the write goes on on leg 0 alone.
  device.install({ ...normal, generation: 6, topology_generation: 6, stable_generation: 6, topology: [{ legs: ["RWL", "DEAD"], interleaved: false, dirty: true }] });
  const drained = device.drained().then(() => "drained");
  expect(await Promise.race([drained, Bun.sleep(2000).then(() => "still waiting")])).toBe("drained");
  await Promise.race([w, Bun.sleep(2000)]);
  expect(done).toBe(true);
  expect(bad.started()).toBe(1); // the stuck write is still on the dropped leg's drive
  // Not a failure of the leg: the topology already dropped it, so nothing was reported.
  expect(reports).toEqual([]);
  const back = new Uint8Array(4096);
  await device.read(0, back);
  expect(back).toEqual(data);
  // Leg 0 has it, with its region marked for the rebuild of leg 1.
  const s = await pool.sessionFor(good.info.drive_uuid);
  expect(await s.dirtyGet(pool.driveId(good.info.drive_uuid), MiB, MiB)).toEqual([1]); // extent 1 holds the volume's first MiB
  bad.release();
});

test("a lock-taking write given up on a dropped leg never holds the unit: its UNLOCK withdraws it", async () => {
  // Unit 0's lock leg in Normal is leg 0 (the `lock` drive); leg 1's drive holds its first write
  // until released, so client 1 writes leg 1 under its lock on leg 0 for as long as we like.
  const lock = await memoryDrive(16);
  const slow = await gatedDrive(16, 1);
  target = await startTarget([lock, slow.drive]);
  const normal = raid1([lock, slow.drive], target.address);
  const { layout } = normal;
  const client = (id: number) => {
    const p = new TargetPool(target!.env, openSession, `client-${id}`, { uuid: layout.volume_uuid, incarnation: layout.incarnation });
    p.setIdentity(id, 5);
    p.setLocations(normal.drives);
    const d = new VolumeDevice(target!.env, p, normal, { refresh: async () => normal, report: () => {}, io_timeout_ms: 60_000 });
    return { p, d };
  };
  const c1 = client(1);
  const c2 = client(2);
  const toma = await target.toma();
  const lockId = c1.p.driveId(lock.info.drive_uuid);
  try {
    // Client 1 holds unit 0 on leg 0 while its write of leg 1 is held.
    const w1 = c1.d.write(0, new Uint8Array(4096).fill(1), false);
    while (slow.started() === 0) await Bun.sleep(1);
    expect(await toma.lockList(lockId)).toEqual([{ client_id: 1, offset: MiB, length: 64 * 1024 }]); // extent 1 holds the volume's first MiB
    // Client 2's write of the unit waits on leg 0 for that lock.
    let w2done = false;
    const w2 = c2.d.write(0, new Uint8Array(4096).fill(2), false).then(() => (w2done = true));
    await Bun.sleep(100);
    expect(w2done).toBe(false);
    // A topology without leg 0 reaches client 2 (client 1 has not switched yet: its write is
    // in flight under the old one). Client 2 gives its waiting write up and unlocks the unit
    // at once: nothing of its own is held there yet. Its write goes on to leg 1 alone.
    const degraded: AttachInfo = { ...normal, generation: 6, topology_generation: 6, topology: [{ legs: ["DEAD", "RWL"], interleaved: false, dirty: true }] };
    c2.d.install(degraded);
    await Bun.sleep(200);
    // Client 1's write of leg 1 completes: it unlocks leg 0. The request client 2 gave up must
    // not be granted now (it was, before UNLOCK withdrew it: the unit stayed held, for good).
    slow.release();
    await w1;
    const stable = { ...degraded, stable_generation: 6 };
    c1.d.install(stable);
    c2.d.install(stable);
    await w2;
    await Bun.sleep(100);
    expect(await toma.lockList(lockId)).toEqual([]);
    // Leg 0 back (rebuilt, in Normal again): client 2's next write of the unit locks leg 0 and
    // completes (before, it waited for its own lock for ever).
    const back = { ...normal, generation: 7, topology_generation: 7, stable_generation: 7 };
    c1.d.install(back);
    c2.d.install(back);
    const again = c2.d.write(0, new Uint8Array(4096).fill(3), false).then(() => "written");
    expect(await Promise.race([again, Bun.sleep(2000).then(() => "waiting for its own lock")])).toBe("written");
    expect(await toma.lockList(lockId)).toEqual([]);
  } finally {
    slow.release();
    await c1.d.close().catch(() => {});
    await c2.d.close().catch(() => {});
    c1.p.close();
    c2.p.close();
  }
});
