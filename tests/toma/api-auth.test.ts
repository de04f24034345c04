/**
 * Signed management requests (src/toma/api-auth.ts), sans-I/O: the guard and the signer talk
 * through an in-memory transport, with a clock the test moves. Known answers for the signature
 * and the seal (computed apart with Python's hmac module); a replayed request, an altered one, a
 * nonce of another TOMA, a nonce too old or evicted: each a 401 that never reaches the routes.
 */
import { beforeEach, expect, test } from "bun:test";
import { randomBytes } from "node:crypto";
import type { Env } from "../../src/engine/env.ts";
import { type ClusterKey, clientKeyOf, serverKeys } from "../../src/engine/wire/cluster-key.ts";
import {
  type ApiResponse,
  type Caller,
  MAX_OUTSTANDING_NONCES,
  ManagementGuard,
  ManagementSigner,
  NONCE_TTL_MS,
  NonceBook,
  type RawRequest,
  formatAuthorization,
  parseAuthorization,
  requestSignature,
  sealSecret,
} from "../../src/toma/api-auth.ts";

const hex = (b: Uint8Array) => Buffer.from(b).toString("hex");
const KEY = new Uint8Array(randomBytes(32));
const SERVER: ClusterKey = { kind: "server", key: KEY };
const CLIENT: ClusterKey = { kind: "client", key: clientKeyOf(KEY) };

let now = 0;
const env = {
  clock: { now_ms: () => now },
  random: { u32: () => randomBytes(4).readUInt32LE(), fill: (b: Uint8Array) => void b.set(randomBytes(b.length)) },
  log: { debug() {}, info() {}, warn: (msg: string, f?: Record<string, unknown>) => void warned.push(`${msg}: ${String(f?.reason)}`), error() {} },
} as unknown as Env;
const warned: string[] = [];

/** The routes' stand-in: records who called what; POST /v1/clients registers like api.ts. */
let calls: { method: string; path: string; body: unknown; caller: Caller }[];
const secrets = new Map<number, Uint8Array>();
const routes = async (method: string, path: string, body: unknown, caller: Caller): Promise<ApiResponse> => {
  calls.push({ method, path, body, caller });
  if (method === "POST" && path === "/v1/clients" && (caller.kind === "client" || caller.kind === "server")) {
    const id = 1000 + secrets.size;
    const secret = new Uint8Array(randomBytes(32));
    secrets.set(id, secret);
    return { status: 201, body: { client_id: id, generation: 0, secret: caller.seal(secret, id) } };
  }
  return { status: 200, body: { ok: true } };
};

let guard: ManagementGuard;
/** Every request the transport carried, as sent (what a listener on the network records). */
let wire: RawRequest[];
const send = (req: RawRequest) => {
  wire.push(req);
  return guard.serve(req, routes);
};
const lastSigned = () => wire.filter((r) => r.authorization !== null).at(-1)!;

beforeEach(() => {
  now = 1_000_000;
  calls = [];
  wire = [];
  secrets.clear();
  guard = new ManagementGuard(env, serverKeys(KEY), (id) => secrets.get(id));
});

test("known answers: the request signature and the pad that seals a client's secret", () => {
  const k = Uint8Array.from({ length: 32 }, (_, i) => i);
  const nonce = "00112233445566778899aabbccddeeff";
  expect(hex(requestSignature(k, "server", nonce, "POST", "/v1/volumes", '{"name":"v1"}'))).toBe(
    "67c063d362cccc15aa3d4793a6f383b8ca11531448866b5b869537e4ab90cdec",
  );
  // Sealing zeroes gives the pad itself; sealing twice gives the secret back.
  expect(hex(sealSecret(clientKeyOf(k), nonce, 42, new Uint8Array(32)))).toBe("6e4f574d4379d4bd33dce2bbe55f998ca33cd06690e748c91e9ae5592ccb18ae");
  const s = new Uint8Array(randomBytes(32));
  expect(sealSecret(k, nonce, 42, sealSecret(k, nonce, 42, s))).toEqual(s);
  expect(() => sealSecret(k, nonce, 42, new Uint8Array(16))).toThrow(/32 bytes/);
});

test("the Authorization header: what it carries, and what is not one", () => {
  const sig = new Uint8Array(32).fill(7);
  const h = formatAuthorization("client-id:77", "ab".repeat(16), sig);
  expect(parseAuthorization(h)).toEqual({ signer: "client-id:77", by: { kind: "client-id", id: 77 }, nonce: "ab".repeat(16), signature: sig });
  for (const bad of ["", "Bearer x", h.replace("nvmesh-v1", "nvmesh-v2"), h.replace("client-id:77", "admin"), h.slice(0, -2), `${h} `, h.toUpperCase()]) {
    expect(typeof parseAuthorization(bad)).toBe("string");
  }
  expect(parseAuthorization(formatAuthorization("client-id:9999999999999999", "ab".repeat(16), sig))).toMatch(/out of range/);
});

test("signed with the server key: served as an administrator; with the client key: as a client", async () => {
  expect((await new ManagementSigner(SERVER).call(send, "POST", "/v1/volumes", { name: "v" })).status).toBe(200);
  expect((await new ManagementSigner(CLIENT).call(send, "GET", "/v1/volumes?x=1")).status).toBe(200);
  expect(calls.map((c) => [c.method, c.path, c.caller.kind])).toEqual([
    ["POST", "/v1/volumes", "server"],
    ["GET", "/v1/volumes?x=1", "client"],
  ]);
  expect(calls[0]!.body).toEqual({ name: "v" });
});

test("a request seen on the wire and sent again byte for byte is a 401, and never reaches the routes", async () => {
  await new ManagementSigner(SERVER).call(send, "DELETE", "/v1/volumes/web");
  const captured = lastSigned();
  warned.length = 0;
  for (let i = 0; i < 3; i++) {
    const r = await guard.serve({ ...captured }, routes);
    expect(r.status).toBe(401);
    expect(r.body).toMatchObject({ code: "nonce", error: expect.stringMatching(/accepted once/) });
  }
  expect(calls.length).toBe(1);
  // Said in the TOMA's log, for whoever watches it.
  expect(warned.length).toBe(3);
  expect(warned[0]).toMatch(/management request refused: .*replayed/);
});

test("an altered request is a 401 and leaves its nonce unspent: method, path, query, body, signer", async () => {
  // Captured before it arrives: sign it, keep it, do not deliver it.
  const nonce = ((await send({ method: "GET", path: "/v1/nonce", body: "", authorization: null })).body as { nonce: string }).nonce;
  const body = '{"name":"web","capacity_bytes":1048576,"raid_level":"0"}';
  const good: RawRequest = { method: "POST", path: "/v1/volumes", body, authorization: formatAuthorization("server", nonce, requestSignature(KEY, "server", nonce, "POST", "/v1/volumes", body)) };
  const altered: RawRequest[] = [
    { ...good, method: "PUT" },
    { ...good, path: "/v1/volumes/web" },
    { ...good, path: "/v1/volumes?force=1" },
    { ...good, body: body.replace("1048576", "2097152") },
    { ...good, authorization: good.authorization!.replace("server", "client") },
    { ...good, authorization: good.authorization!.replace(nonce, "0".repeat(32)) },
  ];
  for (const a of altered) {
    const r = await guard.serve(a, routes);
    expect(r.status).toBe(401);
    expect((r.body as { error: string }).error).toMatch(/not this cluster's|altered/);
  }
  expect(calls.length).toBe(0);
  // The signer's own request still goes through: nobody but the signer could spend the nonce.
  expect((await guard.serve(good, routes)).status).toBe(200);
  expect(calls.length).toBe(1);
});

test("no signature, another cluster's key, a made-up nonce: 401, saying which", async () => {
  expect(((await new ManagementSigner(null).call(send, "GET", "/v1/cluster")).body as { error: string }).error).toMatch(/carried no signature/);
  const stranger = await new ManagementSigner({ kind: "server", key: new Uint8Array(32) }).call(send, "GET", "/v1/cluster");
  expect(stranger.status).toBe(401);
  expect((stranger.body as { error: string }).error).toMatch(/not this cluster's/);
  const n = "f".repeat(32);
  const madeUp = await guard.serve({ method: "GET", path: "/v1/cluster", body: "", authorization: formatAuthorization("server", n, requestSignature(KEY, "server", n, "GET", "/v1/cluster", "")) }, routes);
  expect(madeUp.status).toBe(401);
  expect(madeUp.body).toMatchObject({ code: "nonce" });
  expect(calls.length).toBe(0);
});

test("a nonce of another TOMA (or of this one before a restart) is refused; the signer retries once with a fresh one", async () => {
  const other = new ManagementGuard(env, serverKeys(KEY), () => undefined);
  const n = ((await other.serve({ method: "GET", path: "/v1/nonce", body: "", authorization: null }, routes)).body as { nonce: string }).nonce;
  const r = await guard.serve({ method: "GET", path: "/v1/cluster", body: "", authorization: formatAuthorization("server", n, requestSignature(KEY, "server", n, "GET", "/v1/cluster", "")) }, routes);
  expect(r.status).toBe(401);
  // The TOMA restarts between the nonce and the request, once: the signer's second try succeeds.
  let restarts = 1;
  const restarting = async (req: RawRequest) => {
    const res = await send(req);
    if (req.path === "/v1/nonce" && restarts-- > 0) guard = new ManagementGuard(env, serverKeys(KEY), (id) => secrets.get(id));
    return res;
  };
  expect((await new ManagementSigner(SERVER).call(restarting, "GET", "/v1/cluster")).status).toBe(200);
  expect(wire.filter((x) => x.path === "/v1/nonce").length).toBe(2);
  // Every time: it gives up after the second, with the 401.
  const always = async (req: RawRequest) => {
    const res = await send(req);
    if (req.path === "/v1/nonce") guard = new ManagementGuard(env, serverKeys(KEY), (id) => secrets.get(id));
    return res;
  };
  const given = await new ManagementSigner(SERVER).call(always, "GET", "/v1/cluster");
  expect(given.status).toBe(401);
  expect(calls.length).toBe(1);
});

test("nonces: once each, forgotten after NONCE_TTL_MS of the TOMA's own clock, at most MAX_OUTSTANDING_NONCES kept", () => {
  const book = new NonceBook(env);
  const a = book.issue();
  const b = book.issue();
  expect(a).not.toBe(b);
  expect(book.consume(a)).toBe(true);
  expect(book.consume(a)).toBe(false);
  now += NONCE_TTL_MS + 1;
  expect(book.consume(b)).toBe(false);
  // A clock that jumps back counts as no time passing: the nonce is not made younger or older.
  const c = book.issue();
  now -= 3_600_000;
  expect(book.consume(c)).toBe(true);
  const first = book.issue();
  for (let i = 0; i < MAX_OUTSTANDING_NONCES; i++) book.issue();
  expect(book.outstanding).toBe(MAX_OUTSTANDING_NONCES);
  expect(book.consume(first)).toBe(false);
});

test("a registration's secret is sealed for its signer; the signer signs that client's routes with it, and only that client's", async () => {
  const daemon = new ManagementSigner(CLIENT);
  const reg = await daemon.call(send, "POST", "/v1/clients", { name: "host1" });
  const { client_id, secret } = reg.body as { client_id: number; secret: string };
  expect(secret).not.toBe(hex(secrets.get(client_id)!)); // a listener reads the sealed form only
  expect((await daemon.call(send, "GET", `/v1/clients/${client_id}/watch?known=3&stable=2`)).status).toBe(200);
  expect(calls.at(-1)).toMatchObject({ path: `/v1/clients/${client_id}/watch?known=3&stable=2`, caller: { kind: "client-id", id: client_id } });
  // Another client id's routes: the client key only (api.ts refuses it there).
  await daemon.call(send, "DELETE", "/v1/clients/5");
  expect(calls.at(-1)!.caller.kind).toBe("client");
  // The secret of a client the TOMA no longer knows: 410, register again.
  secrets.delete(client_id);
  const gone = await daemon.call(send, "POST", `/v1/clients/${client_id}/ack`, { generation: 1 });
  expect(gone.status).toBe(410);
  // Another client host holding the client key cannot sign as that client: it lacks the secret.
  secrets.set(client_id, new Uint8Array(32));
  const n = "1".repeat(32);
  const forged = await guard.serve(
    { method: "DELETE", path: `/v1/clients/${client_id}`, body: "", authorization: formatAuthorization(`client-id:${client_id}`, n, requestSignature(CLIENT.key, `client-id:${client_id}`, n, "DELETE", `/v1/clients/${client_id}`, "")) },
    routes,
  );
  expect(forged.status).toBe(401);
});

test("a TOMA started --insecure serves everyone as such, signed or not; nonces are still handed out", async () => {
  guard = new ManagementGuard(env, null, () => undefined);
  expect((await new ManagementSigner(null).call(send, "POST", "/v1/volumes", {})).status).toBe(200);
  expect((await new ManagementSigner(CLIENT).call(send, "DELETE", "/v1/volumes/x")).status).toBe(200);
  expect(calls.map((c) => c.caller.kind)).toEqual(["insecure", "insecure"]);
  expect((await guard.serve({ method: "POST", path: "/v1/nonce", body: "", authorization: null }, routes)).status).toBe(405);
});

test("a TOMA that serves client daemons elsewhere (a follower) sends a client id's request on, keeping the registration; one that serves them answers 410", async () => {
  const daemon = new ManagementSigner(CLIENT);
  const reg = await daemon.call(send, "POST", "/v1/clients", { name: "host1" });
  const { client_id } = reg.body as { client_id: number };
  // A follower: it knows no client's secret, and names the leader.
  const follower = new ManagementGuard(env, serverKeys(KEY), () => undefined, () => ({ status: 421, body: { error: "not the leader", leader: "10.0.0.3:4000" } }));
  const before = calls.length;
  const away = await daemon.call((req) => follower.serve(req, routes), "GET", `/v1/clients/${client_id}/watch?known=1&stable=1`);
  expect(away).toEqual({ status: 421, body: { error: "not the leader", leader: "10.0.0.3:4000" } });
  expect(calls.length).toBe(before); // never reached the routes
  // The TOMA that serves client daemons and no longer knows the id: 410, register again.
  const leader = new ManagementGuard(env, serverKeys(KEY), () => undefined, () => null);
  expect((await daemon.call((req) => leader.serve(req, routes), "GET", `/v1/clients/${client_id}/watch?known=1&stable=1`)).status).toBe(410);
});
