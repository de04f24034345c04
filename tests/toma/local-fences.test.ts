/**
 * Each TOMA keeps its own drives' fence tables equal to its applied state's (local-fences.ts):
 * a real target enforcing fences over loopback, a real TargetLink and session, states built with
 * the real state machine. What a client may do is asked of the target itself, over a client
 * session, never read back from the pusher.
 */
import { afterEach, expect, test } from "bun:test";
import { uuidFromString } from "../../src/engine/uuid.ts";
import type { VolumeBinding } from "../../src/engine/wire/control.ts";
import { Status } from "../../src/engine/wire/header.ts";
import { TargetError } from "../../src/engine/wire/session-api.ts";
import { type Session, openSession } from "../../src/engine/wire/session.ts";
import { apply, type ClusterState, type Command, emptyState } from "../../src/toma/cluster-state.ts";
import { LocalFences } from "../../src/toma/cluster/local-fences.ts";
import { fenceVersion } from "../../src/toma/consensus/proposal.ts";
import { stateFenceTable, tableDigest } from "../../src/toma/fencing.ts";
import { TargetLink } from "../../src/toma/target-link.ts";
import { FAST, MiB, startTargets, testEnv, type TestTarget, until } from "./harness.ts";

const env = testEnv();
let cleanup: (() => void)[] = [];
afterEach(() => {
  for (const f of cleanup.reverse()) f();
  cleanup = [];
});

const CLUSTER = "0f0e0d0c-0b0a-4908-8706-050403020100";
const VOL = "11111111-2222-4333-8444-555555555555";
const CLIENT = 4242;

function run(st: ClusterState, ...cmds: Command[]): ClusterState {
  for (const c of cmds) {
    const r = apply(st, c);
    if (!r.ok) throw new Error(r.error);
    st = r.state;
  }
  return st;
}

async function setup(): Promise<{ t: TestTarget; drive: string; link: TargetLink; st0: ClusterState }> {
  const [t] = await startTargets(env, [1], { fencing: true });
  cleanup.push(() => t!.kill());
  const d = t!.drives[0]!;
  // The drive as a TOMA would find it claimed for the cluster.
  const link = new TargetLink(env, t!.address, (a) => openSession(env, a, { version: 1, role: "toma", name: "local-fences-test" }), FAST);
  link.start();
  cleanup.push(() => link.stop());
  await until("link up", () => link.up);
  await link.session!.claim(uuidFromString(d.info.drive_uuid), CLUSTER);
  await until("drive listed as the cluster's", () => link.drives[0]?.cluster_uuid === CLUSTER);
  const drive = d.info.drive_uuid;
  const st0 = run(
    emptyState(CLUSTER),
    { kind: "add_drive", drive: { drive_uuid: drive, extent_size_bytes: MiB, extent_count: d.info.extent_count } },
    {
      kind: "create_volume",
      uuid: VOL,
      name: "v",
      capacity_bytes: 2 * MiB,
      raid_level: "concatenated",
      stripe_width: 1,
      stripe_size_bytes: 0,
      extent_size_bytes: MiB,
      columns: [{ drive_uuid: drive, extents: [1, 2] }],
      mirrors: 1,
    },
    { kind: "register_client", id: CLIENT, name: "c" },
    { kind: "attach_client", id: CLIENT, volume_uuid: VOL },
  );
  return { t: t!, drive, link, st0 };
}

/** Whether the target admits a read of client CLIENT at `generation` to the volume. */
async function admits(t: TestTarget, drive: string, st: ClusterState, generation: number): Promise<boolean> {
  const vol = st.volumes.find((x) => x.uuid === VOL)!;
  const binding: VolumeBinding = { uuid: VOL, incarnation: vol.created_seq };
  const s: Session = await openSession(env, t.address, { version: 1, role: "client", name: "c", volume: binding }, { client_id: CLIENT, generation });
  try {
    await s.read(uuidFromString(drive), MiB, new Uint8Array(4096));
    return true;
  } catch (e) {
    if (e instanceof TargetError && e.status === Status.REFUSED) return false;
    throw e;
  } finally {
    s.close();
  }
}

test("each applied state's table reaches the own drive, stamped with that state's version; the confirmation follows the state", async () => {
  const { t, drive, link, st0 } = await setup();
  let applied = { state: st0, version: fenceVersion(3, st0.generation) };
  const local = new LocalFences({ env, links: [link], applied: () => applied });
  local.start();
  cleanup.push(() => local.stop());

  await until("the first table confirmed", () => local.confirmed(drive) !== null);
  expect(local.confirmed(drive)).toEqual({ version: applied.version, generation: st0.generation, table: tableDigest(JSON.stringify(stateFenceTable(st0, drive))) });
  expect(t.drives[0]!.control_version).toBe(applied.version);
  expect(await admits(t, drive, st0, st0.stable)).toBe(true);

  // The client's expiry committed: the next table leaves it out, and the target refuses it.
  const st1 = run(st0, { kind: "expire_client", id: CLIENT });
  applied = { state: st1, version: fenceVersion(3, st1.generation) };
  expect(local.confirmed(drive)).toBeNull(); // the table it confirmed is not this state's
  await until("the expiry's table confirmed", () => local.confirmed(drive)?.generation === st1.generation);
  expect(stateFenceTable(st1, drive).set).toEqual([]);
  expect(await admits(t, drive, st1, st1.stable)).toBe(false);
});

test("a lagging TOMA's older table is refused STALE and changes nothing; it pushes again once it applied more", async () => {
  const { t, drive, link, st0 } = await setup();
  const st1 = run(st0, { kind: "expire_client", id: CLIENT });
  // Another TOMA (the leader, say) applied st1 first and pushed its table.
  const newer = fenceVersion(3, st1.generation);
  const leader = await openSession(env, t.address, { version: 1, role: "toma", name: "leader" });
  cleanup.push(() => leader.close());
  leader.generation = newer;
  const table = stateFenceTable(st1, drive);
  await leader.fence(uuidFromString(drive), { replace: true, volumes: table.volumes, set: table.set, remove: [] });
  expect(await admits(t, drive, st1, 0)).toBe(false);

  let applied = { state: st0, version: fenceVersion(3, st0.generation) };
  const local = new LocalFences({ env, links: [link], applied: () => applied });
  await local.sync();
  // Refused: the expired client stays fenced out, and nothing is confirmed.
  expect(local.confirmed(drive)).toBeNull();
  expect(t.drives[0]!.control_version).toBe(newer);
  expect(await admits(t, drive, st1, 0)).toBe(false);

  // Caught up: the same table at the same version as the leader's, accepted.
  applied = { state: st1, version: newer };
  await local.sync();
  expect(local.confirmed(drive)).toEqual({ version: newer, generation: st1.generation, table: tableDigest(JSON.stringify(table)) });
  expect(await admits(t, drive, st1, 0)).toBe(false);
});

test("a target that restarts forgets its table: the new session gets it again", async () => {
  const { t, drive, link, st0 } = await setup();
  const applied = { state: st0, version: fenceVersion(2, st0.generation) };
  const local = new LocalFences({ env, links: [link], applied: () => applied });
  local.start();
  cleanup.push(() => local.stop());
  await until("confirmed", () => local.confirmed(drive) !== null);
  const before = link.session;
  t.kill();
  await t.revive();
  await until("a new session", () => link.session !== null && link.session !== before);
  await until("confirmed again over the new session", () => local.confirmed(drive) !== null);
  expect(await admits(t, drive, st0, st0.stable)).toBe(true);
});

test("the table is the state's alone: every client not expired, with the state's stable generation as its minimum", () => {
  const drive = "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee";
  const st = run(
    emptyState(CLUSTER),
    { kind: "add_drive", drive: { drive_uuid: drive, extent_size_bytes: MiB, extent_count: 8 } },
    { kind: "create_volume", uuid: VOL, name: "v", capacity_bytes: MiB, raid_level: "concatenated", stripe_width: 1, stripe_size_bytes: 0, extent_size_bytes: MiB, columns: [{ drive_uuid: drive, extents: [3] }], mirrors: 1 },
    { kind: "register_client", id: 7, name: "a" },
    { kind: "register_client", id: 8, name: "b" },
    { kind: "attach_client", id: 7, volume_uuid: VOL },
    { kind: "attach_client", id: 8, volume_uuid: VOL },
    { kind: "expire_client", id: 8 },
  );
  const withStable = { ...st, stable: 5 };
  expect(stateFenceTable(withStable, drive)).toEqual({
    volumes: [{ volume_uuid: VOL, incarnation: st.volumes[0]!.created_seq, extents: [[3, 1]] }],
    set: [{ client_id: 7, min_generation: 5, volumes: [VOL] }],
  });
  // Another drive holds nothing of it.
  expect(stateFenceTable(withStable, "bbbbbbbb-bbbb-4ccc-8ddd-eeeeeeeeeeee")).toEqual({ volumes: [], set: [] });
});
