/**
 * The NBD client against a server nobody here wrote (nbdkit), against our own NbdServer, and
 * against servers that die or lie. A missing nbdkit fails the test with the command that installs it.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Subprocess } from "bun";
import { MemoryStore } from "../../src/engine/drive/memory-store.ts";
import type { Env, Logger } from "../../src/engine/env.ts";
import type { Conn, Listener } from "../../src/engine/net/conn.ts";
import { connectNbd, type NbdClient, NbdConnectionError, NbdRequestError } from "../../src/engine/nbd/client.ts";
import {
  NBD_FLAG_HAS_FLAGS,
  NBD_FLAG_SEND_FLUSH,
  NBD_FLAG_SEND_TRIM,
  NBD_FLAG_SEND_WRITE_ZEROES,
  NBD_SIMPLE_REPLY_MAGIC,
  REQUEST_HEADER_BYTES,
} from "../../src/engine/nbd/constants.ts";
import { ExportRegistry } from "../../src/engine/nbd/exports.ts";
import { Handshake } from "../../src/engine/nbd/handshake.ts";
import { NbdServer } from "../../src/engine/nbd/server.ts";
import { memConnPair } from "../../src/engine/nbd/test-kit.ts";
import { realEnv } from "../../src/engine/runtime/real-env.ts";

const MiB = 1024 * 1024;
const EXPORT_BYTES = 64 * MiB;

const quiet: Logger = { debug: () => {}, info: () => {}, warn: () => {}, error: () => {} };
const env = realEnv("nbd-client-test", quiet);

let dir = "";
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "nvmesh-nbd-client-"));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function random(n: number): Uint8Array {
  const b = new Uint8Array(n);
  env.random.fill(b);
  return b;
}

/** Never skips: without nbdkit the test fails and says how to get it. */
function nbdkitPath(): string {
  const path = Bun.which("nbdkit") ?? Bun.which("nbdkit", { PATH: "/usr/sbin:/sbin:/usr/bin:/bin" });
  if (!path) throw new Error("nbdkit is not installed; install it with: apt-get install -y nbdkit");
  return path;
}

let nbdkitCount = 0;
/** Starts `nbdkit -f -U SOCK ARGS...` and resolves once its socket exists. */
async function startNbdkit(args: string[]): Promise<{ address: string; proc: Subprocess; stop: () => Promise<void> }> {
  const sock = join(dir, `nbdkit-${nbdkitCount++}.sock`);
  const proc = Bun.spawn([nbdkitPath(), "-f", "--exit-with-parent", "-U", sock, ...args], {
    stdin: "ignore",
    stdout: "ignore",
    stderr: "pipe",
  });
  for (let i = 0; !existsSync(sock); i++) {
    if (proc.exitCode !== null || i > 200) {
      proc.kill(9);
      throw new Error(`nbdkit ${args.join(" ")} did not start: ${await new Response(proc.stderr).text()}`);
    }
    await Bun.sleep(25);
  }
  return {
    address: `unix:${sock}`,
    proc,
    stop: async () => {
      proc.kill(9);
      await proc.exited;
    },
  };
}

/** Our own server on a unix socket, with server-side conns kept so a test can cut them. */
async function startOwnServer(
  exports: ExportRegistry,
): Promise<{ address: string; server: NbdServer; conns: Conn[]; listener: Listener }> {
  const server = new NbdServer(env, exports);
  const conns: Conn[] = [];
  const address = `unix:${dir}/own-${nbdkitCount++}.sock`;
  const listener = await env.net.listen(address, (c) => {
    conns.push(c);
    server.handle(c);
  });
  return { address, server, conns, listener };
}

function expectEqualBytes(actual: Uint8Array, expected: Uint8Array): void {
  expect(actual.length).toBe(expected.length);
  // One comparison instead of per-byte expects keeps failures readable for MiB-sized buffers.
  expect(Buffer.compare(actual, expected)).toBe(0);
}

/** Rejection of p, or a failure if p resolves. */
async function rejection(p: Promise<unknown>): Promise<Error> {
  try {
    await p;
  } catch (e) {
    return e as Error;
  }
  throw new Error("expected the promise to reject");
}

/** The same round trips against any server offering a 64 MiB writable export. */
function roundTrips(name: string, open: () => Promise<NbdClient>): void {
  test(`${name}: handshake reports size and transmission flags`, async () => {
    const c = await open();
    expect(c.size_bytes).toBe(EXPORT_BYTES);
    expect(c.flags & NBD_FLAG_HAS_FLAGS).toBeTruthy();
    expect(c.flags & NBD_FLAG_SEND_FLUSH).toBeTruthy();
    expect(c.flags & NBD_FLAG_SEND_TRIM).toBeTruthy();
    expect(c.flags & NBD_FLAG_SEND_WRITE_ZEROES).toBeTruthy();
    await c.close();
  });

  test(`${name}: write/read round trips: 4 KiB, 1 MiB, unaligned, last byte, FUA`, async () => {
    const c = await open();
    const cases: [number, number][] = [
      [0, 4096],
      [MiB, MiB],
      [12345, 7777],
      [3 * MiB + 1, 1],
      [EXPORT_BYTES - 1, 1],
      [EXPORT_BYTES - 5000, 5000],
    ];
    for (const [offset, length] of cases) {
      const data = random(length);
      await c.write(offset, data, offset % 2 === 1);
      expectEqualBytes(await c.read(offset, length), data);
    }
    // readInto fills a window of a larger buffer and nothing around it.
    const big = new Uint8Array(10000).fill(0xee);
    await c.readInto(12345, big.subarray(100, 100 + 7777));
    expect(big[99]).toBe(0xee);
    expect(big[100 + 7777]).toBe(0xee);
    await c.close();
  });

  test(`${name}: 200 pipelined random writes, then pipelined reads verify`, async () => {
    const c = await open();
    // Non-overlapping slots: pipelined writes to the same bytes have no defined order.
    const slot_bytes = 64 * 1024;
    const slots = [...Array(EXPORT_BYTES / slot_bytes).keys()].sort(() => env.random.u32() - 0x80000000).slice(0, 200);
    const writes = slots.map((s) => {
      const length = 1 + (env.random.u32() % slot_bytes);
      const offset = s * slot_bytes + (env.random.u32() % (slot_bytes - length + 1));
      return { offset, data: random(length) };
    });
    await Promise.all(writes.map((w) => c.write(w.offset, w.data)));
    const back = await Promise.all(writes.map((w) => c.read(w.offset, w.data.length)));
    writes.forEach((w, i) => expectEqualBytes(back[i]!, w.data));
    await c.flush();
    await c.close();
  });

  test(`${name}: trim and writeZeroes read back zeroes`, async () => {
    const c = await open();
    await c.write(8 * MiB, random(2 * MiB));
    await c.writeZeroes(8 * MiB + 100, 300_000, true);
    expectEqualBytes(await c.read(8 * MiB + 100, 300_000), new Uint8Array(300_000));
    await c.trim(9 * MiB, MiB);
    // Trimmed contents are unspecified by NBD; both servers here free RAM and read zeroes.
    expectEqualBytes(await c.read(9 * MiB, MiB), new Uint8Array(MiB));
    await c.flush();
    await c.close();
  });

  test(`${name}: an out-of-range read is refused and the connection stays usable`, async () => {
    const c = await open();
    const e = await rejection(c.read(EXPORT_BYTES - 100, 200));
    expect(e).toBeInstanceOf(NbdRequestError);
    expect((e as NbdRequestError).code).toBe("EINVAL");
    expect(e.message).toContain("EINVAL");
    expect(await rejection(c.read(-1, 10))).toBeInstanceOf(NbdRequestError); // refused before the wire
    const data = random(512);
    await c.write(0, data);
    expectEqualBytes(await c.read(0, 512), data);
    await c.close();
  });
}

describe("nbd client against nbdkit", () => {
  let kit: Awaited<ReturnType<typeof startNbdkit>>;
  beforeAll(async () => {
    kit = await startNbdkit(["memory", `${EXPORT_BYTES}`]);
  });
  afterAll(async () => await kit?.stop());

  roundTrips("nbdkit memory", () => connectNbd(env, kit.address, ""));

  test("an unknown export name is refused with a clear error", async () => {
    const strict = await startNbdkit([
      "--filter=exportname",
      "memory",
      `${MiB}`,
      "exportname=disk",
      "exportname-strict=true",
    ]);
    try {
      const ok = await connectNbd(env, strict.address, "disk");
      expect(ok.size_bytes).toBe(MiB);
      await ok.close();
      const e = await rejection(connectNbd(env, strict.address, "no-such-disk"));
      expect(e).toBeInstanceOf(NbdConnectionError);
      expect(e.message).toContain("'no-such-disk'");
      expect(e.message).toMatch(/NBD_REP_ERR_\w+/);
    } finally {
      await strict.stop();
    }
  });

  test("killing nbdkit mid-request rejects every pending request promptly", async () => {
    const slow = await startNbdkit(["--filter=delay", "memory", `${MiB}`, "rdelay=30"]);
    const c = await connectNbd(env, slow.address, "");
    const reads = Array.from({ length: 8 }, (_, i) => rejection(c.read(i * 4096, 4096)));
    await Bun.sleep(100);
    expect(c.inflight_count).toBe(8);
    const t0 = performance.now();
    slow.proc.kill(9);
    const errors = await Promise.all(reads);
    expect(performance.now() - t0).toBeLessThan(2000);
    for (const e of errors) {
      expect(e).toBeInstanceOf(NbdConnectionError);
      expect(e.message).toContain("lost");
    }
    // Later requests fail at once with the same cause.
    expect((await rejection(c.read(0, 1))).message).toContain("lost");
    await slow.stop();
  });
});

describe("nbd client against our NbdServer", () => {
  const exports = new ExportRegistry();
  let own: Awaited<ReturnType<typeof startOwnServer>>;
  beforeAll(async () => {
    exports.add("vol", { store: new MemoryStore(EXPORT_BYTES) });
    own = await startOwnServer(exports);
  });
  afterAll(async () => {
    await own.server.close();
    own.listener.close();
  });

  roundTrips("NbdServer", () => connectNbd(env, own.address, "vol"));

  test("an unknown export name is refused with NBD_REP_ERR_UNKNOWN naming the export", async () => {
    const e = await rejection(connectNbd(env, own.address, "nope"));
    expect(e).toBeInstanceOf(NbdConnectionError);
    expect((e as NbdConnectionError).code).toBe("NBD_REP_ERR_UNKNOWN");
    expect(e.message).toContain("export 'nope'");
  });

  test("writes past the end fail with ENOSPC; read-only exports refuse writes locally with EPERM", async () => {
    const c = await connectNbd(env, own.address, "vol");
    expect((await rejection(c.write(EXPORT_BYTES - 1, new Uint8Array(2)))) as NbdRequestError).toMatchObject({
      code: "ENOSPC",
    });
    await c.close();
    exports.add("ro", { store: new MemoryStore(MiB), read_only: true });
    const ro = await connectNbd(env, own.address, "ro");
    expect((await rejection(ro.write(0, new Uint8Array(1)))) as NbdRequestError).toMatchObject({ code: "EPERM" });
    expect((await ro.read(0, 4)).length).toBe(4);
    await ro.close();
  });

  test("in-flight requests are bounded; the rest wait and complete", async () => {
    const c = await connectNbd(env, own.address, "vol", { max_inflight_requests: 4 });
    const writes = Array.from({ length: 50 }, (_, i) => c.write(i * 4096, new Uint8Array(4096).fill(i)));
    await Bun.sleep(0);
    expect(c.inflight_count).toBeLessThanOrEqual(4);
    await Promise.all(writes);
    for (let i = 0; i < 50; i += 7) expect((await c.read(i * 4096, 4096))[4095]).toBe(i);
    await c.close();
  });

  test("close() waits for requests in flight, then disconnects; later requests are refused", async () => {
    const c = await connectNbd(env, own.address, "vol");
    const w = c.write(0, random(MiB));
    await c.close();
    await w;
    expect((await rejection(c.read(0, 1))).message).toContain("closed");
  });

  test("the server dropping the connection mid-request rejects every pending request", async () => {
    // A store whose reads never finish stands for a server stuck in I/O when it dies.
    const hung = new MemoryStore(MiB);
    const release: (() => void)[] = [];
    hung.read = () => new Promise((r) => release.push(r));
    exports.add("hung", { store: hung });
    const c = await connectNbd(env, own.address, "hung");
    const reads = Array.from({ length: 5 }, () => rejection(c.read(0, 4096)));
    await Bun.sleep(20);
    const t0 = performance.now();
    for (const conn of own.conns) conn.close();
    const errors = await Promise.all(reads);
    expect(performance.now() - t0).toBeLessThan(1000);
    for (const e of errors) expect(e.message).toContain("lost");
    exports.remove("hung");
    for (const r of release) r(); // lets the server's session drain so afterAll can close it
  });
});

describe("nbd client against a misbehaving server (in memory)", () => {
  /**
   * An Env whose connect() returns the client side of an in-memory pair. MemConn drops bytes that
   * arrive before onData is set, so the server side starts a tick after connect() resolves.
   */
  function pairEnv(max_chunk_bytes: number, serve: (server: Conn) => void): Env {
    const [client, server] = memConnPair(max_chunk_bytes);
    const connect = async () => {
      setTimeout(() => serve(server), 0);
      return client;
    };
    return { ...env, net: { connect, listen: () => Promise.reject(new Error("not used")) } };
  }

  test("replies split into 3-byte chunks reassemble (NbdServer over memConnPair)", async () => {
    const exports = new ExportRegistry();
    exports.add("x", { store: new MemoryStore(MiB) });
    const nbd = new NbdServer(env, exports);
    const e = pairEnv(3, (server) => nbd.handle(server));
    const c = await connectNbd(e, "mem", "x");
    const data = random(10_000);
    await Promise.all([c.write(100, data), c.write(20_000, data)]);
    const [a, b] = await Promise.all([c.read(100, 10_000), c.read(20_000, 10_000)]);
    expectEqualBytes(a, data);
    expectEqualBytes(b, data);
    await c.close();
    await nbd.close();
  });

  test("a reply for an unknown cookie closes the connection with an error", async () => {
    const exports = new ExportRegistry();
    exports.add("x", { store: new MemoryStore(MiB) });
    let requests = 0;
    const e = pairEnv(1 << 20, (server) => {
      // Real handshake, then a forged reply to whatever request arrives.
      const hs = new Handshake(exports, (b) => server.send(b), { max_option_bytes: 65536, max_options: 16 });
      server.onData = (chunk) => {
        if (hs.outcome === null) return void hs.feed(chunk, 0);
        requests += chunk.length / REQUEST_HEADER_BYTES;
        const reply = new Uint8Array(16);
        const v = new DataView(reply.buffer);
        v.setUint32(0, NBD_SIMPLE_REPLY_MAGIC);
        v.setUint32(12, 0xdead);
        server.send(reply);
      };
      server.send(hs.greeting());
    });
    const c = await connectNbd(e, "mem", "x");
    const err = await rejection(c.read(0, 512));
    expect(requests).toBe(1);
    expect(err).toBeInstanceOf(NbdConnectionError);
    expect(err.message).toContain("unknown cookie");
    expect((await rejection(c.flush())).message).toContain("unknown cookie");
  });

  test("a server that is not NBD is refused at the greeting", async () => {
    const e = pairEnv(1 << 20, (server) => server.send(new TextEncoder().encode("SSH-2.0-OpenSSH_9.6\r\n")));
    const err = await rejection(connectNbd(e, "mem", "x"));
    expect(err.message).toContain("not an NBD server");
  });

  test("a server silent during the handshake times out", async () => {
    const e = pairEnv(1 << 20, () => {});
    const err = await rejection(connectNbd(e, "mem", "x", { handshake_timeout_ms: 50 }));
    expect(err.message).toContain("timed out");
  });
});
