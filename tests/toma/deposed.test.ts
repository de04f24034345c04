/**
 * A deposed TOMA changes nothing at the drives (docs/toma.md, "Fenced at the drives"): a TOMA
 * paused with its connections open while another TOMA recovered the state and took a newer term
 * finds every request that would change a drive refused STALE, naming the newer version, while
 * the newer TOMA's requests pass. A restarted TOMA is never refused by its own earlier version.
 * Commands go through applyProposal: one computed from an older state is refused.
 * Real targets over loopback sockets; the pause stops the TOMA's timers (nothing it schedules
 * runs) and leaves its sessions open, as SIGSTOP would.
 */
import { afterEach, expect, test } from "bun:test";
import type { Env, TimerHandle } from "../../src/engine/env.ts";
import { uuidFromString } from "../../src/engine/uuid.ts";
import { outcomeOf } from "../engine/target-fixture.ts";
import type { ClusterState, Command } from "../../src/toma/cluster-state.ts";
import { type Outcome, Toma } from "../../src/toma/toma.ts";
import { FAST, MiB, adminApi, startTargets, testEnv, type TestTarget, until } from "./harness.ts";

const env = testEnv();
let cleanup: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const f of cleanup.reverse()) await f();
  cleanup = [];
});

/** An Env whose timers stop firing while paused; what came due meanwhile fires on resume. */
function pausable(base: Env): { env: Env; pause(): void; resume(): void } {
  let paused = false;
  let due: (() => void)[] = [];
  const gate = (fn: () => void) => () => (paused ? due.push(fn) : fn());
  const timers = {
    after: (ms: number, fn: () => void): TimerHandle => base.timers.after(ms, gate(fn)),
    every: (ms: number, fn: () => void): TimerHandle => base.timers.every(ms, gate(fn)),
  };
  return {
    env: { ...base, timers },
    pause: () => void (paused = true),
    resume: () => {
      paused = false;
      const now = due;
      due = [];
      for (const fn of now) fn();
    },
  };
}

function startToma(e: Env, name: string, targets: TestTarget[]): Toma {
  const t = new Toma(e, { name, targets: targets.map((x) => x.address), timings: FAST });
  t.start();
  cleanup.push(() => t.stop());
  return t;
}

const outcome = outcomeOf;

async function clusterWithMirror(): Promise<{ targets: TestTarget[]; a: Toma; p: ReturnType<typeof pausable> }> {
  const targets = await startTargets(env, [1, 1, 1]);
  cleanup.push(() => targets.forEach((t) => t.kill()));
  const p = pausable(env);
  const a = startToma(p.env, "toma-a", targets);
  await a.whenReady(5000);
  await until("3 member drives", () => a.state?.drives.length === 3);
  const r = await adminApi(a)("POST", "/v1/volumes", { name: "m", capacity_bytes: 2 * MiB, raid_level: "1" });
  expect(r.status).toBe(201);
  return { targets, a, p };
}

/** The drives of volume m, as the targets serve them. */
function legDrives(targets: TestTarget[], t: Toma) {
  const uuids = t.state!.volumes.find((v) => v.name === "m")!.columns.map((c) => c.drive_uuid);
  return targets.flatMap((x) => x.drives).filter((d) => uuids.includes(d.info.drive_uuid));
}

test("a paused TOMA, deposed by one that took a newer term, is refused at every drive it would change", async () => {
  const { targets, a, p } = await clusterWithMirror();
  const vA = a.version();
  await until("the drives saw A's version", () => legDrives(targets, a).every((d) => d.control_version === vA));
  p.pause();

  const b = startToma(env, "toma-b", targets);
  await b.whenReady(5000);
  const vB = b.version();
  expect(b.state!.term).toBe(a.state!.term + 1);
  expect(vB).toBeGreaterThan(vA);
  // B's fence tables reached the legs' drives, with its version.
  await until("the drives saw B's version", () => legDrives(targets, b).every((d) => d.control_version >= vB));

  for (const d of legDrives(targets, a)) {
    const id = uuidFromString(d.info.drive_uuid);
    const target = targets.find((t) => t.drives.includes(d))!.address;
    const sa = a.links.find((l) => l.address === target)!.session!;
    const sb = b.links.find((l) => l.address === target)!.session!;
    expect(sa.closed).toBe(false);
    expect(sa.generation).toBe(vA);
    const newest = d.control_version;
    // What A still has queued: its fence table, a resync's DIRTY_CLEAR, a stale-lock recovery, a rebuild copy.
    const stale = `STALE newest=${newest}`;
    expect(await outcome(sa.fence(id, { replace: true, ...a.mirror.fences.tableFor(d.info.drive_uuid)!, remove: [] }))).toBe(stale);
    expect(await outcome(sa.dirtyClear(id, 0, MiB))).toBe(stale);
    expect(await outcome(sa.tryLock(id, 0, 1))).toBe(stale);
    expect(await outcome(sa.unlockFor(id, 0, 1, 12345))).toBe(stale);
    expect(await outcome(sa.write(id, 0, new Uint8Array(4096), true))).toBe(stale);
    // The newer TOMA's own requests pass.
    expect(await outcome(sb.fence(id, { replace: true, ...b.mirror.fences.tableFor(d.info.drive_uuid)!, remove: [] }))).toBe("ok");
    expect(await outcome(sb.dirtyClear(id, 0, 0))).toBe("ok");
  }
  await b.stop();
  // Resumed, A's next fence update is refused, and A stands down instead of taking the state back.
  p.resume();
  await until("A stood down", () => a.deposed !== null, 3000);
  expect(a.ready).toBe(false);
  expect(a.readiness()).toMatch(/deposed: another TOMA acts on this cluster's drives with control-plane version \d+/);
  expect((await adminApi(a)("POST", "/v1/volumes", { name: "late", capacity_bytes: MiB, raid_level: "1" })).status).toBe(503);
}, 15000);

test("a TOMA restarted on the same drives takes a newer term and is not refused by its own past", async () => {
  const { targets, a } = await clusterWithMirror();
  const vA = a.version();
  await until("the drives saw A's version", () => legDrives(targets, a).every((d) => d.control_version === vA));
  const term = a.state!.term;
  await a.stop();
  const again = startToma(env, "toma-a", targets);
  await again.whenReady(5000);
  expect(again.state!.term).toBe(term + 1);
  expect(again.version()).toBeGreaterThan(vA);
  await until("the drives saw the new version", () => legDrives(targets, again).every((d) => d.control_version === again.version()));
  const r = await adminApi(again)("POST", "/v1/volumes", { name: "n", capacity_bytes: MiB, raid_level: "1" });
  expect(r.status).toBe(201);
});

test("the TOMA applies its commands as proposals: one computed from an older generation is refused and writes nothing", async () => {
  const { targets, a } = await clusterWithMirror();
  const propose = (a as unknown as { propose(cmd: Command, computed_at: number): Promise<Outcome<ClusterState>> }).propose.bind(a);
  const vol = a.state!.volumes[0]!;
  const g = a.state!.generation;
  const slots = async () => Promise.all(targets.flatMap((t) => t.drives).map(async (d) => (await d.metaRead()).generation));
  const before = await slots();
  const stale = await propose({ kind: "set_legs", uuid: vol.uuid, legs: ["ok", "dead"] }, g - 1);
  expect(stale).toEqual({
    ok: false,
    code: "unavailable",
    error: `the cluster state changed while this change was computed (computed from generation ${g - 1}, but the state is at generation ${g}); try again`,
  });
  expect(a.state!.generation).toBe(g);
  expect(await slots()).toEqual(before);
  // Computed from the state as it is: committed, with the next generation.
  const fresh = await propose({ kind: "delete_volume", uuid: vol.uuid }, g);
  expect(fresh.ok).toBe(true);
  expect(a.state!.generation).toBe(g + 1);
  expect(a.state!.volumes).toEqual([]);
});
