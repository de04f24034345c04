/**
 * BunConn.sendOwned over real TCP loopback: a large buffer the kernel does not take at once is
 * queued by reference (not copied) and handed back once written, in order, exactly once; never
 * after the connection ended. SendBatcher.pushOwned on top of it.
 */
import { afterEach, expect, test } from "bun:test";
import type { Conn } from "../../src/engine/net/conn.ts";
import { BunNetwork } from "../../src/engine/runtime/real-net.ts";
import { type CopyingConn, SendBatcher } from "../../src/engine/wire/send-batcher.ts";

const closers: (() => void)[] = [];
afterEach(() => {
  for (const c of closers.splice(0)) c();
});

async function pair(): Promise<[CopyingConn, Conn]> {
  const net = new BunNetwork();
  let accepted: (c: Conn) => void;
  const server = new Promise<Conn>((r) => (accepted = r));
  const l = await net.listen("127.0.0.1:0", (c) => accepted(c));
  closers.push(() => l.close());
  const a = (await net.connect(l.address)) as CopyingConn;
  const b = await server;
  closers.push(() => {
    a.close();
    b.close();
  });
  return [a, b];
}

function filled(n: number, seed: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i += 4096) b[i] = (seed + i / 4096) & 0xff;
  return b;
}

test("a large buffer is kept by reference until written, then given back once, in order", async () => {
  const [a, b] = await pair();
  expect(typeof a.sendOwned).toBe("function");
  const received: Uint8Array[] = [];
  let bytes = 0;
  b.onData = (chunk) => {
    received.push(chunk.slice());
    bytes += chunk.length;
  };
  b.pause();
  const N = 48; // 48 MiB: more than the kernel's buffers on both sides hold
  const bufs = Array.from({ length: N }, (_, i) => filled(1024 * 1024, i));
  const given: Uint8Array[] = [];
  for (const buf of bufs) expect(a.sendOwned!(buf, (g) => given.push(g))).toBe(true);
  await Bun.sleep(100);
  expect(given.length).toBeLessThan(N);
  expect(a.queued_bytes).toBeGreaterThan(0);
  // What is queued is the caller's buffer: nothing was copied, so nothing was given back early.
  expect(given).toEqual(bufs.slice(0, given.length));
  b.resume();
  for (let i = 0; i < 1000 && bytes < N * 1024 * 1024; i++) await Bun.sleep(10);
  expect(bytes).toBe(N * 1024 * 1024);
  expect(given.length).toBe(N);
  for (let i = 0; i < N; i++) expect(given[i]).toBe(bufs[i]!);
  expect(a.queued_bytes).toBe(0);
  const all = new Uint8Array(bytes);
  let at = 0;
  for (const r of received) {
    all.set(r, at);
    at += r.length;
  }
  for (let i = 0; i < N; i++) expect(Buffer.compare(all.subarray(i * 1024 * 1024, (i + 1) * 1024 * 1024), bufs[i]!)).toBe(0);
});

test("buffers still queued when the connection ends are never given back", async () => {
  const [a, b] = await pair();
  b.pause();
  const given: Uint8Array[] = [];
  for (let i = 0; i < 48; i++) a.sendOwned!(filled(1024 * 1024, i), (g) => given.push(g));
  await Bun.sleep(50);
  const before = given.length;
  expect(before).toBeLessThan(48);
  let closed = false;
  a.onClose = () => (closed = true);
  b.close();
  for (let i = 0; i < 200 && !closed; i++) await Bun.sleep(10);
  await Bun.sleep(50);
  expect(given.length).toBe(before);
  expect(a.sendOwned!(new Uint8Array(1 << 20), (g) => given.push(g))).toBe(false);
  expect(given.length).toBe(before);
});

test("SendBatcher.pushOwned: small parts are copied and given back at once, large ones once written, after what was queued before", async () => {
  const [a, b] = await pair();
  const out = new SendBatcher(a);
  let got = new Uint8Array(0);
  b.onData = (chunk) => {
    const next = new Uint8Array(got.length + chunk.length);
    next.set(got);
    next.set(chunk, got.length);
    got = next;
  };
  const given: Uint8Array[] = [];
  const small = new Uint8Array([1, 2, 3]);
  const big = filled(256 * 1024, 7);
  out.push(new Uint8Array([9]));
  out.pushOwned(small, (g) => given.push(g));
  expect(given).toEqual([small]); // copied into the staging buffer
  out.pushOwned(big, (g) => given.push(g));
  for (let i = 0; i < 200 && got.length < 4 + big.length; i++) await Bun.sleep(5);
  expect(given.length).toBe(2);
  expect(given[1]).toBe(big);
  expect(Array.from(got.subarray(0, 4))).toEqual([9, 1, 2, 3]);
  expect(Buffer.compare(got.subarray(4), big)).toBe(0);
});
