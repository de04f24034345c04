/**
 * The frame seam (net/frame-link.ts) as each transport that runs here implements it: the in-process
 * pipe (net/pipe.ts) and frames over a byte stream (net/stream-link.ts) on real TCP loopback
 * sockets and on a connection that cannot pause itself. The RDMA link's framing and credits are
 * tested as pure code in rdma-framing.test.ts, and for real in tests/vm/rdma.test.ts.
 */
import { afterEach, describe, expect, test } from "bun:test";
import type { Conn } from "../../src/engine/net/conn.ts";
import type { FrameLink } from "../../src/engine/net/frame-link.ts";
import { linkPair } from "../../src/engine/net/pipe.ts";
import { streamLink } from "../../src/engine/net/stream-link.ts";
import { BunNetwork } from "../../src/engine/runtime/real-net.ts";
import { type Header, Op, emptyHeader, encodeFrame } from "../../src/engine/wire/header.ts";

const tick = () => new Promise((r) => setTimeout(r, 0));

function header(id: number, payload_len = 0): Header {
  return { ...emptyHeader(), opcode: Op.WRITE, request_id: id, length: payload_len, payload_len };
}

interface Got {
  id: number;
  bytes: number[];
  owned: boolean;
}

function collect(link: FrameLink): Got[] {
  const got: Got[] = [];
  link.onFrame = (h, payload, owned) => got.push({ id: h.request_id, bytes: [...payload.subarray(0, 4)], owned });
  return got;
}

describe("in-process pipe", () => {
  test("frames arrive in order, at once, decoded; the sender may reuse its buffers", () => {
    const [a, b] = linkPair();
    const got = collect(b);
    const buf = new Uint8Array([1, 2, 3]);
    expect(a.send(header(1, 3), buf)).toBe(true);
    buf.fill(9);
    a.sendFrame(encodeFrame(header(2, 1), new Uint8Array([4])));
    expect(got).toEqual([
      { id: 1, bytes: [1, 2, 3], owned: false },
      { id: 2, bytes: [4], owned: false },
    ]);
    expect(a.transport.kind).toBe("in-process");
  });

  test("an answer sent from inside onFrame is delivered after it returns, a copy, in order", async () => {
    const [a, b] = linkPair();
    const seen: string[] = [];
    const reply = new Uint8Array([7]);
    b.onFrame = (h) => {
      seen.push(`b got ${h.request_id}`);
      b.send(header(10, 1), reply);
      reply[0] = 8; // reused at once: the queued copy still says 7
      b.send(header(11, 1), reply);
    };
    a.onFrame = (h, p, owned) => seen.push(`a got ${h.request_id}:${p[0]}:${owned}`);
    a.send(header(1), null);
    expect(seen).toEqual(["b got 1"]);
    await tick();
    expect(seen).toEqual(["b got 1", "a got 10:7:false", "a got 11:8:false"]);
  });

  test("pause holds frames until resume, then they come in order; a pause part way keeps the rest", async () => {
    const [a, b] = linkPair();
    const got = collect(b);
    b.pause();
    for (let i = 1; i <= 3; i++) a.send(header(i, 1), new Uint8Array([i]));
    await tick();
    expect(got).toEqual([]);
    b.resume();
    a.send(header(4, 1), new Uint8Array([4])); // after the held ones, never before
    await tick();
    expect(got.map((g) => g.id)).toEqual([1, 2, 3, 4]);
    // Paused from inside onFrame while a backlog is delivered: the rest waits, then comes first.
    const seen: string[] = [];
    b.onFrame = (h, p) => {
      seen.push(`${h.request_id}:${p[0]}`);
      if (h.request_id === 6) b.pause();
    };
    b.pause();
    for (let i = 5; i <= 8; i++) a.send(header(i, 1), new Uint8Array([i]));
    b.resume();
    await tick();
    expect(seen).toEqual(["5:5", "6:6"]);
    a.send(header(9, 1), new Uint8Array([9]));
    b.resume();
    await tick();
    expect(seen).toEqual(["5:5", "6:6", "7:7", "8:8", "9:9"]);
  });

  test("an owned frame answered from inside onFrame waits by reference, in order with copies, and is given back once delivered", async () => {
    const [a, b] = linkPair();
    const given: Uint8Array[] = [];
    const big = encodeFrame(header(11, 64 * 1024), new Uint8Array(64 * 1024).fill(3));
    b.onFrame = (h) => {
      if (h.request_id !== 1) return;
      b.send(header(10, 1), new Uint8Array([7]));
      b.sendFrameOwned!(big, (f) => given.push(f));
      b.send(header(12, 1), new Uint8Array([9]));
    };
    const seen: string[] = [];
    a.onFrame = (h, p, owned) => {
      seen.push(`${h.request_id}:${p[0]}:${p.length}:${owned}`);
      if (h.request_id === 11) expect(p.buffer === big.buffer).toBe(true); // not a copy
      if (h.request_id === 11) expect(given).toEqual([]); // not given back before its delivery
    };
    a.send(header(1), null);
    expect(given).toEqual([]);
    await tick();
    expect(seen).toEqual(["10:7:1:false", `11:3:${64 * 1024}:false`, "12:9:1:false"]);
    expect(given).toEqual([big]);
    // Sent outside a delivery: delivered at once, given back at once.
    const again = encodeFrame(header(13, 64 * 1024), new Uint8Array(64 * 1024).fill(4));
    b.sendFrameOwned!(again, (f) => given.push(f));
    expect(seen.at(-1)).toBe(`13:4:${64 * 1024}:false`);
    expect(given).toEqual([big, again]);
  });

  test("owned frames held by a pause keep their order when the pause comes part way; none is given back after the link ended", async () => {
    const [a, b] = linkPair();
    const given: number[] = [];
    const seen: number[] = [];
    a.onFrame = (h) => {
      seen.push(h.request_id);
      if (h.request_id === 2) a.pause();
    };
    a.pause();
    for (let i = 1; i <= 4; i++) {
      if (i % 2 === 0) b.sendFrameOwned!(encodeFrame(header(i, 32 * 1024), new Uint8Array(32 * 1024)), () => given.push(i));
      else b.send(header(i, 1), new Uint8Array([i]));
    }
    a.resume();
    await tick();
    expect(seen).toEqual([1, 2]);
    expect(given).toEqual([2]);
    b.send(header(5, 1), new Uint8Array([5]));
    a.resume();
    await tick();
    expect(seen).toEqual([1, 2, 3, 4, 5]);
    expect(given).toEqual([2, 4]);
    a.pause();
    b.sendFrameOwned!(encodeFrame(header(6, 32 * 1024), new Uint8Array(32 * 1024)), () => given.push(6));
    a.close();
    await tick();
    await tick();
    expect(given).toEqual([2, 4]);
  });

  test("a large payload is delivered as sent, not copied into the receiver's sink", () => {
    const [a, b] = linkPair();
    const dst = new Uint8Array(64 * 1024);
    let asked = 0;
    b.sink = () => {
      asked++;
      return dst;
    };
    const sent = new Uint8Array(dst.length).fill(5);
    let landed: Uint8Array | null = null;
    b.onFrame = (_h, p, owned) => {
      expect(owned).toBe(false);
      landed = p;
    };
    a.send(header(1, dst.length), sent);
    expect(landed === sent).toBe(true);
    expect(asked).toBe(0);
    expect(dst[100]).toBe(0);
  });

  test("close delivers what was sent, then both ends hear it; later sends are refused", async () => {
    const [a, b] = linkPair();
    const events: string[] = [];
    a.onFrame = (h) => events.push(`a frame ${h.request_id}`);
    b.onFrame = (h) => {
      events.push(`b frame ${h.request_id}`);
      if (h.request_id === 1) {
        b.send(header(2), null); // queued: we are inside a delivery
        b.close();
      }
    };
    a.onClose = (why) => events.push(`a closed: ${why}`);
    b.onClose = (why) => events.push(`b closed: ${why}`);
    a.send(header(1), null);
    expect(b.send(header(3), null)).toBe(false);
    await tick();
    expect(events).toEqual(["b frame 1", "a frame 2", "b closed: closed", "a closed: closed by peer"]);
    expect(a.send(header(4), null)).toBe(false);
  });

  test("a receiver that throws closes the link, not the sender's process", async () => {
    const [a, b] = linkPair();
    let closed = "";
    let peer = "";
    a.onClose = (why) => (peer = why);
    b.onFrame = () => {
      throw new Error("bug");
    };
    b.onClose = (why) => (closed = why);
    expect(() => a.send(header(1), null)).not.toThrow();
    await tick();
    expect(closed).toContain("receiver failed: bug");
    expect(peer).toBe("closed by peer");
  });

  test("a header that fails validation is reported, never delivered", () => {
    const [a, b] = linkPair();
    const got = collect(b);
    let why = "";
    b.onMalformed = (w) => (why = w);
    const bad = encodeFrame(header(1));
    bad[0] = 0;
    a.sendFrame(bad);
    expect(why).toBe("bad magic");
    expect(got).toEqual([]);
  });

  test("a header whose payload_len differs from the payload given is a bug of the sender", () => {
    const [a] = linkPair();
    expect(() => a.send(header(1, 3), new Uint8Array(2))).toThrow("3 payload bytes, 2 given");
  });
});

describe("frames over a byte stream", () => {
  const closers: (() => void)[] = [];
  afterEach(() => {
    for (const c of closers.splice(0)) c();
  });

  async function tcpPair(): Promise<[FrameLink, FrameLink]> {
    const net = new BunNetwork();
    let accepted: (c: Conn) => void;
    const server = new Promise<Conn>((r) => (accepted = r));
    const l = await net.listen("127.0.0.1:0", (c) => accepted(c));
    closers.push(() => l.close());
    const client = await net.connect(l.address);
    const a = streamLink(client);
    const b = streamLink(await server);
    closers.push(() => {
      a.close();
      b.close();
    });
    return [a, b];
  }

  test("TCP: frames in order, small and large, the large one straight into the sink", async () => {
    const [a, b] = await tcpPair();
    expect(a.transport.kind).toBe("tcp");
    const big = new Uint8Array(1024 * 1024);
    for (let i = 0; i < big.length; i++) big[i] = i & 0xff;
    const dst = new Uint8Array(big.length);
    b.sink = (h) => (h.request_id === 2 ? dst : null);
    const got = collect(b);
    a.send(header(1, 2), new Uint8Array([1, 1]));
    a.send(header(2, big.length), big);
    a.send(header(3), null);
    for (let i = 0; i < 200 && got.length < 3; i++) await Bun.sleep(5);
    expect(got.map((g) => [g.id, g.owned])).toEqual([
      [1, false],
      [2, true],
      [3, false],
    ]);
    expect(Buffer.compare(dst, big)).toBe(0);
  });

  test("TCP: a paused receiver stops reading, the sender's queue grows and drains once resumed", async () => {
    const [a, b] = await tcpPair();
    const got = collect(b);
    let drained = 0;
    a.onDrain = () => drained++;
    b.pause();
    await tick();
    const chunk = new Uint8Array(1024 * 1024);
    const N = 64; // 64 MiB: more than the kernel's buffers on both sides hold
    for (let i = 1; i <= N; i++) a.send(header(i, chunk.length), chunk);
    await Bun.sleep(200);
    expect(got.length).toBeLessThan(N);
    expect(a.queued_bytes).toBeGreaterThan(0);
    b.resume();
    for (let i = 0; i < 1000 && got.length < N; i++) await Bun.sleep(10);
    expect(got.map((g) => g.id)).toEqual(Array.from({ length: N }, (_, i) => i + 1));
    expect(a.queued_bytes).toBe(0);
    expect(drained).toBeGreaterThan(0);
  });

  test("pausing the link pauses its connection (every Conn stops onData while paused), once", () => {
    const calls: string[] = [];
    const conn: Conn = { remote: "sim", send: () => true, close() {}, onData: null, onClose: null, pause: () => calls.push("pause"), resume: () => calls.push("resume") };
    const link = streamLink(conn);
    link.pause();
    link.pause();
    link.resume();
    link.resume();
    expect(calls).toEqual(["pause", "resume"]);
  });

  test("a bad header stops the decoder and is reported once; close is heard once", () => {
    let closed = 0;
    const conn: Conn = { remote: "sim", send: () => true, close() {}, onData: null, onClose: null, pause() {}, resume() {} };
    const link = streamLink(conn);
    const got = collect(link);
    const why: string[] = [];
    link.onMalformed = (w) => why.push(w);
    link.onClose = () => closed++;
    const bad = encodeFrame(header(2));
    bad[4] = 9;
    conn.onData!(new Uint8Array([...encodeFrame(header(1)), ...bad, ...encodeFrame(header(3))]));
    expect(got.map((g) => g.id)).toEqual([1]);
    expect(why).toEqual(["unsupported version 9"]);
    conn.onClose!("closed by peer");
    conn.onClose!("closed by peer");
    expect(closed).toBe(1);
  });
});
