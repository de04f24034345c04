/**
 * runtime/rdma-net.ts's RdmaLink (completion handling, the busy poll and the sleep on the
 * completion channel, close) over a simulated queue pair: the Endpoint's calls are played by a
 * wire in memory, in RC's order (a SEND lands in the receive posted first; none posted fails the
 * test), and the completion channel is an eventfd the link's fd watcher thread really waits on.
 * The real verbs calls run in tests/vm/rdma.test.ts.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { dlopen, FFIType, ptr } from "bun:ffi";
import type { FrameLink } from "../../src/engine/net/frame-link.ts";
import { type LinkEndpoint, RdmaLink } from "../../src/engine/runtime/rdma-net.ts";
import type { Completions } from "../../src/ffi/verbs.ts";
import { type Header, Op, emptyHeader } from "../../src/engine/wire/header.ts";
import { TargetService } from "../../src/engine/target/service.ts";
import { realEnv } from "../../src/engine/runtime/real-env.ts";
import { sessionOver } from "../../src/engine/wire/session.ts";
import { memoryDrive, uuidBytes } from "./target-fixture.ts";

const libc = dlopen("libc.so.6", {
  eventfd: { args: [FFIType.u32, FFIType.i32], returns: FFIType.i32 },
  write: { args: [FFIType.i32, FFIType.ptr, FFIType.u64], returns: FFIType.i64 },
  read: { args: [FFIType.i32, FFIType.ptr, FFIType.u64], returns: FFIType.i64 },
  close: { args: [FFIType.i32], returns: FFIType.i32 },
});
const fds: number[] = [];
const links: RdmaLink[] = [];
afterAll(() => {
  // Ended (unwatched) before their fds close: a watched fd number reused by a later test's
  // socket would be read by the link's completion-channel callback.
  for (const l of links) l.end("test over");
  for (const fd of fds) libc.symbols.close(fd);
});

interface Done {
  slot: number;
  recv: boolean;
  len: number;
}

/** One side of a simulated RC queue pair. */
class FakeQp implements LinkEndpoint {
  readonly send_slots = 8;
  readonly recv_slots = 8;
  readonly slot_bytes = 4096;
  readonly channel_fd: number;
  readonly sendBuf = new Uint8Array(8 * 4096);
  readonly recvBuf = new Uint8Array(8 * 4096);
  readonly posted: number[] = [];
  readonly cq: Done[] = [];
  armed = false;
  peer!: FakeQp;
  events = 0;
  private readonly one = new BigUint64Array([1n]);
  private readonly sink = new BigUint64Array(1);

  constructor() {
    this.channel_fd = libc.symbols.eventfd(0, 0o4000);
    fds.push(this.channel_fd);
  }
  sendSlot(i: number) {
    return this.sendBuf.subarray(i * 4096, (i + 1) * 4096);
  }
  recvSlot(i: number) {
    return this.recvBuf.subarray(i * 4096, (i + 1) * 4096);
  }
  postRecv(i: number) {
    this.posted.push(i);
  }
  postSend(i: number, length: number) {
    const bytes = this.sendSlot(i).slice(0, length);
    // The wire takes a moment: land on a later turn, as a real HCA would.
    setTimeout(() => {
      const slot = this.peer.posted.shift();
      if (slot === undefined) throw new Error("SEND with no receive posted");
      this.peer.recvSlot(slot).set(bytes);
      this.peer.complete({ slot, recv: true, len: length });
      this.complete({ slot: i, recv: false, len: length });
    }, 1);
  }
  complete(d: Done) {
    this.cq.push(d);
    if (this.armed) {
      this.armed = false;
      libc.symbols.write(this.channel_fd, ptr(this.one), 8);
    }
  }
  poll(out: Completions): number {
    const n = Math.min(this.cq.length, out.slot.length);
    for (let i = 0; i < n; i++) {
      const d = this.cq.shift()!;
      out.slot[i] = d.slot;
      out.recv[i] = d.recv ? 1 : 0;
      out.status[i] = 0;
      out.byte_len[i] = d.len;
    }
    return n;
  }
  arm() {
    this.armed = true;
  }
  takeEvents() {
    const n = Number(libc.symbols.read(this.channel_fd, ptr(this.sink), 8)) > 0 ? 1 : 0;
    this.events += n;
    return n;
  }
}

function pair(): { a: RdmaLink; b: RdmaLink; qa: FakeQp; qb: FakeQp; disconnects: string[] } {
  const qa = new FakeQp();
  const qb = new FakeQp();
  qa.peer = qb;
  qb.peer = qa;
  const disconnects: string[] = [];
  const id = (name: string) => ({ disconnect: () => disconnects.push(name), destroy: () => {} });
  const a = new RdmaLink(id("a"), qa, "b", { kind: "rdma", why: "test" });
  const b = new RdmaLink(id("b"), qb, "a", { kind: "rdma", why: "test" });
  for (let i = 0; i < 8; i++) qa.postRecv(i);
  links.push(a, b);
  a.start({ recv_slots: 8, slot_bytes: 4096 }, true);
  b.start({ recv_slots: 8, slot_bytes: 4096 }, false);
  return { a, b, qa, qb, disconnects };
}

function frame(id: number, len: number): [Header, Uint8Array] {
  return [{ ...emptyHeader(), opcode: Op.WRITE, request_id: id, length: len, payload_len: len }, new Uint8Array(len).fill(id & 0xff)];
}

async function until(what: string, cond: () => boolean, ms = 5000): Promise<void> {
  for (let t = 0; t < ms / 5; t++) {
    if (cond()) return;
    await Bun.sleep(5);
  }
  throw new Error(`timed out waiting for ${what}`);
}

describe("RdmaLink over a simulated queue pair", () => {
  test("frames both ways, small and fragmented; after a quiet spell the link sleeps and a completion event wakes it", async () => {
    const { a, b, qb } = pair();
    const got: number[] = [];
    b.onFrame = (h, p) => {
      got.push(h.request_id);
      expect(p.every((x) => x === (h.request_id & 0xff))).toBe(true);
    };
    for (let i = 1; i <= 20; i++) a.send(...frame(i, i % 3 === 0 ? 20_000 : 100));
    await until("20 frames", () => got.length === 20);
    expect(got).toEqual(Array.from({ length: 20 }, (_, i) => i + 1));
    // Quiet: b's completion queue is armed and its channel watched by the watcher thread.
    await until("b asleep", () => qb.armed);
    a.send(...frame(99, 10));
    await until("the woken frame", () => got.includes(99));
    expect(qb.events).toBeGreaterThan(0);
    a.close();
    b.close();
  });

  test("close sends what was queued first, then disconnects; the link then refuses sends", async () => {
    const { a, b, disconnects } = pair();
    const got: number[] = [];
    b.onFrame = (h) => got.push(h.request_id);
    for (let i = 1; i <= 5; i++) a.send(...frame(i, 1000));
    a.close();
    expect(a.send(...frame(6, 1))).toBe(false);
    await until("the queued frames", () => got.length === 5);
    await until("a disconnect", () => disconnects.includes("a"));
    b.close();
  });

  test("a session and a target's connection over it: HELLO, write, read back", async () => {
    const { a, b } = pair();
    const env = realEnv("rdma-link-test");
    const d = await memoryDrive();
    const key = crypto.getRandomValues(new Uint8Array(32));
    const service = new TargetService(env, { name: "t", drives: [d], cluster_key: key });
    // As a listener does: the link is paused until it has an owner; frames sent before wait.
    b.pause();
    const opened = sessionOver(env, a, "fake", { version: 1, role: "client", name: "c" }, { cluster_key: { kind: "server", key } });
    await Bun.sleep(20);
    service.handleLink(b as FrameLink);
    b.resume();
    const s = await opened;
    const data = new Uint8Array(100_000).map((_, i) => i & 0xff);
    await s.write(uuidBytes(d), 0, data, true);
    const back = new Uint8Array(data.length);
    await s.read(uuidBytes(d), 0, back);
    expect(Buffer.compare(back, data)).toBe(0);
    // Many requests at once: frames share messages, answers come from inside onFrame.
    let done = 0;
    await Promise.all(
      Array.from({ length: 16 }, async () => {
        const buf = new Uint8Array(4096);
        for (let i = 0; i < 100; i++) {
          await s.read(uuidBytes(d), 4096 * (i % 20), buf);
          expect(buf.every((x, k) => x === ((4096 * (i % 20) + k) & 0xff))).toBe(true);
          done++;
        }
      }),
    );
    expect(done).toBe(1600);
    s.close();
    service.closeAll();
  });
});
