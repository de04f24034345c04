/**
 * Fuzzing the management API's edge, as a stranger or a buggy admin tool could reach it: the
 * HTTP/1.1 parser on random bytes and on mutated valid requests cut at random points, the
 * connection state machine on random request streams, and the API's routes and request bodies
 * (api.ts validation) on random methods, paths and JSON. The properties: nothing throws; the
 * parser gives the same requests however the bytes are cut; every refusal is a status with a
 * reason; a refused request changes nothing; nothing is held once the peer is gone. A failure
 * names its seed and the line that replays it (tests/support/fuzz.ts).
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { testEnv as nbdTestEnv } from "../../src/engine/nbd/test-kit.ts";
import { managementApi } from "../../src/toma/api.ts";
import { formatAuthorization, requestSignature } from "../../src/toma/api-auth.ts";
import { DEFAULT_HTTP_LIMITS, HttpServer } from "../../src/toma/http-conn.ts";
import { DEFAULT_HTTP_WIRE_LIMITS, HttpRequestParser, jsonResponse } from "../../src/toma/http-wire.ts";
import type { Toma } from "../../src/toma/toma.ts";
import { concat, forEachSeed, FuzzConn, type Rng, seeds, settle, splitRandomly } from "../support/fuzz.ts";
import { apiFixture, MiB, type TestApi, testEnv, type TestTarget } from "./harness.ts";

const FILE = "tests/toma/http-fuzz.test.ts";
const utf8 = new TextEncoder();

function validRequest(rng: Rng): string {
  const method = rng.pick(["GET", "POST", "DELETE", "PUT", "HEAD", "get", "PATCH"]);
  const path = rng.pick(["/v1/cluster", "/v1/volumes", "/v1/volumes/a", "/", "/v1/clients/1/watch?known=-1", "/%zz"]);
  const body = rng.chance(0.5) ? JSON.stringify({ name: "x", n: rng.int(100) }) : "";
  const headers = [`Host: h${rng.int(3)}`];
  if (body.length > 0 || rng.chance(0.1)) headers.push(`Content-Length: ${rng.chance(0.9) ? body.length : rng.pick(["-1", "1e3", "9999999", "1, 2", " 3 "])}`);
  if (rng.chance(0.2)) headers.push(rng.pick(["Connection: close", "Expect: 100-continue", "Transfer-Encoding: chunked", "Authorization: Bearer 00", "X-Junk:\tv"]));
  const version = rng.chance(0.9) ? "HTTP/1.1" : rng.pick(["HTTP/1.0", "HTTP/2", "HTTP/1.1x", "FOO"]);
  const eol = rng.chance(0.9) ? "\r\n" : "\n";
  return `${method} ${path} ${version}${eol}${headers.join(eol)}${eol}${eol}${body}`;
}

function stream(rng: Rng): Uint8Array {
  const parts: Uint8Array[] = [];
  for (let i = 1 + rng.int(4); i > 0; i--) {
    const k = rng.int(10);
    if (k < 7) parts.push(utf8.encode(validRequest(rng)));
    else if (k < 9) parts.push(rng.mutate(utf8.encode(validRequest(rng))));
    else parts.push(rng.bytes(rng.int(300)));
  }
  return concat(parts);
}

/** Everything a parser makes of bytes given in these chunks: requests and the error, as text. */
function parseAll(chunks: Uint8Array[]): string[] {
  const p = new HttpRequestParser();
  const out: string[] = [];
  for (const chunk of chunks) {
    let pos = 0;
    while (pos < chunk.length && p.error === null) {
      pos += p.feed(chunk, pos);
      const r = p.take();
      if (r !== null) {
        expect(r.body.length).toBeLessThanOrEqual(DEFAULT_HTTP_WIRE_LIMITS.max_body_bytes);
        out.push(`${r.method} ${r.target} ${[...r.headers].join("|")} ${Buffer.from(r.body).toString("hex")} ${r.close}`);
      }
    }
    if (p.error !== null) break;
  }
  if (p.error !== null) {
    expect([400, 413, 431, 501, 505]).toContain(p.error.status);
    expect(p.error.reason.length).toBeGreaterThan(0);
    out.push(`error ${p.error.status}`);
  }
  return out;
}

describe("the HTTP/1.1 request parser", () => {
  test("random and mutated requests: never throws, same result however the bytes are cut", async () => {
    let requests = 0;
    await forEachSeed(FILE, seeds(2000), (rng) => {
      const bytes = stream(rng);
      const whole = parseAll([bytes]);
      const cut = parseAll(splitRandomly(rng, bytes));
      expect(cut).toEqual(whole);
      requests += whole.filter((x) => !x.startsWith("error")).length;
    });
    expect(requests).toBeGreaterThan(0);
  });

  test("a body above the limit is refused from its Content-Length, before a byte of it is read", () => {
    const p = new HttpRequestParser();
    const head = utf8.encode("POST /v1/volumes HTTP/1.1\r\nContent-Length: 100000000\r\n\r\n");
    expect(p.feed(head)).toBe(head.length);
    expect(p.error?.status).toBe(413);
    expect((p as unknown as { body: Uint8Array }).body.length).toBe(0);
  });
});

describe("the management connection state machine", () => {
  test("random request streams: no throw, HTTP answers only, nothing held after", async () => {
    const env = nbdTestEnv();
    // A handler that refuses (401) requests without the right header, as the key check does.
    const server = new HttpServer(env, async (req) => (req.headers.get("authorization") === "Bearer ok" ? jsonResponse(200, { ok: true }) : jsonResponse(401, { error: "no key" })), {
      ...DEFAULT_HTTP_LIMITS,
      max_unauthenticated: 2,
    });
    await forEachSeed(FILE, seeds(300), async (rng) => {
      const conn = new FuzzConn();
      server.handle(conn);
      let bytes = stream(rng);
      if (rng.chance(0.5)) bytes = concat([utf8.encode("GET /v1/cluster HTTP/1.1\r\nAuthorization: Bearer ok\r\n\r\n"), bytes]);
      await conn.deliverSplit(rng, bytes);
      await settle(3);
      if (rng.chance(0.3)) env.fireTimers();
      await settle(2);
      expect(conn.thrown).toEqual([]);
      const text = Buffer.concat(conn.sent).toString("latin1");
      if (text.length > 0) expect(text).toStartWith("HTTP/1.1 ");
      conn.peerCloses();
      await settle();
      expect({ conns: server.connections, unauthenticated: server.unauthenticated }).toEqual({ conns: 0, unauthenticated: 0 });
    });
  });
});

describe("management API routes and bodies", () => {
  const env = testEnv();
  let targets: TestTarget[];
  let toma: Toma;
  let api: TestApi;

  beforeAll(async () => {
    ({ targets, toma, api } = await apiFixture(env));
  });

  afterAll(async () => {
    await toma.stop();
    for (const t of targets) t.kill();
  });

  function randomJson(rng: Rng, depth = 0): unknown {
    switch (rng.int(depth > 2 ? 5 : 7)) {
      case 0:
        return rng.pick([0, -1, 512, MiB, 1.5, 2 ** 60, 1e308]);
      case 1:
        return rng.pick(["", "0", "1", "10", "concatenated", "existing", "a b", "../x", "x".repeat(100)]);
      case 2:
        return rng.pick([null, true, false]);
      case 3:
        return rng.int(1 << 20);
      case 4:
        return rng.pick(["GET", "v1"]);
      case 5:
        return Array.from({ length: rng.int(4) }, () => randomJson(rng, depth + 1));
      default: {
        const keys = ["name", "capacity_bytes", "raid_level", "stripe_width", "stripe_size_bytes", "number_of_mirrors", "mirrors", "debug_format", "generation", "volume", "column", "error", "x"];
        const o: Record<string, unknown> = {};
        for (let i = rng.int(6); i > 0; i--) o[rng.pick(keys)] = randomJson(rng, depth + 1);
        return o;
      }
    }
  }

  test("random methods, paths and bodies: a documented status, a reason on refusals, nothing changed by a refusal", async () => {
    const statuses = new Map<number, number>();
    await forEachSeed(FILE, seeds(400), async (rng) => {
      const method = rng.pick(["GET", "POST", "DELETE", "PUT", "PATCH", "get"]);
      const name = () => rng.pick(["existing", "nope", "%zz", "a%20b", "n" + rng.int(5), "", "x".repeat(70)]);
      const id = () => rng.pick(["1", "2", "999", "-1", "x", "1e3"]);
      const templates = [
        () => "/v1/cluster",
        () => "/v1/targets",
        () => "/v1/drives",
        () => "/v1/volumes",
        () => `/v1/volumes/${name()}`,
        () => `/v1/volumes/${name()}/attach`,
        () => `/v1/drives/${name()}/evict`,
        () => "/v1/clients",
        () => `/v1/clients/${id()}`,
        () => `/v1/clients/${id()}/attach/${name()}`,
        () => `/v1/clients/${id()}/ack`,
        () => `/v1/clients/${id()}/report`,
        () => `/v1/clients/${id()}/watch?known=-1&stable=-1`,
        () => `/${rng.pick(["v2", "", "v1/x/y/z/w"])}`,
      ];
      const path = rng.pick(templates)();
      const body = rng.chance(0.7) ? randomJson(rng) : undefined;
      const before = { gen: toma.state!.generation, vols: toma.state!.volumes.map((x) => x.name).join(",") };
      let r: Awaited<ReturnType<TestApi>>;
      try {
        r = await api(method, path, body);
      } catch (e) {
        throw new Error(`${method} ${path} ${JSON.stringify(body)} threw: ${(e as Error).message}`);
      }
      statuses.set(r.status, (statuses.get(r.status) ?? 0) + 1);
      expect([200, 201, 400, 404, 405, 409, 410, 503, 507]).toContain(r.status);
      if (r.status >= 400) {
        expect(typeof (r.body as { error?: unknown }).error).toBe("string");
        expect({ gen: toma.state!.generation, vols: toma.state!.volumes.map((x) => x.name).join(",") }).toEqual(before);
      }
    });
    console.log("api fuzz statuses:", Object.fromEntries(statuses));
    expect(statuses.size).toBeGreaterThan(2);
  }, 60_000);

  test("the signed transport: random, malformed and wrongly signed Authorization headers are refused (401, or 410 for an unknown client) and change nothing", async () => {
    const key = new Uint8Array(32).fill(9);
    const transport = managementApi(env, toma, key);
    await forEachSeed(FILE, seeds(400), async (rng) => {
      const method = rng.pick(["GET", "POST", "DELETE"]);
      const path = rng.pick(["/v1/cluster", "/v1/volumes", "/v1/volumes/existing", "/v1/clients", "/v1/drives/x/evict"]);
      const body = rng.chance(0.5) ? JSON.stringify(randomJson(rng)) : "";
      const nonce = Buffer.from(rng.bytes(16)).toString("hex");
      const signed = formatAuthorization("server", nonce, requestSignature(key, "server", nonce, method, path, body));
      const authorization = rng.pick([
        null,
        Buffer.from(rng.bytes(rng.int(120))).toString("latin1"),
        `nvmesh-v1 ${rng.pick(["server", "client", "client-id:1", "client-id:99999999999999999", "root"])} ${nonce} ${"ab".repeat(32)}`,
        // Signed right, over a nonce the TOMA never issued: refused.
        signed,
        Buffer.from(rng.mutate(new TextEncoder().encode(signed))).toString("latin1"),
      ]);
      const before = { gen: toma.state!.generation, vols: toma.state!.volumes.map((x) => x.name).join(",") };
      let r: Awaited<ReturnType<typeof transport>>;
      try {
        r = await transport({ method, path, body, authorization });
      } catch (e) {
        throw new Error(`${method} ${path} authorization=${JSON.stringify(authorization)} threw: ${(e as Error).message}`);
      }
      // 410: a client-id signer the TOMA does not know (it answers "register again" first).
      expect(r.status === 401 || (r.status === 410 && authorization?.includes("client-id:") === true)).toBe(true);
      expect(typeof (r.body as { error?: unknown }).error).toBe("string");
      expect({ gen: toma.state!.generation, vols: toma.state!.volumes.map((x) => x.name).join(",") }).toEqual(before);
    });
  });
});
