/**
 * The client daemon's attach against a real target and a TOMA link that answers from a script:
 * which drives must answer before a volume's export is enabled.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { AttachError, ClientDaemon, type TomaLink } from "../../src/engine/client/daemon.ts";
import type { AttachInfo, LegRole } from "../../src/engine/layout/types.ts";
import { ExportRegistry } from "../../src/engine/nbd/exports.ts";
import { NbdServer } from "../../src/engine/nbd/server.ts";
import { openSession } from "../../src/engine/wire/session.ts";
import { MiB, startTargets, type TestTarget, testEnv } from "../toma/harness.ts";

const DEAD_DRIVE = "00000000-0000-4000-8000-0000000000dd";
let target: TestTarget;
let dir: string;

beforeAll(async () => {
  target = (await startTargets(testEnv(), [1]))[0]!;
  dir = mkdtempSync(`${tmpdir()}/nvmesh-client-daemon-`);
});

afterAll(() => {
  target?.kill();
  rmSync(dir, { recursive: true, force: true });
});

/** A RAID1 volume whose leg 0 is on the live target and leg 1 on a drive no target serves. */
function raid1(name: string, roles: LegRole[]): AttachInfo {
  const live = target.drives[0]!.info.drive_uuid;
  return {
    layout: {
      volume_uuid: "22222222-2222-4222-8222-222222222222",
      incarnation: 7,
      name,
      capacity_bytes: MiB,
      raid_level: "1",
      columns: [live, DEAD_DRIVE].map((drive_uuid) => ({ drive_uuid, extents: [0] })),
      stripe_size_bytes: 0,
      extent_size_bytes: MiB,
      block_size: 512,
      mirrors: 2,
    },
    drives: [
      { drive_uuid: live, target: target.address },
      { drive_uuid: DEAD_DRIVE, target: null },
    ],
    generation: 7,
    topology_generation: 7,
    stable_generation: 7,
    topology: [{ legs: roles, interleaved: roles.every((r) => r === "RWL"), dirty: roles.includes("DEAD") }],
  };
}

/** What the daemon told the TOMA: registrations (ids handed out) and departures. */
interface Calls {
  registered: number[];
  unregistered: number[];
}

function daemon(views: Record<string, AttachInfo>, calls: Calls = { registered: [], unregistered: [] }): ClientDaemon {
  const env = testEnv();
  const exports = new ExportRegistry();
  const toma: TomaLink = {
    register: async () => {
      const client_id = 42 + calls.registered.length;
      calls.registered.push(client_id);
      return { client_id, generation: 7 };
    },
    attach: async (_id, volume) => views[volume]!,
    // Nothing changes: the long poll just waits.
    watch: () => new Promise(() => {}),
    ack: async () => {},
    report: async () => {},
    unregister: async (id) => {
      calls.unregistered.push(id);
    },
  };
  return new ClientDaemon(env, {
    toma,
    openSession,
    nbd: new NbdServer(env, exports),
    exports,
    socket_dir: dir,
    client_name: "test",
    io_timeout_ms: 1000,
  });
}

test("a Degraded mirror attaches on its live legs: the DEAD leg's drive need not answer", async () => {
  const d = daemon({ deg: raid1("deg", ["RWL", "DEAD"]) });
  const a = await d.attach({ volume: "deg" });
  expect(a.uri).toBe(`nbd+unix:///deg?socket=${dir}/deg.sock`);
  expect(a.drives).toBe(2);
  await d.close();
});

test("a mirror whose leg is not DEAD (yet) still needs that leg's drive to attach", async () => {
  const d = daemon({ norm: raid1("norm", ["RWL", "RWL"]) });
  const e = await d.attach({ volume: "norm" }).catch((x) => x);
  expect(e).toBeInstanceOf(AttachError);
  expect((e as AttachError).code).toBe("unavailable");
  expect((e as Error).message).toContain(DEAD_DRIVE);
  await d.close();
});

test("detaching the last volume tells the TOMA the client left; the next attach registers a new id", async () => {
  const calls: Calls = { registered: [], unregistered: [] };
  const d = daemon({ a: raid1("a", ["RWL", "DEAD"]), b: raid1("b", ["RWL", "DEAD"]) }, calls);
  await d.attach({ volume: "a" });
  await d.attach({ volume: "b" });
  await d.detach("a");
  expect(calls.unregistered).toEqual([]); // b is still attached
  await d.detach("b");
  expect(calls.unregistered).toEqual([42]);
  await d.attach({ volume: "a" });
  expect(calls.registered).toEqual([42, 43]);
  await d.close();
  expect(calls.unregistered).toEqual([42, 43]);
});
