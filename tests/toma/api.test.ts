/**
 * The management API: bad input is refused with a clear message and changes nothing; the HTTP
 * glue and the typed client carry statuses and messages through unchanged.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { randomBytes } from "node:crypto";
import { type ClusterKey, clientKeyOf } from "../../src/engine/wire/cluster-key.ts";
import { TomaApiError, tomaClient } from "../../src/toma/api-client.ts";
import { managementApi } from "../../src/toma/api.ts";
import { formatAuthorization, requestSignature } from "../../src/toma/api-auth.ts";
import { serveTomaApi, type TomaHttpServer } from "../../src/toma/runtime/http-server.ts";
import type { Toma } from "../../src/toma/toma.ts";
import { apiFixture, MiB, testEnv, type TestApi, type TestTarget, until } from "./harness.ts";

const env = testEnv();
let targets: TestTarget[];
let toma: Toma;
let api: TestApi;
let http: TomaHttpServer;
/** The HTTP API is served with a key: requests over it are signed (api-auth.ts). */
const SERVER_KEY = new Uint8Array(randomBytes(32));
const ADMIN = { key: { kind: "server", key: SERVER_KEY } satisfies ClusterKey };
const CLIENT_HOST = { key: { kind: "client", key: clientKeyOf(SERVER_KEY) } satisfies ClusterKey };

beforeAll(async () => {
  ({ targets, toma, api } = await apiFixture(env));
  http = await serveTomaApi(managementApi(env, toma, SERVER_KEY));
});

afterAll(async () => {
  await http.stop();
  await toma.stop();
  for (const t of targets) t.kill();
});

describe("bad input is refused and changes nothing", () => {
  const cases: [string, string, string, unknown, number, RegExp][] = [
    ["no body", "POST", "/v1/volumes", undefined, 400, /invalid volume request/],
    ["body not an object", "POST", "/v1/volumes", [1, 2], 400, /invalid volume request/],
    ["missing capacity", "POST", "/v1/volumes", { name: "a", raid_level: "0" }, 400, /capacity_bytes/],
    ["capacity a string", "POST", "/v1/volumes", { name: "a", capacity_bytes: "1G", raid_level: "0" }, 400, /capacity_bytes must be a number/],
    ["capacity fractional", "POST", "/v1/volumes", { name: "a", capacity_bytes: 1.5, raid_level: "0" }, 400, /integer/],
    ["capacity 0", "POST", "/v1/volumes", { name: "a", capacity_bytes: 0, raid_level: "concatenated" }, 400, /multiple of 512/],
    ["capacity 1000", "POST", "/v1/volumes", { name: "a", capacity_bytes: 1000, raid_level: "concatenated" }, 400, /multiple of 512/],
    ["unknown raid level", "POST", "/v1/volumes", { name: "a", capacity_bytes: MiB, raid_level: "5" }, 400, /raid_level must be/],
    ["unknown field", "POST", "/v1/volumes", { name: "a", capacity_bytes: MiB, raid_level: "0", capacity: 1 }, 400, /invalid volume request/],
    ["bad name", "POST", "/v1/volumes", { name: "a b", capacity_bytes: MiB, raid_level: "0" }, 400, /bad volume name/],
    ["bad stripe size", "POST", "/v1/volumes", { name: "a", capacity_bytes: MiB, raid_level: "0", stripe_size_bytes: 3000 }, 400, /power of two/],
    ["debug_format not a boolean", "POST", "/v1/volumes", { name: "a", capacity_bytes: MiB, raid_level: "0", debug_format: "yes" }, 400, /debug_format must be true or false/],
    ["name taken", "POST", "/v1/volumes", { name: "existing", capacity_bytes: MiB, raid_level: "concatenated" }, 409, /already exists/],
    ["too large", "POST", "/v1/volumes", { name: "a", capacity_bytes: 1024 * MiB, raid_level: "concatenated" }, 507, /not enough free space/],
    ["width beyond drives", "POST", "/v1/volumes", { name: "a", capacity_bytes: MiB, raid_level: "0", stripe_width: 3 }, 507, /needs 3 drives; the cluster has 2 usable drives/],
    ["unknown volume", "GET", "/v1/volumes/nope", undefined, 404, /no volume named 'nope'/],
    ["delete unknown volume", "DELETE", "/v1/volumes/nope", undefined, 404, /no volume named/],
    ["attach unknown volume", "GET", "/v1/volumes/nope/attach", undefined, 404, /no volume named/],
    ["bad name in path", "GET", "/v1/volumes/a%20b", undefined, 400, /bad volume name/],
    ["unknown route", "GET", "/v1/nothing", undefined, 404, /no such route/],
    ["membership change on a TOMA that runs alone", "POST", "/v1/cluster/servers", { name: "s4", address: "h:1" }, 409, /this TOMA runs alone .*TOMA cluster/],
    ["wrong method", "PUT", "/v1/volumes", undefined, 405, /not allowed/],
  ];
  for (const [title, method, path, body, status, msg] of cases) {
    test(title, async () => {
      const gen = toma.state!.generation;
      const r = await api(method, path, body);
      expect(r.status).toBe(status);
      expect((r.body as { error: string }).error).toMatch(msg);
      expect(toma.state!.generation).toBe(gen);
      expect(toma.state!.volumes.map((v) => v.name)).toEqual(["existing"]);
    });
  }
});

describe("over HTTP with the typed client", () => {
  test("create, list, attach and delete", async () => {
    const c = tomaClient(http.url, ADMIN);
    const v = await c.createVolume({ name: "web", capacity_bytes: 2 * MiB, raid_level: "0", stripe_width: 2 });
    expect(v.columns.length).toBe(2);
    expect((await c.volumes()).map((x) => x.name).sort()).toEqual(["existing", "web"]);
    expect((await c.volume("web")).state).toBe("online");
    const a = await c.attach("web");
    expect(a.layout.raid_level).toBe("0");
    expect(a.layout.block_size).toBe(512);
    expect(a.drives.every((d) => d.target !== null)).toBe(true);
    const cl = await c.cluster();
    expect(cl.ready).toBe(true);
    expect(cl.capacity.used_bytes).toBe(3 * MiB);
    expect((await c.targets()).every((t) => t.state === "up")).toBe(true);
    expect((await c.drives()).length).toBe(2);
    await c.deleteVolume("web");
    expect((await c.volumes()).map((x) => x.name)).toEqual(["existing"]);
  });

  test("a debug-format volume shows its flag, takes 4 × its capacity, and its layout says so", async () => {
    const c = tomaClient(http.url, ADMIN);
    const before = (await c.cluster()).capacity.used_bytes;
    const v = await c.createVolume({ name: "dbg", capacity_bytes: MiB / 2, raid_level: "concatenated", debug_format: true });
    expect(v.debug_format).toBe(true);
    expect((await c.volume("dbg")).debug_format).toBe(true);
    expect((await c.cluster()).capacity.used_bytes - before).toBe(2 * MiB);
    const a = await c.attach("dbg");
    expect(a.layout).toMatchObject({ capacity_bytes: MiB / 2, debug_format: true });
    await c.deleteVolume("dbg");
  });

  test("errors carry the server's status and message", async () => {
    const c = tomaClient(http.url.replace("http://", ""), ADMIN);
    const e = await c.createVolume({ name: "existing", capacity_bytes: MiB, raid_level: "concatenated" }).catch((x) => x);
    expect(e).toBeInstanceOf(TomaApiError);
    expect(e.status).toBe(409);
    expect(e.message).toMatch(/already exists/);
  });

  test("a body that is not JSON is a 400 (once its signature is checked)", async () => {
    const nonce = ((await (await fetch(`${http.url}/v1/nonce`)).json()) as { nonce: string }).nonce;
    const authorization = formatAuthorization("server", nonce, requestSignature(SERVER_KEY, "server", nonce, "POST", "/v1/volumes", "{nope"));
    const r = await fetch(`${http.url}/v1/volumes`, { method: "POST", body: "{nope", headers: { authorization } });
    expect(r.status).toBe(400);
    expect(((await r.json()) as { error: string }).error).toMatch(/not valid JSON/);
  });

  test("an unreachable TOMA is a clear error", async () => {
    const e = await tomaClient("http://127.0.0.1:1").cluster().catch((x) => x);
    expect(e).toBeInstanceOf(TomaApiError);
    expect(e.status).toBe(0);
    expect(e.message).toBe("cannot reach a TOMA at 127.0.0.1:1: connection refused (nothing listens there)");
    expect(e.kind).toBe("unreachable");
  });

  test("an address that answers HTTP but is not a TOMA says so", async () => {
    const other = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => new Response("not here", { status: 404 }) });
    try {
      const e = await tomaClient(`127.0.0.1:${other.port}`).cluster().catch((x) => x);
      expect(e).toBeInstanceOf(TomaApiError);
      expect(e.kind).toBe("not_toma");
      expect(e.message).toBe(`127.0.0.1:${other.port} is not a TOMA: it answered HTTP 404 without the management API's JSON`);
    } finally {
      other.stop(true);
    }
  });
});

describe("client daemons' routes", () => {
  test("attach info is of one state: a volume record read before a change gets the current topology with the current generation", async () => {
    expect((await api("POST", "/v1/volumes", { name: "mirrored", capacity_bytes: MiB, raid_level: "1" })).status).toBe(201);
    const before = toma.state!.volumes.find((v) => v.name === "mirrored")!;
    expect(toma.attachInfo(before).topology[0]!.legs).toEqual(["RWL", "RWL"]);
    // The leg on the drive that holds nothing else goes out (no third drive to replace it).
    const existing = toma.state!.volumes.find((v) => v.name === "existing")!.columns[0]!.drive_uuid;
    const out = before.columns.find((c) => c.drive_uuid !== existing)!.drive_uuid;
    expect(toma.evictDrive(out).ok).toBe(true);
    await until("the evicted leg dead", () => toma.state!.volumes.find((v) => v.name === "mirrored")!.legs.includes("dead"));
    // The attach route reads the record, awaits the client's registration, then answers: the
    // answer must not pair the old record's topology with the new generation (simulator seed 1851).
    const info = toma.attachInfo(before);
    expect(info.generation).toBe(toma.state!.generation);
    expect(info.topology_generation).toBe(toma.state!.volumes.find((v) => v.name === "mirrored")!.topology_seq);
    expect(info.topology[0]!.legs).toContain("DEAD");
    expect((await api("DELETE", "/v1/volumes/mirrored", undefined)).status).toBe(200);
  });


  test("a client that leaves (DELETE) is fenced out of its drives at once and no longer holds the stable generation", async () => {
    const reg = await api("POST", "/v1/clients", { name: "leaver" });
    expect(reg.status).toBe(201);
    const id = (reg.body as { client_id: number }).client_id;
    expect((await api("POST", `/v1/clients/${id}/attach/existing`, {})).status).toBe(200);
    const mc = toma.mirror;
    expect(mc.clients.live(id)).toBeDefined();
    expect((await api("GET", `/v1/clients/${id}`, undefined)).status).toBe(405);
    const r = await api("DELETE", `/v1/clients/${id}`, undefined);
    expect(r.status).toBe(200);
    expect(mc.clients.live(id)).toBeUndefined();
    // Fenced out of the volume's drive on the next pass, then forgotten.
    await until("the leaver fenced out and forgotten", () => mc.clients.all().every((c) => c.id !== id));
    expect(mc.stable()).toBe(toma.state!.generation);
    expect((await api("GET", `/v1/clients/${id}/watch?known=-1&stable=-1`, undefined)).status).toBe(410);
  });

  test("over HTTP a watch that knows everything is held until something changes (the query reaches the handler, signed)", async () => {
    // As a client daemon does it: the client key registers, the secret it is given signs the rest.
    const c = tomaClient(http.url, CLIENT_HOST);
    const reg = (await c.call("POST", "/v1/clients", { name: "watcher" })) as { client_id: number; secret: string };
    const id = reg.client_id;
    expect(reg.secret).toMatch(/^[0-9a-f]{64}$/);
    expect(Buffer.from(reg.secret, "hex")).not.toEqual(Buffer.from(toma.mirror.clients.live(id)!.secret)); // sealed
    await c.call("POST", `/v1/clients/${id}/attach/existing`, {});
    const mc = toma.mirror;
    await c.call("POST", `/v1/clients/${id}/ack`, { generation: toma.state!.generation });
    await until("the watcher counted in the stable generation", () => mc.stable() === toma.state!.generation);
    // Knowing nothing: answered at once, with what there is to know.
    const fresh = (await c.call("GET", `/v1/clients/${id}/watch?known=-1&stable=-1`)) as { generation: number };
    expect(fresh.generation).toBe(toma.state!.generation);
    // Knowing everything: a long poll. Before the fix the HTTP glue dropped the query, so every
    // watch was answered at once and each client daemon spun on it, burning both machines' CPU.
    let answered = false;
    const held = c.call("GET", `/v1/clients/${id}/watch?known=${toma.state!.generation}&stable=${mc.stable()}`).then(() => {
      answered = true;
    });
    await Bun.sleep(500);
    expect(answered).toBe(false);
    mc.clients.notify();
    await held;
    expect(answered).toBe(true);
    await c.call("DELETE", `/v1/clients/${id}`);
    expect(mc.clients.live(id)).toBeUndefined();
  });
});
