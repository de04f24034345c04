/**
 * Fuzzing the decoders on the requesting side, which read what a server sends: the data-path
 * session (client daemon and TOMA → target) and the NBD client (verify → an export). The server
 * here answers with random frames: valid answers to the requests it saw, answers to requests
 * never made, wrong statuses and bodies, mutated frames and junk, cut at random points. The
 * properties: nothing throws out of the connection; every request settles (answered, or failed
 * with an error) once the connection is gone; a malformed stream closes the connection. A
 * failure names its seed and the line that replays it (tests/support/fuzz.ts).
 */
import { describe, expect, test } from "bun:test";
import type { Env } from "../../src/engine/env.ts";
import { connectNbd } from "../../src/engine/nbd/client.ts";
import { encodeOptionReply } from "../../src/engine/nbd/handshake.ts";
import {
  NBD_INFO_EXPORT,
  NBD_INIT_MAGIC,
  NBD_OPT_GO,
  NBD_OPTS_MAGIC,
  NBD_REP_ACK,
  NBD_REP_INFO,
  NBD_SIMPLE_REPLY_MAGIC,
} from "../../src/engine/nbd/constants.ts";
import { testEnv } from "../../src/engine/nbd/test-kit.ts";
import { encodeBody } from "../../src/engine/wire/control.ts";
import { encodeFrame, Flag, FrameDecoder, type Header, Op, Status } from "../../src/engine/wire/header.ts";
import { sessionOver } from "../../src/engine/wire/session.ts";
import { streamLink } from "../../src/engine/net/stream-link.ts";
import { concat, expectReached, forEachSeed, FuzzConn, type Rng, seeds, settle, splitRandomly } from "../support/fuzz.ts";
import { randomHeader } from "../support/fuzz-frames.ts";

const SEEDS = seeds(300);
const FILE = "tests/engine/requester-fuzz.test.ts";

/** A request's outcome, caught at once (a rejection nobody awaits yet must not go unhandled). */
type Outcome = { ok: true } | { ok: false; error: Error };
function track(p: Promise<unknown>): Promise<Outcome> {
  return p.then(
    () => ({ ok: true }),
    (e: unknown) => ({ ok: false, error: e as Error }),
  );
}
const STATUSES = Object.values(Status).filter((x): x is number => typeof x === "number");

/** The requests a session sent so far (headers), in order. */
function requestsIn(sent: Uint8Array[]): Header[] {
  const out: Header[] = [];
  const d = new FrameDecoder(
    (h) => out.push(h),
    () => {},
  );
  for (const s of sent) d.push(s);
  return out;
}

const UUID = "0f0e0d0c-0b0a-4908-8706-050403020100";
const targetInfo = { target_name: "t", version: "v", drives: [] };

/** A plausible or broken answer to request h. */
function answerTo(rng: Rng, h: Header): Uint8Array {
  const r: Header = { ...h, flags: h.flags | Flag.RESPONSE, status: rng.chance(0.8) ? Status.OK : rng.pick(STATUSES) };
  if (rng.chance(0.1)) r.request_id = rng.u32(); // an answer to nothing
  let body: Uint8Array;
  if (r.status !== Status.OK) body = rng.chance(0.8) ? encodeBody({ error: "fuzz" }) : rng.bytes(rng.int(20));
  else if (h.opcode === Op.READ) body = rng.bytes(rng.chance(0.9) ? h.length : rng.int(h.length + 2));
  else if (h.opcode === Op.HELLO || h.opcode === Op.LIST_DRIVES || h.opcode === Op.META_READ) {
    body = rng.chance(0.7) ? encodeBody(h.opcode === Op.HELLO ? targetInfo : h.opcode === Op.META_READ ? { generation: 1, payload: null } : []) : rng.mutate(encodeBody(targetInfo));
  } else body = rng.chance(0.9) ? new Uint8Array(0) : rng.bytes(rng.int(10));
  if (rng.chance(0.05)) r.generation = 2 ** 53; // a field out of range: the header is refused
  const frame = encodeFrame(r, body);
  return rng.chance(0.05) ? rng.mutate(frame) : frame;
}

describe("the data-path session reading a target's answers", () => {
  test("random answers: nothing throws, every request settles, the session ends cleanly", async () => {
    const env = testEnv();
    const reached = { hello_ok: 0, answered: 0, failed: 0 };
    await forEachSeed(FILE, SEEDS, async (rng) => {
      const conn = new FuzzConn();
      const opened = sessionOver(env, streamLink(conn), "fuzz", { version: 1, role: "client", name: "fuzz" }).then(
        (s) => s,
        () => null,
      );
      await settle();
      const helloReq = requestsIn(conn.sent)[0]!;
      for (const chunk of splitRandomly(rng, rng.chance(0.9) ? answerTo(rng, helloReq) : rng.bytes(rng.int(100)))) conn.deliver(chunk);
      await settle();
      const s = await Promise.race([opened, settle(5).then(() => "pending" as const)]);
      const pending: Promise<Outcome>[] = [];
      if (s !== null && s !== "pending") {
        reached.hello_ok++;
        const drive = new Uint8Array(16).fill(1);
        for (let i = rng.int(12); i > 0; i--) {
          const k = rng.int(5);
          const n = rng.int(70_000);
          pending.push(
            track(
              k === 0 ? s.read(drive, rng.int(1 << 20), new Uint8Array(n))
              : k === 1 ? s.write(drive, rng.int(1 << 20), new Uint8Array(n), rng.chance(0.5))
              : k === 2 ? s.listDrives()
              : k === 3 ? s.metaRead(drive)
              : s.lock(drive, 0, 65536),
            ),
          );
        }
        await settle();
        const seen = requestsIn(conn.sent).slice(1);
        const answers = concat([...seen.filter(() => rng.chance(0.9)).map((h) => answerTo(rng, h)), rng.chance(0.2) ? encodeFrame(randomHeader(rng)) : new Uint8Array(0)]);
        for (const chunk of splitRandomly(rng, answers)) conn.deliver(chunk);
        await settle(3);
      }
      conn.peerCloses();
      const results = await Promise.race([Promise.all(pending), settle(20).then(() => null)]);
      await opened;
      expect(conn.thrown).toEqual([]);
      if (results === null) throw new Error("a request never settled after the connection closed");
      for (const r of results) {
        if (r.ok) reached.answered++;
        else {
          reached.failed++;
          expect(r.error.message.length).toBeGreaterThan(0);
        }
      }
    });
    expectReached("session fuzz", reached, SEEDS);
  });
});

function u32(n: number): number[] {
  return [(n >>> 24) & 0xff, (n >>> 16) & 0xff, (n >>> 8) & 0xff, n & 0xff];
}

/** What a server sends for a successful NBD_OPT_GO of an export of `size` bytes. */
function goReplies(size: number): Uint8Array {
  const info = new Uint8Array(12);
  const v = new DataView(info.buffer);
  v.setUint16(0, NBD_INFO_EXPORT);
  v.setUint32(2, Math.floor(size / 2 ** 32));
  v.setUint32(6, size >>> 0);
  v.setUint16(10, 1 | 4 | 8);
  return concat([encodeOptionReply(NBD_OPT_GO, NBD_REP_INFO, info), encodeOptionReply(NBD_OPT_GO, NBD_REP_ACK)]);
}

function greeting(): Uint8Array {
  const g = new Uint8Array(18);
  const v = new DataView(g.buffer);
  v.setBigUint64(0, NBD_INIT_MAGIC);
  v.setBigUint64(8, NBD_OPTS_MAGIC);
  v.setUint16(16, 3);
  return g;
}

/** Simple replies to the cookies seen in the client's requests (28-byte headers, WRITE data skipped). */
function cookiesIn(sent: Uint8Array[]): { cookie: [number, number]; type: number; length: number }[] {
  const all = concat(sent);
  const out: { cookie: [number, number]; type: number; length: number }[] = [];
  // Skip the handshake: client flags (4) and one GO option (16 + its length).
  let at = 4;
  if (all.length < at + 16) return out;
  at += 16 + new DataView(all.buffer, all.byteOffset).getUint32(at + 12);
  const v = new DataView(all.buffer, all.byteOffset);
  while (at + 28 <= all.length) {
    if (v.getUint32(at) !== 0x25609513) break;
    const type = v.getUint16(at + 6);
    const length = v.getUint32(at + 24);
    out.push({ cookie: [v.getUint32(at + 8), v.getUint32(at + 12)], type, length });
    at += 28 + (type === 1 ? length : 0);
  }
  return out;
}

describe("the NBD client reading a server's replies", () => {
  test("random greetings, option replies and simple replies: nothing throws, every request settles", async () => {
    const base = testEnv();
    const reached = { connected: 0, answered: 0, failed: 0 };
    await forEachSeed(FILE, SEEDS, async (rng) => {
      const conn = new FuzzConn();
      const env: Env = { ...base, net: { connect: async () => conn, listen: () => Promise.reject(new Error("not used")) } };
      const connecting = connectNbd(env, "fuzz", "disk", { handshake_timeout_ms: 1000 }).then(
        (c) => c,
        () => null,
      );
      await settle();
      const size = rng.pick([1 << 20, 0, 513, 2 ** 53]);
      const server = rng.chance(0.8) ? concat([greeting(), goReplies(size)]) : rng.chance(0.5) ? rng.mutate(concat([greeting(), goReplies(size)])) : rng.bytes(rng.int(60));
      for (const chunk of splitRandomly(rng, server)) {
        conn.deliver(chunk);
        await settle(1);
      }
      const c = await Promise.race([connecting, settle(5).then(() => "pending" as const)]);
      const pending: Promise<Outcome>[] = [];
      if (c !== null && c !== "pending") {
        reached.connected++;
        for (let i = rng.int(8); i > 0; i--) {
          const n = 1 + rng.int(8192);
          const at = rng.int(1 << 19);
          pending.push(track(rng.chance(0.5) ? c.read(at, n) : c.write(at, new Uint8Array(n))));
        }
        await settle();
        const replies: Uint8Array[] = [];
        for (const r of cookiesIn(conn.sent)) {
          if (!rng.chance(0.9)) continue;
          const error = rng.chance(0.85) ? 0 : rng.int(200);
          const cookie = rng.chance(0.95) ? r.cookie : [rng.u32(), rng.u32()];
          const head = new Uint8Array([...u32(rng.chance(0.97) ? NBD_SIMPLE_REPLY_MAGIC : rng.u32()), ...u32(error), ...u32(cookie[0]!), ...u32(cookie[1]!)]);
          replies.push(head, r.type === 0 && error === 0 ? rng.bytes(rng.chance(0.9) ? r.length : rng.int(r.length + 1)) : new Uint8Array(0));
        }
        if (rng.chance(0.2)) replies.push(rng.bytes(rng.int(40)));
        for (const chunk of splitRandomly(rng, concat(replies))) conn.deliver(chunk);
        await settle(3);
      }
      conn.peerCloses();
      base.fireTimers();
      const results = await Promise.race([Promise.all(pending), settle(20).then(() => null)]);
      await connecting;
      expect(conn.thrown).toEqual([]);
      if (results === null) throw new Error("a request never settled after the connection closed");
      for (const r of results) {
        if (r.ok) reached.answered++;
        else reached.failed++;
      }
    });
    expectReached("nbd client fuzz", reached, SEEDS);
  });
});
