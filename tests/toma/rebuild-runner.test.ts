/**
 * A server's TOMA copying the rebuilding leg the leader handed to it (rebuild-runner.ts), against
 * real targets: the source leg on one, the leg being rebuilt on this server's own. The copy runs
 * under the order's lock owner and control-plane version, and a drive that has seen a newer
 * leader's version refuses it.
 */
import { afterEach, expect, test } from "bun:test";
import { uuidFromString } from "../../src/engine/uuid.ts";
import { openSession } from "../../src/engine/wire/session.ts";
import type { TargetSession } from "../../src/engine/wire/session-api.ts";
import { apply, type ClusterState, type Command, emptyState } from "../../src/toma/cluster-state.ts";
import { fenceVersion } from "../../src/toma/consensus/proposal.ts";
import { DrivePool } from "../../src/toma/cluster/drive-pool.ts";
import { RebuildRunner } from "../../src/toma/cluster/rebuild-runner.ts";
import type { RebuildOrder } from "../../src/toma/cluster/rebuild-wire.ts";
import { TargetLink } from "../../src/toma/target-link.ts";
import { FAST, MiB, startTargets, type TestTarget, testEnv, until } from "./harness.ts";

const TERM = 2;
const OWNER = 4242;

let cleanup: (() => void)[] = [];
afterEach(() => {
  for (const c of cleanup.reverse()) c();
  cleanup = [];
});

async function setup(term: () => number | null = () => TERM) {
  const env = testEnv();
  const targets: TestTarget[] = await startTargets(env, [1, 1]);
  cleanup.push(() => targets.forEach((t) => t.kill()));
  const [A, B] = targets.map((t) => t.drives[0]!.info);
  const toma = async (t: TestTarget, name: string, version: number): Promise<TargetSession> => {
    const s = await openSession(env, t.address, { version: 1, role: "toma", name });
    s.generation = version;
    cleanup.push(() => s.close());
    return s;
  };
  let state: ClusterState = emptyState("11111111-1111-4111-8111-111111111111");
  const run = (cmd: Command) => {
    const r = apply(state, cmd);
    if (!r.ok) throw new Error(r.error);
    state = r.state;
  };
  for (const d of [A!, B!]) run({ kind: "add_drive", drive: { drive_uuid: d.drive_uuid, extent_size_bytes: d.extent_size_bytes, extent_count: d.extent_count, cache_epoch: 0 } });
  const uuid = "22222222-2222-4222-8222-222222222222";
  run({ kind: "create_volume", uuid, name: "m", capacity_bytes: 2 * MiB, raid_level: "1", stripe_width: 1, stripe_size_bytes: 0, extent_size_bytes: MiB, columns: [A!, B!].map((d) => ({ drive_uuid: d.drive_uuid, extents: [1, 2] })), mirrors: 2 });
  run({ kind: "set_legs", uuid, legs: ["ok", "dead"] });
  run({ kind: "set_legs", uuid, legs: ["ok", "syncing"] });
  const version = fenceVersion(TERM, state.generation);
  // (A memory drive has no volatile cache: the target lists cache epoch 0, recorded so: no LOSSY_COPY.)
  // The source leg holds data written while the other was away, its regions marked.
  const src = await toma(targets[0]!, "writer", version);
  const data = new Uint8Array(2 * MiB).map((_, i) => (i * 7 + 3) & 0xff);
  await src.write(uuidFromString(A!.drive_uuid), MiB, data, true);
  // Flushed: a region with writes not flushed keeps its bit until the target's own flush (dirty.ts).
  await src.flush(uuidFromString(A!.drive_uuid));
  await src.dirtySet(uuidFromString(A!.drive_uuid), MiB, 2 * MiB);
  // This server's own target, as the member reaches it; the pool as the leader's answers say.
  const own = new TargetLink(env, targets[1]!.address, (a) => openSession(env, a, { version: 1, role: "toma", name: "s1" }), FAST);
  own.start();
  cleanup.push(() => own.stop());
  await until("own target up", () => own.session !== null && own.drives.length === 1);
  const pool = new DrivePool(() => performance.now());
  for (const [i, d] of [A!, B!].entries()) {
    pool.report({ server: `s${i}`, drives: [{ drive_uuid: d.drive_uuid, target: targets[i]!.address, path: "mem", size_bytes: d.size_bytes, cluster_uuid: d.cluster_uuid, extent_size_bytes: d.extent_size_bytes, extent_count: d.extent_count, state: "ok", error: null }] });
  }
  const runner = new RebuildRunner(env, { term, state: () => state }, pool, [own], (a, tag) => openSession(env, a, { version: 1, role: "toma", name: `s1/rebuild/${tag}` }), 0);
  cleanup.push(() => runner.stop());
  const vol = state.volumes[0]!;
  const order: RebuildOrder = { volume_uuid: uuid, column: 1, source: 0, topology_seq: vol.topology_seq, term: TERM, version, owner_id: OWNER, clear_bits: true };
  return { env, targets, A: A!, B: B!, data, order, runner, toma, version };
}

test("the leg is copied from the source's target to the own target; every bit cleared; the job reports done with the source's epoch", async () => {
  const f = await setup();
  f.runner.ordered([f.order]);
  expect(f.runner.report()).toMatchObject([{ owner_id: OWNER, state: "running", term: TERM }]);
  await until("copy done", () => f.runner.report()[0]?.state !== "running");
  const [job] = f.runner.report();
  expect(job).toMatchObject({ state: "done", done_bytes: 2 * MiB, total_bytes: 2 * MiB, error: null });
  // A memory drive has no volatile cache: epoch 0, the same at the copy's start and end.
  expect(job!.from_epoch).toBe(0);
  const check = await f.toma(f.targets[1]!, "check", 0);
  const got = new Uint8Array(2 * MiB);
  await check.read(uuidFromString(f.B.drive_uuid), MiB, got);
  expect(Buffer.from(got).equals(Buffer.from(f.data))).toBe(true);
  expect(await check.dirtyGet(uuidFromString(f.B.drive_uuid), MiB, 2 * MiB)).toEqual([]);
  const src = await f.toma(f.targets[0]!, "check", 0);
  // The copy's DIRTY_CLEAR cleared the TOMA's bits; the marks its LOCKs set are the target's own,
  // cleared after INTENT_QUIET_FLUSHES flushes of the target's (target/dirty.ts): seconds.
  await until("source bits cleared", async () => (await src.dirtyGet(uuidFromString(f.A.drive_uuid), MiB, 2 * MiB)).length === 0, 8000);
  // No lock of the copy is left on the source.
  expect((await src.lockList(uuidFromString(f.A.drive_uuid))).filter((l) => l.client_id === OWNER)).toEqual([]);
  // The leader drops the order: the job is forgotten.
  f.runner.ordered([]);
  expect(f.runner.report()).toEqual([]);
});

test("a drive that has seen a newer leader's version refuses the copy: nothing written, the bits stay, the job fails", async () => {
  const f = await setup();
  // A later term's leader touched the own drive (its first request raises the drive's version).
  const newer = await f.toma(f.targets[1]!, "newer-leader", fenceVersion(TERM + 1, 1));
  await newer.unlock(uuidFromString(f.B.drive_uuid), 0, MiB);
  f.runner.ordered([f.order]);
  await until("copy ended", () => f.runner.report()[0]?.state !== "running");
  const [job] = f.runner.report();
  expect(job!.state).toBe("failed");
  expect(job!.error).toContain("older than");
  const check = await f.toma(f.targets[1]!, "check", 0);
  const got = new Uint8Array(MiB);
  await check.read(uuidFromString(f.B.drive_uuid), MiB, got);
  expect(got.every((b) => b === 0)).toBe(true);
  const src = await f.toma(f.targets[0]!, "check", 0);
  expect((await src.dirtyGet(uuidFromString(f.A.drive_uuid), MiB, 2 * MiB)).length).toBeGreaterThan(0);
  // The copy's lock on the source was released even so.
  expect((await src.lockList(uuidFromString(f.A.drive_uuid))).filter((l) => l.client_id === OWNER)).toEqual([]);
});

test("an order for a topology the volume moved past, or not about a syncing leg, fails at once; one not applied here yet waits", async () => {
  const f = await setup();
  f.runner.ordered([{ ...f.order, topology_seq: f.order.topology_seq - 1 }]);
  expect(f.runner.report()).toMatchObject([{ state: "failed", error: expect.stringContaining("moved past") }]);
  f.runner.ordered([]);
  f.runner.ordered([{ ...f.order, owner_id: 7, source: 1, column: 0 }]);
  expect(f.runner.report()).toMatchObject([{ state: "failed", error: expect.stringContaining("not syncing") }]);
  f.runner.ordered([]);
  f.runner.ordered([{ ...f.order, owner_id: 8, topology_seq: f.order.topology_seq + 1 }]);
  expect(f.runner.report()).toEqual([]);
  // ...for a while: then it fails, and the leader copies the leg itself.
  await Bun.sleep(2100);
  f.runner.ordered([{ ...f.order, owner_id: 8, topology_seq: f.order.topology_seq + 1 }]);
  expect(f.runner.report()).toMatchObject([{ owner_id: 8, state: "failed", error: expect.stringContaining("has not applied") }]);
});

test("a TOMA not running in the cluster (starting, outside, waiting for its drives) fails an order at once", async () => {
  const f = await setup(() => null);
  f.runner.ordered([f.order]);
  expect(f.runner.report()).toMatchObject([{ state: "failed", error: expect.stringContaining("not running in the cluster") }]);
});
