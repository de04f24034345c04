/**
 * recoverSetLocks against a real target serving both legs of a RAID1 set: a dead client's locks
 * are recovered unit by unit, all of a unit's dead locks together and only after the copy, and
 * never while a live writer holds the lock that writers of the current topology take.
 */
import { afterEach, expect, test } from "bun:test";
import { LOCK_UNIT_BYTES } from "../../src/engine/wire/header.ts";
import type { VolumeRecord } from "../../src/toma/cluster-state.ts";
import { RangeClaims } from "../../src/toma/range-claims.ts";
import { recoverSetLocks, type StaleLock } from "../../src/toma/rebuild.ts";
import { type TargetHarness, memoryDrive, pattern, startTarget, uuidBytes } from "../engine/target-fixture.ts";

const U = LOCK_UNIT_BYTES;
const E = 1024 * 1024;
const DEAD = 7;
const LIVE = 1;
const TOMA = 99;

let h: TargetHarness | null = null;
afterEach(() => {
  h?.stop();
  h = null;
});

async function setup() {
  const a = await memoryDrive();
  const b = await memoryDrive();
  h = await startTarget([a, b]);
  const toma = await h.toma();
  toma.setFence(TOMA, 0);
  const dead = await h.session({ client_id: DEAD });
  const live = await h.session({ client_id: LIVE });
  const [ua, ub] = [uuidBytes(a), uuidBytes(b)];
  // Two legs of one extent each: column byte x is drive byte E + x on A and 2E + x on B.
  const vol: VolumeRecord = {
    uuid: "00000000-0000-4000-8000-000000000001",
    name: "m",
    capacity_bytes: E,
    raid_level: "1",
    stripe_width: 1,
    stripe_size_bytes: 0,
    extent_size_bytes: E,
    columns: [
      { drive_uuid: a.info.drive_uuid, extents: [1] },
      { drive_uuid: b.info.drive_uuid, extents: [2] },
    ],
    mirrors: 2,
    legs: ["ok", "ok"],
    rebuild_blank: [false, false],
    topology_seq: 1,
    created_seq: 1,
    debug_format: false,
  };
  const deps = {
    env: h.env,
    sessionOf: () => toma,
    regionBytes: () => E,
    pause_ms: 0,
    owner_id: TOMA,
    lossy: () => false,
    claims: new RangeClaims(),
  };
  const read = async (u: Uint8Array, off: number) => {
    const buf = new Uint8Array(4096);
    await toma.read(u, off, buf);
    return buf;
  };
  const stale = (drive: string, offset: number): StaleLock => ({ drive_uuid: drive, client_id: DEAD, offset, length: U });
  return { a, b, ua, ub, toma, dead, live, vol, deps, read, stale };
}

test("a unit locked on both legs is copied once, and both dead locks are freed only after the copy", async () => {
  const { a, b, ua, ub, toma, dead, live, vol, deps, read, stale } = await setup();
  // Unit 0 reads and locks on leg 0 (A) in Normal. The dead client locked both legs (a two-lock
  // topology) and wrote A only.
  await dead.lock(ua, E, U);
  await dead.lock(ub, 2 * E, U);
  await dead.write(ua, E, pattern(1, 4096), false);
  // A live writer of the Normal topology waits for A's dead lock, with its write.
  let wrote = false;
  const w = live.write(ua, E, pattern(2, 4096), false, { lock: true }).then(() => (wrote = true));
  await live.dirtyGet(ua, 0, 0);
  expect(wrote).toBe(false);
  expect(await recoverSetLocks(deps, vol, 0, [stale(a.info.drive_uuid, E), stale(b.info.drive_uuid, 2 * E)])).toBe(1);
  // The copy went A → B before the live write could run.
  await w;
  expect(await read(ub, 2 * E)).toEqual(pattern(1, 4096));
  expect(await read(ua, E)).toEqual(pattern(2, 4096));
  expect((await toma.lockList(ua)).map((l) => l.client_id)).toEqual([LIVE]);
  expect(await toma.lockList(ub)).toEqual([]);
});

test("a dead lock on the other leg only: the read leg's lock is taken too, and a unit whose read leg a live writer holds waits", async () => {
  const { b, ua, ub, toma, dead, live, vol, deps, read, stale } = await setup();
  await dead.lock(ub, 2 * E, U);
  await dead.write(ub, 2 * E, pattern(3, 4096), false);
  // A live writer holds A's lock of unit 0 (the Normal lock leg): the recovery leaves the unit.
  await live.lock(ua, E, U);
  expect(await recoverSetLocks(deps, vol, 0, [stale(b.info.drive_uuid, 2 * E)])).toBe(0);
  expect((await toma.lockList(ub)).map((l) => l.client_id)).toEqual([DEAD]);
  expect((await toma.lockList(ua)).map((l) => l.client_id)).toEqual([LIVE]);
  // Once it is done, the next pass copies B → A under A's lock and frees everything.
  await live.unlock(ua, E, U);
  expect(await recoverSetLocks(deps, vol, 0, [stale(b.info.drive_uuid, 2 * E)])).toBe(1);
  expect(await read(ua, E)).toEqual(pattern(3, 4096));
  expect(await toma.lockList(ua)).toEqual([]);
  expect(await toma.lockList(ub)).toEqual([]);
});
