/**
 * The TOMA's management port against strangers, with raw sockets and the compiled binary: bodies
 * far above the limit, headers sent a byte at a time (slowloris), connections that send nothing,
 * more of them than the port admits, a wrong key. Each is answered or closed without the TOMA
 * holding more than a small request, and a key holder keeps working throughout. No timing is
 * asserted: the short deadline is a flag, and the tests wait for the close, not for a moment.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { tomaClient } from "../../src/toma/api-client.ts";
import { Cluster } from "../support/cluster.ts";
import { Daemon, NVMESH } from "../support/proc.ts";
import { hostPort, quietRss, RawSocket, rssSettles, sampleRss } from "../support/raw-socket.ts";

let c: Cluster;
let toma: Daemon;
let addr = "";
const CAP = 16;

beforeAll(async () => {
  c = new Cluster({ targets: 1, drive_size: "64M" });
  await c.formatDrives();
  await c.startTarget(0);
  toma = new Daemon("toma", [NVMESH, "toma", "run", "--listen", "127.0.0.1:0", "--target", c.target_addrs[0]!, "--auth-timeout", "2s", "--max-unauthenticated", String(CAP)], c.keyEnv);
  addr = (await toma.waitFor(/toma ready on (\S+)/, 30_000))[1]!;
}, 60_000);

afterAll(async () => {
  await toma?.stop("SIGKILL");
  await c?.destroy();
});

const keyHolder = () => tomaClient(addr, { key: c.key });

/** Resolves with the closing reason, or "still open" if the TOMA keeps it past give_up_ms. */
function closedWithin(sock: RawSocket, give_up_ms: number): Promise<string> {
  return Promise.race([sock.closed, Bun.sleep(give_up_ms).then(() => "still open")]);
}

/** Reads what the TOMA answered until it closed the connection (as text; "still open" if it did not). */
async function answerOf(sock: RawSocket): Promise<string> {
  const chunks: Uint8Array[] = [];
  sock.onData = (b) => chunks.push(b.slice());
  if ((await closedWithin(sock, 20_000)) === "still open") return "still open";
  return Buffer.concat(chunks).toString("latin1");
}

describe("the management API before authentication", () => {
  test("200 connections announce a 100 MB body without the key and send 1 MiB of it: 413 or refused, closed, nothing held", async () => {
    const pid = toma.proc.pid;
    const baseline = await quietRss(pid);
    const rss = sampleRss(pid);
    const junk = new Uint8Array(1024 * 1024).fill(0x41);
    const answers = await Promise.all(
      Array.from({ length: 200 }, async () => {
        const s = await RawSocket.connect(hostPort(addr));
        const answer = answerOf(s);
        await s.write(`POST /v1/volumes HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000000\r\n\r\n`).catch(() => {});
        await s.write(junk).catch(() => {});
        return await answer;
      }),
    );
    rss.stop();
    const after = await rssSettles(pid, baseline + 24);
    console.log(`200 oversized bodies: RSS baseline ${baseline.toFixed(0)} MiB, peak ${rss.peak.toFixed(0)} MiB, after ${after.toFixed(0)} MiB`);
    // Those admitted (the first CAP at most) are answered 413 from the header; the rest are refused
    // by the cap before anything is read. Every one is closed.
    const kinds = answers.map((a) => (a.startsWith("HTTP/1.1 413 ") ? "413" : a === "" ? "refused" : a.slice(0, 40)));
    expect(kinds.filter((k) => k !== "413" && k !== "refused")).toEqual([]);
    expect(kinds.filter((k) => k === "413").length).toBeGreaterThan(0);
    expect(rss.peak - baseline).toBeLessThan(48);
    expect(after).toBeLessThanOrEqual(baseline + 24);
    expect((await keyHolder().cluster()).ready).toBe(true);
  }, 60_000);

  test("a request head sent a byte every 200 ms (slowloris) is cut off by the deadline with 408", async () => {
    const s = await RawSocket.connect(hostPort(addr));
    const answer = answerOf(s);
    const head = "GET /v1/cluster HTTP/1.1\r\nHost: x\r\nX-Slow: " + "a".repeat(200);
    let open = true;
    void s.closed.then(() => (open = false));
    for (let i = 0; i < head.length && open; i++) {
      await s.write(head[i]!).catch(() => {});
      await Bun.sleep(200);
    }
    expect(open).toBe(false); // closed before it could finish: 200 bytes at 200 ms is 40 s
    expect(await answer).toStartWith("HTTP/1.1 408 ");
    await toma.waitFor(/closing management connection .*not authenticated within 2000 ms/, 5000);
  }, 60_000);

  test("a connection that sends nothing is closed after the deadline", async () => {
    const s = await RawSocket.connect(hostPort(addr));
    expect(await closedWithin(s, 30_000)).not.toBe("still open");
  }, 60_000);

  test("a request without a signature, or with a wrong one, is answered 401 and its connection closed", async () => {
    for (const auth of ["", "Authorization: Bearer 00ff\r\n", `Authorization: nvmesh-v1 server ${"0".repeat(32)} ${"0".repeat(64)}\r\n`]) {
      const s = await RawSocket.connect(hostPort(addr));
      const answer = answerOf(s);
      await s.write(`GET /v1/cluster HTTP/1.1\r\nHost: x\r\n${auth}\r\n`);
      expect(await answer).toStartWith("HTTP/1.1 401 ");
    }
  });

  test("a head above 16 KiB is answered 431 and closed; garbage is answered 400 and closed", async () => {
    for (const [bytes, status] of [
      [`GET /v1/cluster HTTP/1.1\r\nX-Big: ${"a".repeat(20_000)}\r\n\r\n`, 431],
      ["\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http at all\r\n\r\n", 400],
    ] as const) {
      const s = await RawSocket.connect(hostPort(addr));
      const answer = answerOf(s);
      await s.write(bytes).catch(() => {});
      expect(await answer).toStartWith(`HTTP/1.1 ${status} `);
    }
  });

  test(`beyond ${CAP} unauthenticated connections new ones are refused; a key holder keeps working`, async () => {
    const client = keyHolder();
    expect((await client.cluster()).ready).toBe(true);
    const held: RawSocket[] = [];
    for (let i = 0; i < CAP; i++) held.push(await RawSocket.connect(hostPort(addr)));
    await Bun.sleep(100); // connect resolves before the TOMA's accept has run
    const extra = await RawSocket.connect(hostPort(addr)).then(
      (x) => closedWithin(x, 20_000),
      (e: Error) => `refused: ${e.message}`,
    );
    expect(extra).not.toBe("still open");
    await toma.waitFor(/refusing connection: too many unauthenticated connections .*port=management API/, 5000);
    // The key holder's connection is authenticated: not counted, never refused.
    expect((await client.volumes()).length).toBe(0);
    for (const h of held) h.terminate();
  }, 60_000);
});
