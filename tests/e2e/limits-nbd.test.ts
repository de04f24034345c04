/**
 * The client daemon's NBD export under clients that push as hard as the protocol lets them, with
 * raw sockets: one connection pipelining tens of thousands of WRITEs to a RAID1 volume without
 * waiting for a single reply (the NBD spec allows it; qemu-nbd and nbd-server answer them all by
 * reading the socket more slowly), and many connections that announce 32 MiB WRITEs and stall.
 * Every request is answered, nobody is disconnected, and the daemon's resident memory (from
 * /proc) stays bounded and comes back after the connections close. No timing is asserted.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { Cluster, socketOf } from "../support/cluster.ts";
import { Daemon, NVMESH, ok } from "../support/proc.ts";
import { countReplies, nbdGo, writeRequest } from "../support/raw-nbd.ts";
import { quietRss, RawSocket, rssSettles, sampleRss } from "../support/raw-socket.ts";

/** RSS a daemon may keep above its baseline after a burst: JIT code, heap growth, small pools. */
const KEPT_MIB = 24;

let c: Cluster;
let socket = "";
let pid = 0;
const CAPACITY = 128 * 1024 * 1024;

beforeAll(async () => {
  c = await new Cluster({ targets: 2, drive_size: "256M" }).start();
  await c.cli("volume", "create", "--name", "m1", "--capacity", "128M", "--raid-level", "1");
  socket = socketOf(await c.attach("m1"));
  pid = c.client!.proc.pid;
}, 120_000);

afterAll(async () => {
  await c?.destroy();
});

/** Sends `count` WRITEs of `size` bytes back to back, `batch` per socket write, never reading first. */
async function flood(sock: RawSocket, count: number, size: number, batch = 64): Promise<void> {
  const payload = new Uint8Array(size).fill(0x5a);
  for (let i = 0; i < count; i += batch) {
    const n = Math.min(batch, count - i);
    const reqs = new Uint8Array(n * (28 + size));
    for (let k = 0; k < n; k++) {
      const at = ((i + k) * size) % CAPACITY;
      reqs.set(writeRequest(i + k + 1, at, payload), k * (28 + size));
    }
    await sock.write(reqs);
  }
}

describe("NBD backpressure, not disconnection", () => {
  test("40,000 pipelined 16 KiB WRITEs to a RAID1 export are all answered; memory stays bounded and comes back", async () => {
    // Warm up first, so the baseline includes what the first I/O makes the daemon allocate for good.
    const warm = await nbdGo({ unix: socket }, "m1");
    const wr = countReplies(warm.sock);
    await flood(warm.sock, 256, 16384);
    while (wr.total < 256 && warm.sock.closeReason === null) await Bun.sleep(20);
    warm.sock.end();
    await warm.sock.closed;
    const baseline = await quietRss(pid);
    const N = 40_000;
    const { sock } = await nbdGo({ unix: socket }, "m1");
    const replies = countReplies(sock);
    const rss = sampleRss(pid);
    const sending = flood(sock, N, 16384).catch((e: Error) => e);
    while (replies.total < N && sock.closeReason === null) await Bun.sleep(50);
    const sent = await sending;
    rss.stop();
    const log = c.client!.output.slice(-2000);
    expect({ closed: sock.closeReason, sendError: sent instanceof Error ? sent.message : null, log: sock.closeReason ? log : "" }).toEqual({ closed: null, sendError: null, log: "" });
    expect({ total: replies.total, ok: replies.ok, errors: replies.errors, bad: replies.bad }).toEqual({ total: N, ok: N, errors: 0, bad: null });
    sock.end();
    await sock.closed;
    const after = await rssSettles(pid, baseline + KEPT_MIB);
    console.log(`pipelined 16 KiB writes x${N}: RSS baseline ${baseline.toFixed(0)} MiB, peak ${rss.peak.toFixed(0)} MiB, after close ${after.toFixed(0)} MiB`);
    // In flight: 128 requests of 16 KiB (a few MiB, bounded by the connection's 64 MiB of payload),
    // plus the volume's sessions below; the rest is garbage the GC has not collected yet.
    expect(rss.peak - baseline).toBeLessThan(128);
    expect(after).toBeLessThanOrEqual(baseline + KEPT_MIB);
  }, 300_000);
});

describe("NBD payload memory is bounded per daemon", () => {
  test("40 connections each announcing a 32 MiB WRITE, sending half of it and stalling: RSS bounded, returned after close", async () => {
    const baseline = await quietRss(pid);
    const conns: RawSocket[] = [];
    const rss = sampleRss(pid);
    const data = new Uint8Array(32 * 1024 * 1024).fill(7);
    for (let i = 0; i < 40; i++) {
      const { sock } = await nbdGo({ unix: socket }, "m1");
      // The header and the first 16 MiB of the data: then nothing more.
      await sock.write(writeRequest(1, 0, data).subarray(0, 28 + 16 * 1024 * 1024));
      conns.push(sock);
    }
    await Bun.sleep(1000);
    rss.stop();
    const during = rss.peak;
    // A healthy connection still gets through while they stall.
    const ok = await nbdGo({ unix: socket }, "m1");
    const r = countReplies(ok.sock);
    await ok.sock.write(writeRequest(9, 4096, new Uint8Array(4096).fill(1)));
    while (r.total < 1 && ok.sock.closeReason === null) await Bun.sleep(20);
    expect({ total: r.total, ok: r.ok }).toEqual({ total: 1, ok: 1 });
    ok.sock.end();
    for (const s of conns) s.terminate();
    const after = await rssSettles(pid, baseline + KEPT_MIB);
    console.log(`stalled 32 MiB writes x40: RSS baseline ${baseline.toFixed(0)} MiB, peak ${during.toFixed(0)} MiB, after close ${after.toFixed(0)} MiB`);
    // Data arrives into 1 MiB pieces written as they fill: stalled writes hold next to nothing.
    // What is in flight meanwhile is bounded by the daemon's payload budget (128 MiB); written
    // pieces beyond the pool's 16 MiB are garbage until the GC runs. Without the bounds: 40 × 32 MiB.
    expect(during - baseline).toBeLessThan(256);
    expect(after).toBeLessThanOrEqual(baseline + KEPT_MIB);
  }, 120_000);
});

describe("NBD handshakes are bounded in time and number", () => {
  const MAX = 8;
  let hs: Daemon;
  let hsSocket = "";

  beforeAll(async () => {
    const runDir = `${c.dir}/run-hs`;
    hs = new Daemon("client hs", [NVMESH, "client", "serve", "--run-dir", runDir, "-m", c.toma_addr, "--name", "hs", "--handshake-timeout", "2s", "--max-handshakes", String(MAX)], c.keyEnv);
    await hs.waitFor(/client ready/);
    const out = await ok([NVMESH, "client", "attach", "--volume", "m1", "--run-dir", runDir], { env: c.keyEnv });
    hsSocket = socketOf(/(nbd\+unix:\/\/\S+)/.exec(out)![1]!);
  }, 60_000);

  afterAll(async () => {
    await hs?.stop("SIGKILL");
  });

  const closedWithin = (sock: RawSocket, ms: number) => Promise.race([sock.closed, Bun.sleep(ms).then(() => "still open")]);

  test("a client that never finishes its handshake is closed after the deadline (--handshake-timeout 2s)", async () => {
    const silent = await RawSocket.connect({ unix: hsSocket });
    await silent.read(18); // the greeting; then nothing
    expect(await closedWithin(silent, 30_000)).not.toBe("still open");
    await hs.waitFor(/handshake not finished within 2000 ms/, 5000);
  }, 60_000);

  test(`beyond ${MAX} connections in their handshake new ones are refused; a connection in transmission keeps working`, async () => {
    const established = await nbdGo({ unix: hsSocket }, "m1");
    const replies = countReplies(established.sock);
    const held: RawSocket[] = [];
    for (let i = 0; i < MAX; i++) {
      const h = await RawSocket.connect({ unix: hsSocket });
      await h.read(18); // admitted: it got the greeting
      held.push(h);
    }
    // Closed at once: Bun may even report the close as a failed connect.
    const extra = await RawSocket.connect({ unix: hsSocket }).then(
      (x) => closedWithin(x, 20_000),
      (e: Error) => `refused: ${e.message}`,
    );
    expect(extra).not.toBe("still open");
    await hs.waitFor(/refusing connection: too many unauthenticated connections .*port=nbd/, 5000);
    await established.sock.write(writeRequest(1, 8192, new Uint8Array(4096).fill(3)));
    while (replies.total < 1 && established.sock.closeReason === null) await Bun.sleep(20);
    expect({ total: replies.total, ok: replies.ok }).toEqual({ total: 1, ok: 1 });
    for (const h of held) h.terminate();
    established.sock.end();
  }, 60_000);
});
