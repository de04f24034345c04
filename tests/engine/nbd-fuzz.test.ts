/**
 * Fuzzing the NBD server as a client could drive it: client flags, options (valid, malformed,
 * oversized, unknown) and then requests of every type with random flags, ranges and lengths, WRITE
 * data that is whole, cut short or longer than announced, junk, all cut at random points, with
 * the socket paused and resumed as the server asks and a store that completes in random order.
 * Small bounds (4 requests, 2 MiB per connection, a 3 MiB budget shared by two connections at
 * once) so that the fuzz reaches them. The properties:
 *   - nothing throws out of a connection and the server logs no internal error;
 *   - once the clients are gone and their requests finished, nothing is held: no session, no
 *     handshake place, no budget byte;
 *   - the server stays usable: a client handshakes, writes and reads back afterwards.
 * A failure names its seed and the line that replays it (tests/support/fuzz.ts).
 */
import { describe, expect, test } from "bun:test";
import { MemoryStore } from "../../src/engine/drive/memory-store.ts";
import type { DriveStore } from "../../src/engine/drive/store.ts";
import {
  NBD_CMD_DISC,
  NBD_CMD_FLUSH,
  NBD_CMD_READ,
  NBD_CMD_TRIM,
  NBD_CMD_WRITE,
  NBD_CMD_WRITE_ZEROES,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_OPT_ABORT,
  NBD_OPT_EXPORT_NAME,
  NBD_OPT_GO,
  NBD_OPT_INFO,
  NBD_OPT_LIST,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_OPTS_MAGIC,
} from "../../src/engine/nbd/constants.ts";
import { ExportRegistry } from "../../src/engine/nbd/exports.ts";
import { encodeRequest } from "../../src/engine/nbd/request.ts";
import { NbdServer } from "../../src/engine/nbd/server.ts";
import { memConnPair, RawNbdClient, testEnv } from "../../src/engine/nbd/test-kit.ts";
import { concat, expectReached, forEachSeed, FuzzConn, type Rng, seeds, settle } from "../support/fuzz.ts";

const SEEDS = seeds(200);
const FILE = "tests/engine/nbd-fuzz.test.ts";
const SIZE = 4 * 1024 * 1024;

/** A MemoryStore whose operations complete a few turns later, in an order the seed decides. */
class ShuffledStore implements DriveStore {
  private readonly inner = new MemoryStore(SIZE);
  constructor(private readonly rng: () => number) {}
  get size_bytes() {
    return SIZE;
  }
  get describe() {
    return "shuffled";
  }
  private async later<T>(fn: () => Promise<T>): Promise<T> {
    await settle(this.rng() % 3);
    return await fn();
  }
  read(o: number, d: Uint8Array) {
    return this.later(() => this.inner.read(o, d));
  }
  write(o: number, s: Uint8Array, fua: boolean) {
    return this.later(() => this.inner.write(o, s, fua));
  }
  flush() {
    return this.later(() => this.inner.flush());
  }
  writeZeroes(o: number, l: number, fua: boolean) {
    return this.later(() => this.inner.writeZeroes(o, l, fua));
  }
  trim(o: number, l: number) {
    return this.later(() => this.inner.trim(o, l));
  }
  close() {
    return this.inner.close();
  }
}

function u32(n: number): number[] {
  return [(n >>> 24) & 0xff, (n >>> 16) & 0xff, (n >>> 8) & 0xff, n & 0xff];
}

function option(opt: number, data: Uint8Array, lengthField = data.length): Uint8Array {
  const b = new Uint8Array(16 + data.length);
  const v = new DataView(b.buffer);
  v.setBigUint64(0, NBD_OPTS_MAGIC);
  v.setUint32(8, opt);
  v.setUint32(12, lengthField >>> 0);
  b.set(data, 16);
  return b;
}

function goData(rng: Rng, name: string): Uint8Array {
  const n = new TextEncoder().encode(name);
  const count = rng.int(3);
  return new Uint8Array([...u32(n.length), ...n, 0, count, ...Array.from({ length: 2 * count }, () => rng.int(4))]);
}

/** Client flags and options: mostly plausible, ending (usually) in GO or EXPORT_NAME of "disk". */
function handshake(rng: Rng): Uint8Array {
  const parts: Uint8Array[] = [new Uint8Array(u32(rng.chance(0.95) ? NBD_FLAG_C_FIXED_NEWSTYLE | (rng.chance(0.5) ? NBD_FLAG_C_NO_ZEROES : 0) : rng.u32()))];
  for (let i = rng.int(5); i > 0; i--) {
    const k = rng.int(8);
    if (k === 0) parts.push(option(NBD_OPT_LIST, rng.chance(0.8) ? new Uint8Array(0) : rng.bytes(4)));
    else if (k === 1) parts.push(option(NBD_OPT_INFO, rng.chance(0.7) ? goData(rng, rng.pick(["disk", "nope", ""])) : rng.bytes(rng.int(20))));
    else if (k === 2) parts.push(option(NBD_OPT_STRUCTURED_REPLY, new Uint8Array(0)));
    else if (k === 3) parts.push(option(rng.int(64), rng.bytes(rng.int(40))));
    else if (k === 4) parts.push(option(NBD_OPT_GO, rng.bytes(rng.int(30)))); // malformed GO: ERR_INVALID
    else if (k === 5) parts.push(option(rng.int(16), rng.bytes(8), rng.pick([64 * 1024 + 1, 0xffff_ffff]))); // oversized: closed
    else if (k === 6) parts.push(rng.mutate(option(NBD_OPT_INFO, goData(rng, "disk"))));
    else parts.push(rng.bytes(rng.int(24)));
  }
  const end = rng.int(10);
  if (end < 6) parts.push(option(NBD_OPT_GO, goData(rng, rng.chance(0.9) ? "disk" : "nope")));
  else if (end < 8) parts.push(option(NBD_OPT_EXPORT_NAME, new TextEncoder().encode(rng.chance(0.9) ? "disk" : "nope")));
  else if (end < 9) parts.push(option(NBD_OPT_ABORT, new Uint8Array(0)));
  return concat(parts);
}

const TYPES = [NBD_CMD_READ, NBD_CMD_WRITE, NBD_CMD_FLUSH, NBD_CMD_TRIM, NBD_CMD_WRITE_ZEROES];

/** Requests as a client could pipeline them; mostly valid, some wrong for their type, some junk. */
function requests(rng: Rng): Uint8Array {
  const parts: Uint8Array[] = [];
  const broken = rng.pick([0, 0.01, 0.1]);
  for (let i = 1 + rng.int(50); i > 0; i--) {
    if (rng.chance(broken)) {
      parts.push(rng.bytes(rng.int(40)));
      continue;
    }
    const type = rng.chance(0.95) ? rng.pick(TYPES) : rng.chance(0.5) ? NBD_CMD_DISC : rng.int(20);
    const flags = rng.chance(0.8) ? 0 : rng.int(32);
    const length = rng.chance(0.9) ? rng.int(rng.chance(0.9) ? 64 * 1024 : 3 * 1024 * 1024) : rng.pick([0, 32 * 1024 * 1024, 32 * 1024 * 1024 + 1, 0xffff_ffff]);
    const offset = rng.chance(0.9) ? rng.int(SIZE) : rng.pick([SIZE, 2 ** 52, 2 ** 53 - 1]);
    const req = { flags, type, cookie_hi: rng.u32(), cookie_lo: rng.u32(), offset, length };
    if (type === NBD_CMD_WRITE && length <= 3 * 1024 * 1024) {
      // The data: whole mostly; sometimes cut short (the next request's bytes are taken as data).
      const n = rng.chance(0.9) ? length : rng.int(length + 1);
      parts.push(encodeRequest(req, new Uint8Array(n).fill(rng.int(256))));
    } else {
      parts.push(encodeRequest(req));
    }
  }
  return concat(parts);
}

describe("the NBD server under random clients", () => {
  test("random handshakes and requests, cut at random points: no throw, nothing held after, server usable", async () => {
    const env = testEnv();
    const exports = new ExportRegistry();
    let storeRng = 1;
    const store = new ShuffledStore(() => (storeRng = (Math.imul(storeRng, 1103515245) + 12345) >>> 0) >>> 16);
    exports.add("disk", { store, description: "fuzzed" });
    const server = new NbdServer(env, exports, {
      max_inflight_requests: 4,
      max_inflight_bytes: 2 * 1024 * 1024,
      payload_budget_bytes: 3 * 1024 * 1024,
      max_handshakes: 2,
    });
    const reached = { transmission: 0, paused: 0, closed_by_server: 0 };
    await forEachSeed(FILE, SEEDS, async (rng, seed) => {
      storeRng = seed;
      // Two clients at once: they share the budget.
      const conns = [new FuzzConn(), new FuzzConn()];
      for (const c of conns) server.handle(c);
      await Promise.all(conns.map((c) => c.deliverSplit(rng, concat([handshake(rng), requests(rng)]))));
      await settle(5);
      if (rng.chance(0.2)) env.fireTimers(); // the handshake deadline, the pool trim
      await settle(3);
      for (const c of conns) {
        expect(c.thrown).toEqual([]);
        if (c.pausedEver) reached.paused++;
        if (c.closed) reached.closed_by_server++;
        if (c.sent.length > 2) reached.transmission++;
        c.peerCloses();
      }
      for (let i = 0; i < 100 && (server.connection_count > 0 || server.payload_bytes_in_flight > 0); i++) await settle();
      expect({ sessions: server.connection_count, handshakes: server.handshake_count, budget: server.payload_bytes_in_flight }).toEqual({ sessions: 0, handshakes: 0, budget: 0 });
      const internal = env.logged.filter((l) => l.level === "error");
      expect(internal).toEqual([]);
    });
    expectReached("nbd fuzz", reached, SEEDS);
    // Usable after all of it.
    const [c, s] = memConnPair(4096);
    server.handle(s);
    const client = new RawNbdClient(c);
    await client.greet();
    await client.go("disk");
    const data = new Uint8Array(70_000).fill(0x3c);
    client.request({ type: NBD_CMD_WRITE, cookie: 1, offset: 4096 }, data);
    expect((await client.reply()).error).toBe(0);
    client.request({ type: NBD_CMD_READ, cookie: 2, offset: 4096, length: data.length });
    expect((await client.reply(data.length)).data).toEqual(data);
    await server.close();
  }, 120_000);
});
