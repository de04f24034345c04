/**
 * A mirror write acknowledged under a topology that is not yet stable is held until every client
 * has switched, for as long as that takes (a crashed client is waited for until it expires). A leg
 * that acknowledged it may lose its cache meanwhile, unseen by this client: nothing of ours went
 * to that drive since. The write runs again once the topology is stable, so it is acknowledged
 * under the drive's epoch of now and the next flush succeeds (simulator seed 2795 with --mirror
 * --toma-cluster: the flush after healing failed with EIO for a write completed after the loss).
 * Real target, real sessions, memory drives (tests/engine/volume-fixture.ts's way).
 */
import { afterEach, expect, test } from "bun:test";
import { TargetPool } from "../../src/engine/client/target-pool.ts";
import { VolumeDevice } from "../../src/engine/client/volume-device.ts";
import type { FormattedDrive } from "../../src/engine/drive/formatted-api.ts";
import type { AttachInfo } from "../../src/engine/layout/types.ts";
import { openSession } from "../../src/engine/wire/session.ts";
import { memoryDrive, randomUuidString, startTarget, type TargetHarness } from "./target-fixture.ts";

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

/** A memory drive whose cache epoch changes on lose() (a power loss of its server, as the target sees it). */
async function drive(): Promise<{ drive: FormattedDrive; lose: () => void }> {
  const d = await memoryDrive(16);
  let epoch = 1;
  const data = Object.create(d.data, { cache_epoch: { get: () => epoch } }) as typeof d.data;
  return { drive: Object.create(d, { data: { value: data } }) as FormattedDrive, lose: () => void epoch++ };
}

test("a write held for a stable topology while its leg lost its cache is written again: the next flush succeeds", async () => {
  const a = await drive();
  const b = await drive();
  target = await startTarget([a.drive, b.drive]);
  const normal: AttachInfo = {
    layout: {
      volume_uuid: randomUuidString(),
      name: "m",
      incarnation: 1,
      capacity_bytes: 4 * MiB,
      raid_level: "1",
      columns: [a.drive, b.drive].map((d) => ({ drive_uuid: d.info.drive_uuid, runs: [1, 4] })),
      stripe_size_bytes: 0,
      mirrors: 2,
      extent_size_bytes: MiB,
      block_size: 512,
      debug_format: false,
    },
    drives: [a.drive, b.drive].map((d) => ({ drive_uuid: d.info.drive_uuid, target: target!.address })),
    generation: 5,
    topology_generation: 5,
    stable_generation: 5,
    topology: [{ legs: ["RWL", "RWL"], interleaved: true, dirty: false }],
  };
  const { layout } = normal;
  pool = new TargetPool(target.env, openSession, "mirror-held", { uuid: layout.volume_uuid, incarnation: layout.incarnation });
  pool.setIdentity(9, 5);
  pool.setLocations(normal.drives);
  device = new VolumeDevice(target.env, pool, normal, { refresh: async () => normal, report: () => {}, io_timeout_ms: 60_000 });

  // Leg 0 is out (Degraded); not every client has switched yet.
  const degraded: AttachInfo = { ...normal, generation: 6, topology_generation: 6, topology: [{ legs: ["DEAD", "RWL"], interleaved: false, dirty: true }] };
  device.install(degraded);
  const data = new Uint8Array(4096).fill(0x6b);
  let done = false;
  const w = device.write(0, data, false).then(() => (done = true));
  await Bun.sleep(200);
  expect(done).toBe(false); // leg 1 acknowledged it; held until the topology is stable

  // Leg 1's server loses power meanwhile; then the last client switches.
  b.lose();
  device.install({ ...degraded, stable_generation: 6 });
  await Promise.race([w, Bun.sleep(2000)]);
  expect(done).toBe(true);

  // The write is on leg 1 under its epoch of now: nothing it covers was lost.
  await device.flush();
  const back = new Uint8Array(4096);
  await device.read(0, back);
  expect(back).toEqual(data);
});
