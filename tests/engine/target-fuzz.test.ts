/**
 * Fuzzing the target's connection state machine (HELLO, AUTH, pipelined requests, the in-flight
 * bounds and the byte budget) with the byte streams a peer could send: valid frames, mutated ones
 * and junk, cut at random points, with and without a cluster key, before and after
 * authentication, the socket paused and resumed as the target asks. The properties:
 *   - nothing throws out of the connection, and the target logs no internal error;
 *   - what the target sends is whole, valid frames (a clear answer, or a close with a reason);
 *   - once the peer is gone and its requests finished, nothing is held: no connection, no
 *     unauthenticated place, no budget byte;
 *   - the target stays usable: a real session writes and reads back afterwards.
 * A failure names its seed and the line that replays it (tests/support/fuzz.ts).
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import type { FormattedDrive } from "../../src/engine/drive/formatted-api.ts";
import { testEnv, type TestEnv } from "../../src/engine/nbd/test-kit.ts";
import { linkPair } from "../../src/engine/net/pipe.ts";
import { TargetService } from "../../src/engine/target/service.ts";
import { type ClusterKey, requesterProof } from "../../src/engine/wire/cluster-key.ts";
import { decodeBody, encodeBody, isInvalid, TargetInfo } from "../../src/engine/wire/control.ts";
import { encodeFrame, emptyHeader, FrameDecoder, type Header, Op } from "../../src/engine/wire/header.ts";
import { sessionOver } from "../../src/engine/wire/session.ts";
import { concat, expectReached, forEachSeed, FuzzConn, type Rng, seeds, settle } from "../support/fuzz.ts";
import { randomHeader, validRequestHeader } from "../support/fuzz-frames.ts";
import { dataBytes, memoryDrive, uuidBytes } from "./target-fixture.ts";

const SEEDS = seeds(300);
const FILE = "tests/engine/target-fuzz.test.ts";
const KEY = new Uint8Array(32).fill(7);
/** The server key as a requester holds it: every role may be claimed with it. */
const HELD: ClusterKey = { kind: "server", key: KEY };

let drive: FormattedDrive;
let env: TestEnv;
let open: TargetService;
let keyed: TargetService;

beforeAll(async () => {
  drive = await memoryDrive();
  env = testEnv();
  // Small bounds, so that the fuzz reaches them: 4 requests, a 1 MiB budget.
  open = new TargetService(env, { name: "open", drives: [drive], max_inflight_per_conn: 4, payload_budget_bytes: 1 << 20, preauth: { max_unauthenticated: 3 } });
  keyed = new TargetService(env, { name: "keyed", drives: [drive], max_inflight_per_conn: 4, payload_budget_bytes: 1 << 20, cluster_key: KEY, preauth: { max_unauthenticated: 3 } });
});

afterAll(() => {
  open.closeAll();
  keyed.closeAll();
});

function hello(rng: Rng, role: "client" | "toma" | "admin", nonce: Uint8Array | null): Uint8Array {
  const body = { version: 1, role, name: "fuzz", ...(nonce ? { nonce } : {}) };
  return encodeFrame({ ...emptyHeader(), opcode: Op.HELLO, request_id: 1 }, rng.chance(0.9) ? encodeBody(body) : rng.mutate(encodeBody(body)));
}

/**
 * Requests as a peer could pipeline them after HELLO: mostly frames that pass the header checks
 * (wrong for their op at times), and, at a rate drawn per seed, mutated frames and junk, which
 * close the connection: a stream that always broke early would never reach the deep paths.
 */
function requests(rng: Rng): Uint8Array {
  const target = { uuid: uuidBytes(drive), span: dataBytes(drive) };
  const broken = rng.pick([0, 0.01, 0.05, 0.3]);
  const parts: Uint8Array[] = [];
  for (let i = 1 + rng.int(60); i > 0; i--) {
    if (rng.chance(broken)) {
      parts.push(rng.chance(0.5) ? rng.mutate(encodeFrame(randomHeader(rng, target), rng.bytes(rng.int(100)))) : rng.bytes(rng.int(100)));
      continue;
    }
    const h = validRequestHeader(rng, target);
    // Now and then a full 4 MiB WRITE (the budget's and the direct sink's paths); mostly small ones.
    if (h.opcode === Op.WRITE && h.length > 256 * 1024 && !rng.chance(0.03)) h.length = rng.int(256 * 1024);
    const n = h.opcode === Op.WRITE ? h.length : rng.chance(0.9) ? 0 : rng.int(200);
    parts.push(encodeFrame(h, h.opcode === Op.WRITE ? new Uint8Array(n).fill(rng.int(256)) : rng.bytes(n)));
  }
  return concat(parts);
}

/** Frames in what the target sent; a string if they are not whole valid frames. */
function answers(sent: Uint8Array[]): Header[] | string {
  const out: Header[] = [];
  let bad: string | null = null;
  const d = new FrameDecoder(
    (h) => out.push(h),
    (why) => (bad = why),
  );
  for (const s of sent) d.push(s);
  return bad ?? out;
}

/** The challenge in the target's answer to HELLO, if it sent one. */
function challengeOf(sent: Uint8Array[]): Uint8Array | null {
  let found: Uint8Array | null = null;
  const d = new FrameDecoder(
    (h, payload) => {
      if (h.opcode !== Op.HELLO) return;
      const info = decodeBody(TargetInfo, payload);
      if (!isInvalid(info) && info.auth) found = info.auth.challenge;
    },
    () => {},
  );
  for (const s of sent) d.push(s);
  return found;
}

describe("the target connection state machine", () => {
  test("random streams, cut at random points: no throw, valid answers, nothing held after, target usable", async () => {
    // What the fuzz reached, so that a generator that stopped reaching the deep paths shows.
    const reached = { answered_ok_data: 0, authenticated_keyed: 0, paused: 0, closed_by_target: 0 };
    await forEachSeed(FILE, SEEDS, async (rng) => {
      const withKey = rng.chance(0.5);
      const service = withKey ? keyed : open;
      const conn = new FuzzConn();
      service.handle(conn);
      const nonce = rng.bytes(16);
      const role = rng.pick(["client", "toma", "admin"] as const);
      if (rng.chance(0.8)) {
        await conn.deliverSplit(rng, hello(rng, role, withKey ? nonce : null));
        await settle();
        const challenge = challengeOf(conn.sent);
        if (withKey && challenge !== null && rng.chance(0.7)) {
          // The right proof half the time: the post-authentication paths of a keyed target.
          const proof = rng.chance(0.8) ? requesterProof(HELD, challenge, nonce, role, "fuzz") : rng.bytes(32);
          await conn.deliverSplit(rng, encodeFrame({ ...emptyHeader(), opcode: Op.AUTH, request_id: 2 }, encodeBody({ proof })));
          await settle();
        }
      }
      await conn.deliverSplit(rng, requests(rng));
      await settle(5);
      if (rng.chance(0.3)) env.fireTimers(); // the authentication deadline, the writeback
      await settle();
      expect(conn.thrown).toEqual([]);
      const a = answers(conn.sent);
      if (typeof a === "string") throw new Error(`the target sent a malformed frame: ${a}`);
      reached.answered_ok_data += a.filter((h) => (h.opcode === Op.READ || h.opcode === Op.WRITE) && h.status === 0).length;
      if (withKey && a.some((h) => h.opcode === Op.AUTH && h.status === 0)) reached.authenticated_keyed++;
      if (conn.pausedEver) reached.paused++;
      if (conn.closed) reached.closed_by_target++;
      conn.peerCloses();
      for (let i = 0; i < 50 && (service.connectionCount > 0 || service.payloadBytesInFlight > 0); i++) await settle();
      expect({ conns: service.connectionCount, unauthenticated: service.unauthenticatedCount, budget: service.payloadBytesInFlight }).toEqual({
        conns: 0,
        unauthenticated: 0,
        budget: 0,
      });
      const internal = env.logged.filter((l) => l.level === "error" && /internal error|invariant/.test(`${l.msg} ${JSON.stringify(l.fields)}`));
      expect(internal).toEqual([]);
    });
    expectReached("target fuzz", reached, SEEDS);
    // Usable after all of it: a real session, over an in-process connection.
    for (const service of [open, keyed]) {
      const [mine, theirs] = linkPair();
      service.handleLink(theirs);
      const s = await sessionOver(env, mine, "in-process", { version: 1, role: "toma", name: "after-fuzz" }, { cluster_key: service === keyed ? HELD : null });
      const data = new Uint8Array(4096).fill(0x42);
      await s.write(uuidBytes(drive), 8192, data, false);
      const back = new Uint8Array(4096);
      await s.read(uuidBytes(drive), 8192, back);
      expect(back).toEqual(data);
      s.close();
    }
  }, 120_000);
});
