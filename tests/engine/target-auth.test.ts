/**
 * The cluster key on the data path: a target with a key serves nothing, not even its drive list,
 * to a requester that does not prove it holds the key; the requester checks the target's proof
 * too. A stranger gets a clear error and is disconnected; the target keeps serving the others.
 */
import { afterEach, expect, test } from "bun:test";
import { randomBytes } from "node:crypto";
import { type ClusterKey, clientKeyOf, requesterProof } from "../../src/engine/wire/cluster-key.ts";
import { type AuthChallenge, TargetInfo, decodeBody, encodeBody, isInvalid } from "../../src/engine/wire/control.ts";
import { FrameDecoder, type Header, Op, Status, emptyHeader, encodeFrame } from "../../src/engine/wire/header.ts";
import { AuthError } from "../../src/engine/wire/session-api.ts";
import { openSession } from "../../src/engine/wire/session.ts";
import { type TargetHarness, memoryDrive, pattern, startTarget, uuidBytes } from "./target-fixture.ts";

const KEY = new Uint8Array(randomBytes(32));
const SERVER: ClusterKey = { kind: "server", key: KEY };
const CLIENT: ClusterKey = { kind: "client", key: clientKeyOf(KEY) };
const OTHER: ClusterKey = { kind: "server", key: new Uint8Array(randomBytes(32)) };

let h: TargetHarness | null = null;
afterEach(() => {
  h?.stop();
  h = null;
});

async function keyed() {
  const d = await memoryDrive(16);
  h = await startTarget([d], { cluster_key: KEY });
  return d;
}

async function authError(p: Promise<unknown>): Promise<string> {
  try {
    const s = await p;
    (s as { close?: () => void }).close?.();
  } catch (e) {
    expect(e).toBeInstanceOf(AuthError);
    return (e as Error).message;
  }
  throw new Error("the session was opened");
}

test("with the key: HELLO, AUTH, then I/O as usual", async () => {
  const d = await keyed();
  const s = await h!.session();
  expect(s.info.drives.map((x) => x.drive_uuid)).toEqual([d.info.drive_uuid]);
  await s.write(uuidBytes(d), 0, pattern(1, 4096), false);
  const back = new Uint8Array(4096);
  await s.read(uuidBytes(d), 0, back);
  expect(back).toEqual(pattern(1, 4096));
});

test("without the key, or with another one, the requester is told exactly that; the target serves on", async () => {
  const d = await keyed();
  const hello = { version: 1 as const, role: "client" as const, name: "stranger" };
  expect(await authError(openSession(h!.env, h!.address, hello))).toContain("requires the cluster key");
  expect(await authError(openSession(h!.env, h!.address, hello, { cluster_key: OTHER }))).toContain("holds a different cluster key");
  // The one who holds the key is served all along.
  const s = await h!.session();
  await s.write(uuidBytes(d), 0, pattern(2, 512), true);
  // The keyless stranger never sent AUTH; the other one refused the target first.
  expect(h!.logs.some((l) => /cluster key/.test(String(l.fields?.reason)))).toBe(false);
});

test("a keyed requester refuses a target that has no key (it could be anyone's)", async () => {
  const d = await memoryDrive(16);
  h = await startTarget([d]);
  const hello = { version: 1 as const, role: "client" as const, name: "careful" };
  expect(await authError(openSession(h.env, h.address, hello, { cluster_key: SERVER }))).toContain("has no cluster key");
  expect(await authError(openSession(h.env, h.address, hello, { cluster_key: CLIENT }))).toContain("has no cluster key");
});

/** A hand-made requester: HELLO, then whatever AUTH the test wants to send. */
async function rawAuth(nonce: Uint8Array, proofOf: (ch: AuthChallenge) => Uint8Array) {
  const conn = await h!.env.net.connect(h!.address);
  const answers: { h: Header; body: Uint8Array }[] = [];
  let closed = false;
  const dec = new FrameDecoder((hd, p) => void answers.push({ h: hd, body: p.slice() }), () => {});
  conn.onData = (c) => dec.push(c);
  conn.onClose = () => (closed = true);
  const next = async (n: number) => {
    for (let i = 0; i < 500 && answers.length < n; i++) await Bun.sleep(2);
    return answers[n - 1]!;
  };
  conn.send(encodeFrame({ ...emptyHeader(), opcode: Op.HELLO, request_id: 1 }, encodeBody({ version: 1, role: "client", name: "raw", nonce })));
  const info = decodeBody(TargetInfo, (await next(1)).body);
  if (isInvalid(info) || !info.auth) throw new Error("no challenge");
  expect(info.drives).toEqual([]); // nothing is told before AUTH
  conn.send(encodeFrame({ ...emptyHeader(), opcode: Op.AUTH, request_id: 2 }, encodeBody({ proof: proofOf(info.auth) })));
  const a = await next(2);
  for (let i = 0; i < 500 && !closed && a.h.status !== Status.OK; i++) await Bun.sleep(2);
  return { status: a.h.status, closed, challenge: info.auth.challenge, conn };
}

test("a wrong proof, or one replayed from an earlier connection, is NOT_AUTHENTICATED and disconnected", async () => {
  await keyed();
  const nonce = new Uint8Array(randomBytes(16));
  const good = await rawAuth(nonce, (ch) => requesterProof(SERVER, ch.challenge, nonce, "client", "raw"));
  expect(good.status).toBe(Status.OK);
  good.conn.close();
  const wrong = await rawAuth(nonce, (ch) => requesterProof(OTHER, ch.challenge, nonce, "client", "raw"));
  expect([wrong.status, wrong.closed]).toEqual([Status.NOT_AUTHENTICATED, true]);
  // The proof of the good exchange answers its challenge, not a new one.
  const replay = await rawAuth(nonce, () => requesterProof(SERVER, good.challenge, nonce, "client", "raw"));
  expect([replay.status, replay.closed]).toEqual([Status.NOT_AUTHENTICATED, true]);
  // Bound to the HELLO's role: a proof made for "client" does not admit a "toma" HELLO's claim.
  const renamed = await rawAuth(nonce, (ch) => requesterProof(SERVER, ch.challenge, nonce, "toma", "raw"));
  expect(renamed.status).toBe(Status.NOT_AUTHENTICATED);
  // Bound to the key kind HELLO named: a HELLO that names the server key cannot be answered with
  // a client key's proof (nor pass for one).
  const client = await rawAuth(nonce, (ch) => requesterProof(CLIENT, ch.challenge, nonce, "client", "raw"));
  expect(client.status).toBe(Status.NOT_AUTHENTICATED);
  expect(h!.logs.filter((l) => l.level === "warn" && /failed the cluster key check/.test(String(l.fields?.reason))).length).toBe(4);
  const s = await h!.session();
  expect(s.info.drives.length).toBe(1);
});

test("a client-key requester is served as a client whatever role it names: no metadata, no FENCE, fenced I/O", async () => {
  const d = await memoryDrive(16);
  h = await startTarget([d], { cluster_key: KEY, fencing: true });
  const drive = uuidBytes(d);
  // The real TOMA's connection, which a client host must not be able to close by naming it.
  const toma = await h.toma();
  const fake = await openSession(h.env, h.address, { version: 1, role: "toma", name: "test-toma" }, { cluster_key: CLIENT, client_id: 9 });
  expect(fake.info.drives.length).toBe(1); // admitted, as a client
  expect(h.logs.some((l) => l.msg.includes("served as a client") && l.fields?.named === "toma")).toBe(true);
  const refused = async (p: Promise<unknown>) => {
    const e = await p.then(() => null, (x) => x);
    expect(e?.status).toBe(Status.REFUSED);
    return (e as Error).message;
  };
  expect(await refused(fake.metaWrite(drive, 1_000_000, new Uint8Array([1])))).toMatch(/TOMA or admin connection only/);
  expect(await refused(fake.metaRead(drive))).toMatch(/TOMA or admin connection only/);
  expect(await refused(fake.claim(drive, "11111111-2222-4333-8444-555555555555"))).toMatch(/TOMA or admin connection only/);
  expect(await refused(fake.fence(drive, { replace: true, set: [{ client_id: 9, min_generation: 0 }], remove: [] }))).toMatch(/TOMA connection only/);
  expect(await refused(fake.lockList(drive))).toMatch(/TOMA connection only/);
  expect(await refused(fake.read(drive, 0, new Uint8Array(512)))).toMatch(/client 9 is not registered/);
  // The TOMA's connection was not superseded, and it still sees the drive's metadata untouched.
  expect(toma.closed).toBe(false);
  expect((await toma.metaRead(drive)).generation).toBe(0);
  // Registered by the TOMA, the same client's I/O is served (fenced, not refused).
  await toma.fence(drive, { replace: false, set: [{ client_id: 9, min_generation: 0 }], remove: [] });
  await fake.write(drive, 0, pattern(3, 4096), false);
  fake.close();
});
