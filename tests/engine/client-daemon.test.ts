/**
 * The client daemon's attach against a real target and a TOMA link that answers from a script:
 * which drives must answer before a volume's export is enabled.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { AttachError, ClientDaemon, type TomaLink, UnknownClientError, type WatchInfo } from "../../src/engine/client/daemon.ts";
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

/** A daemon whose TOMA link is driven by the test: each watch and attach waits for its answer. */
function scripted() {
  const env = testEnv();
  const exports = new ExportRegistry();
  const watches: { id: number; answer: (w: WatchInfo | Error) => void }[] = [];
  const attaches: { id: number; volume: string; uuid: string | undefined }[] = [];
  let holdAttach: Promise<void> | null = null;
  let nextId = 42;
  /** Ids the TOMA no longer knows (it expired them, or restarted). */
  const forgotten = new Set<number>();
  const views = new Map<string, AttachInfo>();
  const toma: TomaLink = {
    register: async () => ({ client_id: nextId++, generation: 7 }),
    attach: async (id, volume, uuid) => {
      attaches.push({ id, volume, uuid });
      if (forgotten.has(id)) throw new UnknownClientError(`no client ${id}`);
      if (holdAttach) await holdAttach;
      const v = views.get(volume);
      if (!v || (uuid !== undefined && v.layout.volume_uuid !== uuid)) throw new AttachError(`no volume ${volume}`, "not_found");
      return v;
    },
    watch: (id) =>
      new Promise((resolve, reject) => watches.push({ id, answer: (w) => (w instanceof Error ? reject(w) : resolve(w)) })),
    ack: async () => {},
    report: async () => {},
    unregister: async () => {},
  };
  const nbd = new NbdServer(env, exports);
  const d = new ClientDaemon(env, { toma, openSession, nbd, exports, socket_dir: dir, client_name: "test", io_timeout_ms: 1000 });
  return {
    d,
    exports,
    views,
    attaches,
    forgotten,
    /** The id of the oldest pending watch (waiting for one to be sent), left pending. */
    async pendingWatch(): Promise<number> {
      for (let i = 0; i < 500 && watches.length === 0; i++) await Bun.sleep(2);
      return watches[0]?.id ?? -1;
    },
    /** The ids registered so far. */
    registered: () => Array.from({ length: nextId - 42 }, (_, i) => 42 + i),
    /** Answers the oldest pending watch (waiting for one to be sent). */
    async answer(w: WatchInfo | Error): Promise<number> {
      for (let i = 0; i < 500 && watches.length === 0; i++) await Bun.sleep(2);
      const next = watches.shift();
      if (!next) throw new Error("no watch was sent");
      next.answer(w);
      return next.id;
    },
    hold(): () => void {
      let release!: () => void;
      holdAttach = new Promise((r) => (release = r));
      return () => {
        holdAttach = null;
        release();
      };
    },
  };
}

function volumeOf(name: string, uuid: string): AttachInfo {
  const v = raid1(name, ["RWL", "DEAD"]);
  return { ...v, layout: { ...v.layout, volume_uuid: uuid } };
}

const watchOf = (...vols: AttachInfo[]): WatchInfo => ({ generation: 7, stable_generation: 7, volumes: vols });

async function settle(cond: () => boolean): Promise<void> {
  for (let i = 0; i < 500 && !cond(); i++) await Bun.sleep(2);
  expect(cond()).toBe(true);
}

/** Volumes a and b, both attached. */
async function attachTwo(s: ReturnType<typeof scripted>) {
  const a = volumeOf("a", "aaaaaaaa-0000-4000-8000-00000000000a");
  const b = volumeOf("b", "bbbbbbbb-0000-4000-8000-00000000000b");
  s.views.set("a", a);
  s.views.set("b", b);
  const att = await s.d.attach({ volume: "a" });
  await s.d.attach({ volume: "b" });
  return { a, b, att };
}

test("a volume the TOMA no longer lists for us is torn down: export and socket gone, list() without it; the other stays", async () => {
  const s = scripted();
  const { a, b, att } = await attachTwo(s);
  expect(att.volume_uuid).toBe(a.layout.volume_uuid);
  expect(att.exports).toEqual(["a"]);
  // Both attached before this watch was sent: it lists both.
  await s.answer(watchOf(a, b));
  // The next one lists b only: a was deleted (or forced off this client).
  await s.answer(watchOf(b));
  await settle(() => !s.d.list().some((x) => x.volume === "a"));
  expect(s.d.list().map((x) => x.volume)).toEqual(["b"]);
  expect(s.exports.get("a")).toBeUndefined();
  expect(await testEnv().net.connect(`unix:${dir}/a.sock`).then(() => "connected", () => "refused")).toBe("refused");
  await s.d.close();
});

test("a newer volume that took the name is not ours: the refresh of the one we serve is a 404 and it goes", async () => {
  const s = scripted();
  s.views.set("n", volumeOf("n", "cccccccc-0000-4000-8000-00000000000c"));
  await s.d.attach({ volume: "n" });
  s.views.set("n", volumeOf("n", "dddddddd-0000-4000-8000-00000000000d"));
  // The watch lists the newer one only (the TOMA never would: it answers by uuid; a daemon must
  // not take another volume's view for its own either way).
  await s.answer(watchOf(s.views.get("n")!));
  await settle(() => s.d.list().length === 0);
  await s.d.close();
});

test("registered again under a new id, a volume not yet attached again under it is not taken for gone", async () => {
  const s = scripted();
  const a = volumeOf("a", "aaaaaaaa-0000-4000-8000-00000000000a");
  s.views.set("a", a);
  await s.d.attach({ volume: "a" });
  expect(await s.answer(watchOf(a))).toBe(42);
  // The TOMA forgot us; the attach under the new id is slow.
  const release = s.hold();
  expect(await s.answer(new UnknownClientError("gone"))).toBe(42);
  // The new id's first watch cannot list a yet: a stays.
  expect(await s.answer(watchOf())).toBe(43);
  await Bun.sleep(20);
  expect(s.d.list().map((x) => x.volume)).toEqual(["a"]);
  release();
  await settle(() => s.attaches.some((x) => x.id === 43 && x.volume === "a" && x.uuid === a.layout.volume_uuid));
  await Bun.sleep(20);
  // The watch sent before that attach completed proves nothing; the next one, sent after it,
  // does: a watch of 43 that does not list it means it is gone.
  expect(await s.answer(watchOf())).toBe(43);
  await Bun.sleep(20);
  expect(s.d.list().map((x) => x.volume)).toEqual(["a"]);
  expect(await s.answer(watchOf())).toBe(43);
  await settle(() => s.d.list().length === 0);
  await s.d.close();
});

test("a refresh that finds our id unknown registers again and attaches each volume once under the new id", async () => {
  const s = scripted();
  const { b } = await attachTwo(s);
  s.forgotten.add(42);
  // What a volume device's refresh runs when its I/O is refused (the `refresh` hook of attach()).
  const refresh = (s.d as unknown as { fetchAttach(volume: string, uuid: string): Promise<AttachInfo> }).fetchAttach.bind(s.d);
  const info = await refresh("b", b.layout.volume_uuid);
  expect(info.layout.volume_uuid).toBe(b.layout.volume_uuid);
  await settle(() => s.attaches.some((x) => x.id === 43 && x.volume === "a"));
  await Bun.sleep(50);
  const under43 = s.attaches.filter((x) => x.id === 43).map((x) => x.volume).sort();
  expect(under43).toEqual(["a", "b"]);
  await s.d.close();
});

test("a watch refused for an id we already replaced keeps the new id: no third registration", async () => {
  const s = scripted();
  const a = volumeOf("a", "aaaaaaaa-0000-4000-8000-00000000000a");
  const b = volumeOf("b", "bbbbbbbb-0000-4000-8000-00000000000b");
  s.views.set("a", a);
  s.views.set("b", b);
  await s.d.attach({ volume: "a" });
  expect(await s.answer(watchOf(a))).toBe(42);
  expect(await s.pendingWatch()).toBe(42);
  // The TOMA forgot 42 while a watch of 42 is out. An attach finds out first and registers 43.
  s.forgotten.add(42);
  await s.d.attach({ volume: "b" });
  expect(s.registered()).toEqual([42, 43]);
  // Then the watch of 42 is refused. Only 42 is unknown: 43 stays ours. (Dropping it registered
  // a third id and left 43 registered, unused, holding every mirror step back until the TOMA
  // expired it.)
  expect(await s.answer(new UnknownClientError("client 42 is not registered"))).toBe(42);
  expect(await s.answer(watchOf(a, b))).toBe(43);
  expect(s.registered()).toEqual([42, 43]);
  expect(s.d.list().map((x) => x.volume).sort()).toEqual(["a", "b"]);
  await s.d.close();
});
