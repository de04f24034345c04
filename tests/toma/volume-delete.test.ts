/**
 * Deleting a volume, end to end in one process over real sockets (TOMA, API handler, targets with
 * fencing on, client connections opened by hand as an attacker would keep them): a volume
 * attached by a live client is not deleted without --force; --force fences its clients out
 * first; a stale connection of the deleted volume reaches nothing, not even once a new volume
 * holds the very same extents; and a drive the TOMA cannot reach at delete time keeps the deleted
 * volume's extents retired until it confirms a fence without it.
 */
import { afterEach, expect, test } from "bun:test";
import { type Server, type Socket, createServer, connect } from "node:net";
import { fromRuns } from "../../src/engine/layout/extent-runs.ts";
import type { AttachInfo } from "../../src/engine/layout/types.ts";
import { uuidFromString } from "../../src/engine/uuid.ts";
import { type Session, openSession } from "../../src/engine/wire/session.ts";
import type { ApiResponse } from "../../src/toma/api.ts";
import type { Toma } from "../../src/toma/toma.ts";
import { outcome } from "../engine/target-fixture.ts";
import { MiB, startTargets, startToma, testEnv, type TestTarget, until } from "./harness.ts";

const env = testEnv();
let cleanup: (() => void | Promise<void>)[] = [];
afterEach(async () => {
  for (const f of cleanup.reverse()) await f();
  cleanup = [];
});

/** A TCP proxy in front of a target: the TOMA's path to it, which a test can cut and heal. */
class Proxy {
  private server: Server | null = null;
  private readonly sockets = new Set<Socket>();
  port = 0;

  constructor(private readonly target: string) {}

  async start(): Promise<string> {
    const [host, port] = this.target.split(":");
    this.server = createServer((inbound) => {
      const outbound = connect(Number(port), host!);
      for (const s of [inbound, outbound]) {
        this.sockets.add(s);
        s.on("close", () => this.sockets.delete(s));
        s.on("error", () => {});
      }
      inbound.pipe(outbound);
      outbound.pipe(inbound);
      inbound.on("close", () => outbound.destroy());
      outbound.on("close", () => inbound.destroy());
    });
    await new Promise<void>((r) => this.server!.listen(this.port, "127.0.0.1", () => r()));
    this.port = (this.server.address() as { port: number }).port;
    return `127.0.0.1:${this.port}`;
  }

  /** The path is gone: connections dropped, nothing accepted. */
  cut(): void {
    this.server?.close();
    this.server = null;
    for (const s of this.sockets) s.destroy();
  }
}

interface World {
  targets: TestTarget[];
  toma: Toma;
  call: (m: string, p: string, b?: unknown) => Promise<ApiResponse>;
  ok: (m: string, p: string, b?: unknown) => Promise<Record<string, unknown>>;
  proxy: Proxy;
}

async function world(): Promise<World> {
  const targets = await startTargets(env, [1, 1, 1], { fencing: true });
  cleanup.push(() => targets.forEach((t) => t.kill()));
  // The TOMA reaches t2 through a proxy (which the partition test cuts); clients go straight.
  const proxy = new Proxy(targets[2]!.address);
  const via = await proxy.start();
  cleanup.push(() => proxy.cut());
  const { toma, api } = startToma(env, targets, { addresses: [targets[0]!.address, targets[1]!.address, via] });
  cleanup.push(() => toma.stop());
  await toma.whenReady(5000);
  await until("3 member drives", () => toma.state?.drives.length === 3);
  const ok = async (m: string, p: string, b?: unknown) => {
    const r = await api(m, p, b);
    if (r.status >= 300) throw new Error(`${m} ${p}: ${r.status} ${JSON.stringify(r.body)}`);
    return r.body as Record<string, unknown>;
  };
  return { targets, toma, call: api, ok, proxy };
}

/** A client as a daemon registers; then its connection to each drive, bound to the volume. */
async function attachAs(w: World, client_id: number, volume: string): Promise<{ info: AttachInfo; sessions: Map<string, Session> }> {
  const info = (await w.ok("POST", `/v1/clients/${client_id}/attach/${volume}`, {})) as unknown as AttachInfo;
  const sessions = new Map<string, Session>();
  for (const c of info.layout.columns) {
    // Straight to the target that serves the drive, never through the TOMA's proxy.
    const t = w.targets.find((x) => x.drives.some((d) => d.info.drive_uuid === c.drive_uuid))!;
    const volumeBinding = { uuid: info.layout.volume_uuid, incarnation: info.layout.incarnation };
    const s = await openSession(env, t.address, { version: 1, role: "client", name: `c${client_id}`, volume: volumeBinding }, { client_id, generation: info.generation });
    cleanup.push(() => s.close());
    sessions.set(c.drive_uuid, s);
  }
  return { info, sessions };
}

/** Drive offset of the first byte of a column's first extent. */
function at(info: AttachInfo, column: number): { drive: Uint8Array; offset: number } {
  const c = info.layout.columns[column]!;
  return { drive: uuidFromString(c.drive_uuid), offset: c.runs[0]! * info.layout.extent_size_bytes };
}

const bytes = (fill: number) => new Uint8Array(4096).fill(fill);

test("delete of an attached volume is refused, naming its client; --force fences it out; a stale connection reaches nothing, not even the next volume on the same extents", async () => {
  const w = await world();
  await w.ok("POST", "/v1/volumes", { name: "old", capacity_bytes: 3 * MiB, raid_level: "0", stripe_width: 3 });
  const { client_id } = await w.ok("POST", "/v1/clients", { name: "host-a" });
  const old = await attachAs(w, client_id as number, "old");
  const o = at(old.info, 0);
  const s0 = old.sessions.get(old.info.layout.columns[0]!.drive_uuid)!;
  expect(await outcome(s0.write(o.drive, o.offset, bytes(0xaa), true))).toBe("ok");

  const refused = await w.call("DELETE", "/v1/volumes/old");
  expect(refused.status).toBe(409);
  expect((refused.body as { error: string }).error).toBe(
    `volume 'old' is attached by host-a (client ${client_id}): detach it there first, or delete with --force (which fences those clients out of it and removes their exports)`,
  );
  expect(w.toma.state!.volumes.map((v) => v.name)).toEqual(["old"]);
  expect(await outcome(s0.write(o.drive, o.offset, bytes(0xab), true))).toBe("ok");

  expect((await w.call("DELETE", "/v1/volumes/old?force=maybe")).status).toBe(400);
  expect((await w.call("DELETE", "/v1/volumes/old?force=true")).status).toBe(200);
  // Every drive confirmed a table without it before the commit: nothing left retired.
  expect(w.toma.state!.retired).toEqual([]);
  // The client has no volume on the drive any more: not registered there at all.
  expect(await outcome(s0.read(o.drive, o.offset, new Uint8Array(4096)))).toMatch(/^REFUSED: client \d+ is not registered on drive/);
  // The client's watch no longer lists it: its daemon tears the export down.
  const watch = (await w.ok("GET", `/v1/clients/${client_id}/watch?known=-1&stable=-1`)) as { volumes: AttachInfo[] };
  expect(watch.volumes).toEqual([]);
  // Its refresh of the volume it served is a 404, even though the name is free again.
  expect((await w.call("POST", `/v1/clients/${client_id}/attach/old`, { volume_uuid: old.info.layout.volume_uuid })).status).toBe(404);

  // The next volume gets the very same extents; the same client attaches it and writes.
  await w.ok("POST", "/v1/volumes", { name: "new", capacity_bytes: 3 * MiB, raid_level: "0", stripe_width: 3 });
  const fresh = await attachAs(w, client_id as number, "new");
  expect(fresh.info.layout.columns).toEqual(old.info.layout.columns);
  const n = at(fresh.info, 0);
  const f0 = fresh.sessions.get(fresh.info.layout.columns[0]!.drive_uuid)!;
  // The old volume's bytes were zeroed before its extents were freed: nothing of it shows.
  const first = new Uint8Array(4096).fill(1);
  await f0.read(n.drive, n.offset, first);
  expect(first.every((x) => x === 0)).toBe(true);
  expect(await outcome(f0.write(n.drive, n.offset, bytes(0x5e), true))).toBe("ok");
  // The stale connection of the deleted volume (its client registered again, for the new one):
  // no read, no write, no lock, not a byte.
  // Stamped with the current generation, as an attacker would: the volume is what refuses it.
  s0.setFence(client_id as number, fresh.info.generation);
  const gone = `REFUSED: volume ${old.info.layout.volume_uuid} (incarnation ${old.info.layout.incarnation}) has no extents on drive`;
  const got = new Uint8Array(4096);
  expect(await outcome(s0.read(o.drive, o.offset, got))).toContain(gone);
  expect(got.every((x) => x === 0)).toBe(true);
  expect(await outcome(s0.write(o.drive, o.offset, bytes(0xee), true))).toContain(gone);
  expect(await outcome(s0.writeZeroes(o.drive, o.offset, 4096, true))).toContain(gone);
  expect(await outcome(s0.trim(o.drive, o.offset, 4096))).toContain(gone);
  expect(await outcome(s0.lock(o.drive, o.offset, 4096))).toContain(gone);
  const check = new Uint8Array(4096);
  await f0.read(n.drive, n.offset, check);
  expect(check.every((x) => x === 0x5e)).toBe(true);
  // And the new volume's connection is held to its own extents.
  expect(await outcome(f0.read(n.drive, n.offset + 3 * MiB, new Uint8Array(4096)))).toContain("is outside the extents of volume");
});

test("a drive the TOMA cannot reach at delete time keeps the volume's extents retired until it confirms a fence without it", async () => {
  const w = await world();
  await w.ok("POST", "/v1/volumes", { name: "v", capacity_bytes: 3 * MiB, raid_level: "0", stripe_width: 3 });
  const { client_id } = await w.ok("POST", "/v1/clients", { name: "host-b" });
  const v = await attachAs(w, client_id as number, "v");
  const col = v.info.layout.columns.findIndex((c) => w.targets[2]!.drives[0]!.info.drive_uuid === c.drive_uuid);
  const p = at(v.info, col);
  const s2 = v.sessions.get(v.info.layout.columns[col]!.drive_uuid)!;

  // The TOMA loses t2; the client still reaches it.
  w.proxy.cut();
  await until("the TOMA sees t2 down", () => w.toma.targetViews().filter((t) => t.state === "down").length === 1, 10_000);
  expect((await w.call("DELETE", "/v1/volumes/v?force=true")).status).toBe(200);
  const drive2 = v.info.layout.columns[col]!.drive_uuid;
  expect(w.toma.state!.retired).toEqual([{ volume_uuid: v.info.layout.volume_uuid, drive_uuid: drive2, extents: fromRuns(v.info.layout.columns[col]!.runs) }]);
  // Retired extents are in use, not free, until released.
  const view = w.toma.driveViews().find((d) => d.uuid === drive2)!;
  expect(view).toMatchObject({ extents_retired: 1, extents_used: 1, extents_free: view.extents_total - 1 });
  // t2 never heard of the delete: the stale registration lets the client write... only the
  // deleted volume's own extents, which nothing else may have until t2 confirms.
  expect(await outcome(s2.write(p.drive, p.offset, bytes(0x11), true))).toBe("ok");

  // Healed: the TOMA pushes t2's table, the client is refused there, then the extents are free.
  await w.proxy.start();
  await until("the retired extents released", () => w.toma.state!.retired.length === 0, 10_000);
  expect(await outcome(s2.write(p.drive, p.offset, bytes(0x22), true))).toMatch(/^REFUSED: client \d+ is not registered on drive/);
  await w.ok("POST", "/v1/volumes", { name: "w", capacity_bytes: 3 * MiB, raid_level: "0", stripe_width: 3 });
  const wv = w.toma.state!.volumes.find((x) => x.name === "w")!;
  expect(wv.columns.find((c) => c.drive_uuid === drive2)!.extents).toEqual(fromRuns(v.info.layout.columns[col]!.runs));
  // Its client attaches the new volume: registered on t2 again, and still nothing of the old one.
  const nv = await attachAs(w, client_id as number, "w");
  expect(nv.info.layout.columns[col]).toEqual(v.info.layout.columns[col]);
  const n2 = nv.sessions.get(drive2)!;
  const first = new Uint8Array(4096).fill(1);
  await n2.read(p.drive, p.offset, first);
  expect(first.every((x) => x === 0)).toBe(true); // what the stale client wrote there was zeroed
  expect(await outcome(n2.write(p.drive, p.offset, bytes(0x33), true))).toBe("ok");
  s2.setFence(client_id as number, nv.info.generation);
  const got = new Uint8Array(4096);
  expect(await outcome(s2.read(p.drive, p.offset, got))).toContain("has no extents on drive");
  expect(got.every((x) => x === 0)).toBe(true);
  expect(await outcome(s2.write(p.drive, p.offset, bytes(0x44), true))).toContain("has no extents on drive");
  await n2.read(p.drive, p.offset, got);
  expect(got.every((x) => x === 0x33)).toBe(true);
});
