/** FenceSync: which tables the drives are sent, and when a drive counts as confirmed. */
import { expect, test } from "bun:test";
import { realEnv } from "../../src/engine/runtime/real-env.ts";
import type { TargetSession } from "../../src/engine/wire/session-api.ts";
import { ClientRegistry } from "../../src/toma/clients.ts";
import type { Retired, VolumeRecord } from "../../src/toma/cluster-state.ts";
import { extentByteRuns, extentRuns, type FenceTable, FenceSync } from "../../src/toma/fencing.ts";
import { quietLogger } from "./harness.ts";

const M = "11111111-1111-4111-8111-111111111111";
const N = "22222222-2222-4222-8222-222222222222";

function volume(uuid: string, created_seq: number, columns: [string, number[]][]): VolumeRecord {
  return {
    uuid,
    name: `v${created_seq}`,
    capacity_bytes: 1 << 20,
    raid_level: "0",
    stripe_width: columns.length,
    stripe_size_bytes: 65536,
    extent_size_bytes: 1 << 20,
    columns: columns.map(([drive_uuid, extents]) => ({ drive_uuid, extents })),
    mirrors: 1,
    legs: columns.map(() => "ok"),
    rebuild_blank: columns.map(() => false),
    topology_seq: created_seq,
    created_seq,
    debug_format: false,
  };
}

function harness(volumes: () => VolumeRecord[], retired: () => Retired[] = () => [], keeper?: (drive: string, key: string) => "confirmed" | "owner" | "self") {
  const left = new Set<string>();
  const env = realEnv("fence-test", quietLogger);
  const clients = new ClientRegistry(env, { client_timeout_ms: 0, watch_hold_ms: 1000 });
  const session = {} as TargetSession;
  const pushed: { drive: string; table: FenceTable }[] = [];
  const fences = new FenceSync({
    clients,
    volumes,
    leftOut: (uuid) => left.has(uuid),
    retired,
    sessionOf: () => session,
    ...(keeper ? { keeper } : {}),
    push: async (_s, drive, table) => {
      pushed.push({ drive, table });
    },
    onError: (d, e) => {
      throw new Error(`push to ${d} failed: ${e}`);
    },
  });
  return { clients, fences, pushed, left };
}

test("extent runs: consecutive extents merge, any order", () => {
  expect(extentRuns([])).toEqual([]);
  expect(extentRuns([4, 5, 6, 9, 1, 2])).toEqual([
    [1, 2],
    [4, 3],
    [9, 1],
  ]);
  // The same runs as [start, end) byte ranges, for zeroing and unlocking them.
  expect(extentByteRuns([], 4096)).toEqual([]);
  expect(extentByteRuns([4, 5, 6, 9, 1, 2], 4096)).toEqual([
    [4096, 3 * 4096],
    [4 * 4096, 7 * 4096],
    [9 * 4096, 10 * 4096],
  ]);
});

test("a drive's table: the extents of every volume on it, and each client with the volumes it attached there", async () => {
  const vols = [volume(M, 3, [["A", [0, 1, 2]], ["B", [5]]]), volume(N, 4, [["A", [7, 3]]])];
  const { clients, fences } = harness(() => vols);
  const c1 = clients.register("c1", 5);
  c1.volumes.add(M);
  const c2 = clients.register("c2", 6);
  c2.volumes.add(N);
  await fences.sync();
  const a = fences.tableFor("A")!;
  expect(a.volumes).toEqual(
    [
      { volume_uuid: M, incarnation: 3, extents: [[0, 3]] },
      { volume_uuid: N, incarnation: 4, extents: [[3, 1], [7, 1]] },
    ],
  );
  expect(a.set).toEqual(
    [
      { client_id: c1.id, min_generation: 5, volumes: [M] },
      { client_id: c2.id, min_generation: 6, volumes: [N] },
    ].sort((x, y) => x.client_id - y.client_id),
  );
  // Drive B holds M only: c2 has nothing there.
  expect(fences.tableFor("B")).toEqual({ volumes: [{ volume_uuid: M, incarnation: 3, extents: [[5, 1]] }], set: [{ client_id: c1.id, min_generation: 5, volumes: [M] }] });
  expect(fences.inSync("A") && fences.inSync("B")).toBe(true);
});

test("a volume left out of the state (deleted, or being deleted) leaves every table, and a confirmation before that no longer counts", async () => {
  let vols = [volume(M, 3, [["A", [0]]]), volume(N, 4, [["A", [1]]])];
  const { clients, fences, pushed } = harness(() => vols);
  const c = clients.register("c", 5);
  c.volumes.add(M);
  c.volumes.add(N);
  await fences.sync();
  expect(fences.inSync("A")).toBe(true);
  vols = vols.filter((v) => v.uuid !== M);
  // The drive confirmed a table that still gave M its extents: not in sync until pushed again.
  expect(fences.inSync("A")).toBe(false);
  await fences.sync();
  expect(fences.inSync("A")).toBe(true);
  expect(pushed.at(-1)!.table).toEqual({ volumes: [{ volume_uuid: N, incarnation: 4, extents: [[1, 1]] }], set: [{ client_id: c.id, min_generation: 5, volumes: [N] }] });
});

test("a volume being deleted is left out of its drives' tables, which are still pushed (the last volume of a drive included)", async () => {
  const vols = [volume(M, 3, [["A", [0]]])];
  const { clients, fences, pushed, left } = harness(() => vols);
  const c = clients.register("c", 5);
  c.volumes.add(M);
  await fences.sync();
  left.add(M);
  expect(fences.inSync("A")).toBe(false);
  await fences.sync();
  expect(pushed.at(-1)).toEqual({ drive: "A", table: { volumes: [], set: [] } });
  expect(fences.inSync("A")).toBe(true);
});

test("the drive of retired extents gets a table too, even when no volume is left on it", async () => {
  const { fences, pushed } = harness(() => [], () => [{ volume_uuid: M, drive_uuid: "C", extents: [4] }]);
  await fences.sync();
  expect(pushed).toEqual([{ drive: "C", table: { volumes: [], set: [] } }]);
  expect(fences.inSync("C")).toBe(true);
});

test("the drives of a volume whose last client expired keep a confirmed empty table (stale-lock recovery can be retried)", async () => {
  const vols = [volume(M, 3, [["A", [0]], ["B", [0]]])];
  const { clients, fences, pushed } = harness(() => vols);
  const c = clients.register("client-1", 5);
  c.volumes.add(M);
  await fences.sync();
  expect(fences.inSync("A") && fences.inSync("B")).toBe(true);
  expect(fences.tableFor("A")!.set).toEqual([{ client_id: c.id, min_generation: 5, volumes: [M] }]);

  // It dies: expired, then fenced out of both drives, then forgotten by the registry.
  await Bun.sleep(2);
  expect(clients.expireSilent(() => ["A", "B"])).toEqual([c]);
  fences.forget();
  await fences.sync();
  expect(clients.all()).toEqual([]);
  expect(pushed.slice(-2).map((p) => p.table.set)).toEqual([[], []]);

  // Every later maintenance pass forgets the confirmations and syncs again: the drives must
  // still be confirmed (with the empty table), or a stale-lock recovery that was skipped or
  // interrupted in the pass that fenced the client out is never tried again.
  fences.forget();
  await fences.sync();
  expect(fences.inSync("A")).toBe(true);
  expect(fences.inSync("B")).toBe(true);
  expect(fences.tableFor("A")!.set).toEqual([]);
});

test("a TOMA cluster: a drive its own TOMA reports confirmed counts as in sync, pushed nothing, and fences an expired client out; one its TOMA is on is neither", async () => {
  const vols = [volume(M, 3, [["A", [0]], ["B", [0]]])];
  const who = new Map<string, "confirmed" | "owner" | "self">([["A", "confirmed"], ["B", "owner"]]);
  const { clients, fences, pushed } = harness(() => vols, () => [], (d) => who.get(d) ?? "self");
  const c = clients.register("client-1", 5);
  c.volumes.add(M);
  await Bun.sleep(2);
  expect(clients.expireSilent(() => ["A", "B"])).toEqual([c]);
  await fences.sync();
  expect(pushed).toEqual([]);
  expect(fences.inSync("A")).toBe(true);
  expect(fences.inSync("B")).toBe(false);
  // Fenced out of A by its TOMA's confirmation; B still owes one.
  expect([...c.unfenced]).toEqual(["B"]);
  // B's TOMA fell silent: the leader pushes B's table itself.
  who.set("B", "self");
  await fences.sync();
  expect(pushed.map((p) => p.drive)).toEqual(["B"]);
  expect(fences.inSync("B")).toBe(true);
  expect(clients.all()).toEqual([]);
});
