/**
 * The cluster state survives TOMA restarts using only the drives' metadata slots, commits need a
 * majority of drives, and a corrupt slot is outvoted. Real targets over real loopback sockets.
 */
import { afterEach, expect, test } from "bun:test";
import { uuidFromString, uuidToString } from "../../src/engine/uuid.ts";
import { openSession } from "../../src/engine/wire/session.ts";
import type { ClusterJson, DriveJson, VolumeJson } from "../../src/toma/api-types.ts";
import { type ClusterState, decodeState } from "../../src/toma/cluster-state.ts";
import { Toma } from "../../src/toma/toma.ts";
import { FAST, MiB, adminApi, startTargets, startToma, testEnv, type TestTarget, until } from "./harness.ts";

const env = testEnv();
let cleanup: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const f of cleanup.reverse()) await f();
  cleanup = [];
});

async function cluster(drivesPerTarget: number[]): Promise<TestTarget[]> {
  const targets = await startTargets(env, drivesPerTarget);
  cleanup.push(() => targets.forEach((t) => t.kill()));
  return targets;
}

function toma(targets: TestTarget[], opts: { cluster_uuid?: string } = {}) {
  const t = startToma(env, targets, opts);
  cleanup.push(() => t.toma.stop());
  return t;
}

/** Ready, and every drive the targets serve is a member of the state. */
async function settled(t: Toma, drives: number): Promise<void> {
  await t.whenReady(5000);
  await until(`${drives} member drives`, () => (t.state?.drives.length ?? 0) === drives);
}

const post = (name: string, capacity_bytes: number, extra: Record<string, unknown> = {}) => ({
  name,
  capacity_bytes,
  raid_level: "concatenated",
  ...extra,
});

test("a new cluster is created, drives claimed, volumes persisted and found by a new TOMA", async () => {
  const targets = await cluster([1, 1, 1]);
  const a = toma(targets);
  await settled(a.toma, 3);

  const r1 = await a.api("POST", "/v1/volumes", post("vol1", 5 * MiB));
  expect(r1.status).toBe(201);
  const r2 = await a.api("POST", "/v1/volumes", post("vol2", 6 * MiB, { raid_level: "0", stripe_width: 3 }));
  expect(r2.status).toBe(201);
  expect((r2.body as VolumeJson).columns.length).toBe(3);
  const info = (await a.api("GET", "/v1/cluster", undefined)).body as ClusterJson;
  expect(info.targets).toEqual({ total: 3, up: 3, down: 0 });
  expect(info.drives.ok).toBe(3);
  await a.toma.stop();

  // Every drive holds the same committed state; its cluster uuid is what the drives were claimed with.
  const s = await openSession(env, targets[0]!.address, { version: 1, role: "admin", name: "check" });
  const d = targets[0]!.drives[0]!.info;
  const slot = await s.metaRead(uuidFromString(d.drive_uuid));
  s.close();
  const onDrive = decodeState(slot.payload!);
  expect(onDrive.cluster_uuid).toBe(info.cluster_uuid!);
  expect(onDrive.volumes.map((v) => v.name)).toEqual(["vol1", "vol2"]);

  const b = toma(targets);
  await b.toma.whenReady(5000);
  expect(b.toma.cluster_uuid).toBe(info.cluster_uuid);
  const vols = (await b.api("GET", "/v1/volumes", undefined)).body as VolumeJson[];
  expect(vols.map((v) => [v.name, v.capacity_bytes, v.raid_level, v.state])).toEqual([
    ["vol1", 5 * MiB, "concatenated", "online"],
    ["vol2", 6 * MiB, "0", "online"],
  ]);
  const attach = await b.api("GET", "/v1/volumes/vol2/attach", undefined);
  expect(attach.status).toBe(200);
  const ai = attach.body as { layout: { columns: unknown[] }; drives: { target: string }[] };
  expect(ai.layout.columns.length).toBe(3);
  expect(new Set(ai.drives.map((x) => x.target))).toEqual(new Set(targets.map((t) => t.address)));
});

test("with a minority of drives dead, changes still commit; the dead drive catches up on return", async () => {
  const targets = await cluster([1, 1, 1]);
  const a = toma(targets);
  await settled(a.toma, 3);
  expect((await a.api("POST", "/v1/volumes", post("v1", 2 * MiB))).status).toBe(201);

  targets[2]!.kill();
  await until("target 2 seen down", () => !a.toma.links[2]!.up);
  const r = await a.api("POST", "/v1/volumes", post("v2", 2 * MiB));
  expect(r.status).toBe(201);
  const v2 = r.body as VolumeJson;
  expect(v2.columns.some((c) => c.drive_uuid === targets[2]!.drives[0]!.info.drive_uuid)).toBe(false);
  const drives = (await a.api("GET", "/v1/drives", undefined)).body as DriveJson[];
  expect(drives.filter((d) => d.state === "missing").map((d) => d.uuid)).toEqual([targets[2]!.drives[0]!.info.drive_uuid]);

  await targets[2]!.revive();
  const gen = a.toma.state!.generation;
  await until("dead drive written back", async () => {
    const slot = await targets[2]!.drives[0]!.metaRead();
    return slot.generation === gen;
  });
});

test("with a majority of drives gone: 503 and nothing changes, then it commits again", async () => {
  const targets = await cluster([1, 1, 1]);
  const a = toma(targets);
  await settled(a.toma, 3);
  expect((await a.api("POST", "/v1/volumes", post("keep", MiB))).status).toBe(201);
  const before = a.toma.state!;
  const slotsBefore = await Promise.all(targets.map((t) => t.drives[0]!.metaRead()));

  // Hot-unplug two drives: their targets stay up but no longer serve them.
  for (const t of targets.slice(1)) t.service.removeDrive(t.drives[0]!.info.drive_uuid);
  await until("two drives seen missing", () => a.toma.driveViews().filter((d) => d.state === "missing").length === 2);

  const r = await a.api("POST", "/v1/volumes", post("lost", MiB));
  expect(r.status).toBe(503);
  expect((r.body as { error: string }).error).toMatch(/only 1 of the cluster's 3 drives are reachable/);
  const del = await a.api("DELETE", "/v1/volumes/keep", undefined);
  expect(del.status).toBe(503);
  expect(a.toma.state).toEqual(before);
  const slotsAfter = await Promise.all(targets.map((t) => t.drives[0]!.metaRead()));
  expect(slotsAfter.map((s) => s.generation)).toEqual(slotsBefore.map((s) => s.generation));
  expect(((await a.api("GET", "/v1/volumes", undefined)).body as VolumeJson[]).map((v) => [v.name, v.state])).toEqual([
    ["keep", a.toma.volumeState(before.volumes[0]!)],
  ]);

  for (const t of targets.slice(1)) t.service.addDrive(t.drives[0]!);
  await until("drives back", () => a.toma.driveViews().every((d) => d.state === "ok"));
  expect((await a.api("POST", "/v1/volumes", post("later", MiB))).status).toBe(201);
  expect(a.toma.state!.volumes.map((v) => v.name)).toEqual(["keep", "later"]);
});

test("a corrupt slot on one drive is ignored in favour of the others", async () => {
  const targets = await cluster([1, 1, 1]);
  const a = toma(targets);
  await settled(a.toma, 3);
  expect((await a.api("POST", "/v1/volumes", post("v", 3 * MiB))).status).toBe(201);
  const cluster_uuid = a.toma.cluster_uuid!;
  const gen = a.toma.state!.generation;
  const term = a.toma.state!.term;
  await a.toma.stop();

  // Valid slot CRC, garbage state, and a higher generation than the real one.
  const bad = targets[1]!.drives[0]!;
  await bad.metaWrite(gen + 10, new TextEncoder().encode("definitely not a cluster state"));

  const b = toma(targets);
  await b.toma.whenReady(5000);
  expect(b.toma.cluster_uuid).toBe(cluster_uuid);
  // The recovered state, written again with the new process's term: one generation on.
  expect(b.toma.state!.generation).toBe(gen + 1);
  expect(b.toma.state!.term).toBe(term + 1);
  expect(b.toma.state!.volumes.map((v) => v.name)).toEqual(["v"]);
  const drives = (await b.api("GET", "/v1/drives", undefined)).body as DriveJson[];
  const d = drives.find((x) => x.uuid === bad.info.drive_uuid)!;
  expect(d.state).toBe("error");
  expect(d.error).toMatch(/metadata slot/);
  // Never overwritten silently, and the two healthy drives still commit.
  expect((await b.api("POST", "/v1/volumes", post("w", MiB))).status).toBe(201);
  expect((await bad.metaRead()).generation).toBe(gen + 10);
});

test("a drive moved to another target is found there", async () => {
  const targets = await cluster([2, 1]);
  const a = toma(targets);
  await settled(a.toma, 3);
  const moved = targets[0]!.drives[1]!;
  targets[0]!.service.removeDrive(moved.info.drive_uuid);
  targets[1]!.service.addDrive(moved);
  await until("drive seen on target 1", () =>
    a.toma.driveViews().some((d) => d.uuid === moved.info.drive_uuid && d.target === targets[1]!.address),
  );
  expect(a.toma.driveViews().every((d) => d.state === "ok" && d.member)).toBe(true);
});

test("a drive claimed by another cluster is foreign and never touched", async () => {
  const targets = await cluster([1, 1]);
  const foreign = targets[1]!.drives[0]!;
  await foreign.claim("11111111-2222-4333-8444-555555555555");
  const mine = "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee";
  await targets[0]!.drives[0]!.claim(mine);
  const a = toma(targets, { cluster_uuid: mine });
  await settled(a.toma, 1);
  const drives = (await a.api("GET", "/v1/drives", undefined)).body as DriveJson[];
  expect(drives.find((d) => d.uuid === foreign.info.drive_uuid)!.state).toBe("foreign");
  expect((await a.api("POST", "/v1/volumes", post("v", MiB))).status).toBe(201);
  expect((await foreign.metaRead()).generation).toBe(0);
});

test("a TOMA that has not heard from a majority of the state's drives refuses mutations", async () => {
  const targets = await cluster([1, 1, 1]);
  const a = toma(targets);
  await settled(a.toma, 3);
  expect((await a.api("POST", "/v1/volumes", post("v", MiB))).status).toBe(201);
  await a.toma.stop();

  targets[1]!.kill();
  targets[2]!.kill();
  const b = toma(targets);
  await until("one drive read", () => b.toma.cluster_uuid !== null);
  await Bun.sleep(100);
  const r = await b.api("POST", "/v1/volumes", post("w", MiB));
  expect(r.status).toBe(503);
  expect((r.body as { error: string }).error).toMatch(/heard from 1 of the cluster's 3 drives, need 2/);
  expect(((await b.api("GET", "/v1/cluster", undefined)).body as ClusterJson).ready).toBe(false);

  await targets[1]!.revive();
  await b.toma.whenReady(5000);
  expect(b.toma.state!.volumes.map((v) => v.name)).toEqual(["v"]);
  expect((await b.api("POST", "/v1/volumes", post("w", MiB))).status).toBe(201);
});

test("a write that reaches only a minority is refused (503) and retracted once drives answer again", async () => {
  const targets = await cluster([1, 1, 1]);
  const failing = new Set<string>();
  /** The states the drives acknowledged. */
  const landed: ClusterState[] = [];
  // Sessions whose metaWrite fails for the drives in `failing`: the drives die mid-commit.
  const connect = async (address: string) => {
    const s = await openSession(env, address, { version: 1, role: "toma", name: "flaky" });
    const write = s.metaWrite.bind(s);
    s.metaWrite = async (drive, generation, payload) => {
      const id = targets.flatMap((t) => t.drives).find((d) => d.info.drive_uuid === uuidToString(drive))!;
      if (failing.has(id.info.drive_uuid)) throw new Error("injected I/O error");
      await write(drive, generation, payload);
      landed.push(decodeState(payload));
    };
    return s;
  };
  const t = new Toma(env, { name: "flaky", targets: targets.map((x) => x.address), timings: FAST, connect });
  t.start();
  cleanup.push(() => t.stop());
  const api = adminApi(t);
  await settled(t, 3);
  expect((await api("POST", "/v1/volumes", post("keep", MiB))).status).toBe(201);

  for (const x of targets.slice(1)) failing.add(x.drives[0]!.info.drive_uuid);
  const r = await api("POST", "/v1/volumes", post("lost", MiB));
  expect(r.status).toBe(503);
  // Refused as soon as two drives failed: the third drive's answer is not waited for.
  expect((r.body as { error: string }).error).toMatch(/^2 of the cluster's 3 drives failed to acknowledge the change \([01] acknowledged\); 2 needed/);
  expect(t.state!.volumes.map((v) => v.name)).toEqual(["keep"]);
  // The one drive that took the refused state (its write finishing behind the refusal, and
  // superseded there by the first attempts to retract it, which fail on the other two).
  await until("the refused state on the drive that took it", () => landed.some((x) => x.volumes.length === 2));
  const partial = landed.find((x) => x.volumes.length === 2)!;
  expect(partial.volumes.map((v) => v.name)).toEqual(["keep", "lost"]);

  failing.clear();
  await until("refused state retracted on every drive", async () => {
    const slots = await Promise.all(targets.map((x) => x.drives[0]!.metaRead()));
    return slots.every((s) => s.generation > partial.generation && decodeState(s.payload!).volumes.length === 1);
  });
  await t.stop();
  const b = toma(targets);
  await b.toma.whenReady(5000);
  expect(b.toma.state!.volumes.map((v) => v.name)).toEqual(["keep"]);
});
