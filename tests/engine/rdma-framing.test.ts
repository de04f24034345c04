/**
 * The RDMA link's framing and credits (net/rdma-framing.ts) as pure code, between two ends joined
 * by a simulated reliable-connected queue pair: a SEND lands in the receive slot the peer posted
 * first (in posting order, as RC does) and fails the test when the peer has none posted (what a
 * real HCA would retry as receiver-not-ready). Random runs mix frame sizes from empty to several
 * messages long, delays, send completions before or after the peer's receive, and pauses; every
 * frame must arrive whole, in order, and nothing may stall while frames wait.
 */
import { describe, expect, test } from "bun:test";
import {
  decodePrivateData,
  encodePrivateData,
  Kind,
  MSG_HEADER_BYTES,
  type RdmaPort,
  RdmaFraming,
  type RdmaShape,
} from "../../src/engine/net/rdma-framing.ts";
import { type Header, Op, emptyHeader, encodeFrame } from "../../src/engine/wire/header.ts";

/** A tiny seeded PRNG (xorshift32): each failing seed replays. */
function prng(seed: number) {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x / 0x1_0000_0000;
  };
}

interface InFlight {
  bytes: Uint8Array;
  slot: number;
}

class End implements RdmaPort {
  readonly sendBuf: Uint8Array;
  readonly recvBuf: Uint8Array;
  /** Receive slots posted, in posting order (RC consumes them in that order). */
  readonly posted: number[] = [];
  /** SENDs posted, not landed yet. */
  readonly wire: InFlight[] = [];
  /** SENDs landed, completion not reported yet. */
  readonly completions: number[] = [];
  framing!: RdmaFraming;
  peer!: End;
  got: { id: number; bytes: Uint8Array; owned: boolean }[] = [];
  micro: (() => void)[] = [];
  malformed = "";
  sends = 0;

  constructor(readonly shape: RdmaShape) {
    this.sendBuf = new Uint8Array(shape.send_slots * shape.slot_bytes);
    this.recvBuf = new Uint8Array(shape.recv_slots * shape.slot_bytes);
  }

  sendSlot(i: number): Uint8Array {
    return this.sendBuf.subarray(i * this.shape.slot_bytes, (i + 1) * this.shape.slot_bytes);
  }
  recvSlot(i: number): Uint8Array {
    return this.recvBuf.subarray(i * this.shape.slot_bytes, (i + 1) * this.shape.slot_bytes);
  }
  postRecv(i: number): void {
    if (this.posted.includes(i)) throw new Error(`receive slot ${i} posted twice`);
    this.posted.push(i);
  }
  postSend(i: number, length: number): void {
    expect(length).toBeLessThanOrEqual(Math.min(this.shape.slot_bytes, this.peer.shape.slot_bytes));
    this.sends++;
    this.wire.push({ bytes: this.sendSlot(i).slice(0, length), slot: i });
  }

  /** The head SEND lands in the peer's first posted receive slot. */
  land(): void {
    const m = this.wire.shift()!;
    const slot = this.peer.posted.shift();
    if (slot === undefined) throw new Error("SEND with no receive posted (receiver not ready): credits were overspent");
    this.peer.recvSlot(slot).set(m.bytes);
    this.completions.push(m.slot);
    this.peer.framing.received(slot, m.bytes.length);
  }

  complete(): void {
    this.framing.sendCompleted(this.completions.shift()!);
  }

  runMicro(): boolean {
    const m = this.micro;
    if (m.length === 0) return false;
    this.micro = [];
    for (const f of m) f();
    return true;
  }
}

function connect(a: RdmaShape, b: RdmaShape, sinks = false, refuse: ((h: Header) => string | null) | null = null): [End, End] {
  const x = new End(a);
  const y = new End(b);
  x.peer = y;
  y.peer = x;
  for (const e of [x, y]) {
    e.framing = new RdmaFraming(e, e.shape, { recv_slots: e.peer.shape.recv_slots, slot_bytes: e.peer.shape.slot_bytes }, {
      onFrame: (h, payload, owned) => {
        e.got.push({ id: h.request_id, bytes: payload.slice(), owned });
        // The header is the receiver's: the target turns a request's header into its answer's.
        h.payload_len = 4096;
        h.request_id = 0;
      },
      sink: (h) => (sinks ? new Uint8Array(h.payload_len) : null),
      admit: (h) => (refuse === null ? null : refuse(h)),
      onMalformed: (why) => (e.malformed = why),
      onDrain: () => {},
      later: (fn) => e.micro.push(fn),
    });
    e.framing.postAllReceives();
  }
  return [x, y];
}

function frame(id: number, len: number, fill = id): { h: Header; payload: Uint8Array } {
  const payload = new Uint8Array(len);
  for (let i = 0; i < len; i++) payload[i] = (fill + i * 7) & 0xff;
  return { h: { ...emptyHeader(), opcode: Op.WRITE, request_id: id, length: len, payload_len: len }, payload };
}

/** Runs the wire until nothing moves (or only `max` steps, when given); returns the steps taken. */
function settle(ends: End[], rnd: () => number = Math.random, max = -1): number {
  for (let step = 0; max < 0 ? step < 1_000_000 : step < max; step++) {
    const moves: (() => void)[] = [];
    for (const e of ends) {
      if (e.micro.length > 0) moves.push(() => e.runMicro());
      if (e.wire.length > 0) moves.push(() => e.land());
      if (e.completions.length > 0) moves.push(() => e.complete());
    }
    if (moves.length === 0) return step;
    moves[Math.floor(rnd() * moves.length)]!();
  }
  if (max >= 0) return max;
  throw new Error("the wire never settled");
}

const SMALL: RdmaShape = { send_slots: 8, recv_slots: 8, slot_bytes: 4096 };

describe("RDMA framing", () => {
  test("small frames of one tick share a message; the peer gets them in order, as views", () => {
    const [a, b] = connect(SMALL, SMALL);
    for (let i = 1; i <= 10; i++) {
      const f = frame(i, 100);
      a.framing.send(f.h, f.payload);
    }
    settle([a, b]);
    expect(b.got.map((g) => g.id)).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    expect(b.got.every((g) => !g.owned && g.bytes.length === 100)).toBe(true);
    expect(a.sends).toBe(1); // 10 × 164 bytes fit in one 4 KiB message
  });

  test("a frame larger than a message goes in FRAGMENTs into the receiver's sink, whole", () => {
    const [a, b] = connect(SMALL, SMALL, true);
    const big = frame(1, 50_000);
    a.framing.send(frame(9, 10).h, frame(9, 10).payload);
    a.framing.send(big.h, big.payload);
    a.framing.sendFrame(encodeFrame(frame(2, 3).h, frame(2, 3).payload));
    settle([a, b]);
    expect(b.got.map((g) => g.id)).toEqual([9, 1, 2]);
    expect(b.got[1]!.owned).toBe(true);
    expect(Buffer.compare(b.got[1]!.bytes, big.payload)).toBe(0);
    expect(b.malformed).toBe("");
  });

  test("credits: a sender never overruns the receive slots posted, and waits (queued) for more", () => {
    const [a, b] = connect(SMALL, SMALL);
    b.framing.pause(); // b re-posts nothing while paused: a runs out of credits
    for (let i = 1; i <= 40; i++) {
      const f = frame(i, 3000); // one message each
      a.framing.send(f.h, f.payload);
    }
    settle([a, b]);
    // 8 receive slots, one credit kept back for a CREDITS message: 7 messages, the rest waits.
    expect(a.sends).toBe(7);
    expect(a.framing.queued_bytes).toBeGreaterThan(0);
    expect(b.got).toEqual([]);
    b.framing.resume();
    settle([a, b]);
    expect(b.got.map((g) => g.id)).toEqual(Array.from({ length: 40 }, (_, i) => i + 1));
    expect(a.framing.queued_bytes).toBe(0);
  });

  test("one-way traffic gets its credits back in CREDITS messages", () => {
    const [a, b] = connect(SMALL, SMALL);
    for (let i = 1; i <= 100; i++) {
      const f = frame(i, 4000);
      a.framing.send(f.h, f.payload);
    }
    settle([a, b]);
    expect(b.got.length).toBe(100);
    expect(b.sends).toBeGreaterThan(0); // b sent no frame: only credits
  });

  test("private data round trip, and what is refused", () => {
    expect(decodePrivateData(encodePrivateData(64, 65536))).toEqual({ recv_slots: 64, slot_bytes: 65536 });
    expect(decodePrivateData(new Uint8Array(3))).toContain("not an nvmesh peer");
    expect(decodePrivateData(encodePrivateData(2, 65536))).toContain("fewer than");
    expect(decodePrivateData(encodePrivateData(64, 100))).toContain("below");
  });

  test("a header the receiver refuses (admit) is reported before its payload is collected, and nothing after it is delivered", () => {
    const [a, b] = connect(SMALL, SMALL, true, (h) => (h.payload_len > 1000 ? `payload of ${h.payload_len} refused` : null));
    a.framing.send(frame(1, 10).h, frame(1, 10).payload);
    const big = frame(2, 50_000); // larger than a message: it would be collected into a buffer
    a.framing.send(big.h, big.payload);
    a.framing.send(frame(3, 10).h, frame(3, 10).payload);
    settle([a, b], Math.random, 200);
    expect(b.got.map((g) => g.id)).toEqual([1]);
    expect(b.malformed).toBe("payload of 50000 refused");
  });

  test("a broken message is reported, never delivered", () => {
    const [a, b] = connect(SMALL, SMALL);
    const slot = b.posted.shift()!;
    const m = b.recvSlot(slot);
    m.fill(0);
    m[0] = Kind.FRAGMENT;
    b.framing.received(slot, MSG_HEADER_BYTES + 10);
    expect(b.malformed).toBe("a FRAGMENT with no frame to continue");
    expect(a.got).toEqual([]);
  });

  test("random runs: every frame arrives whole and in order, both ways, with pauses, without stalling", () => {
    for (let seed = 1; seed <= 60; seed++) {
      const rnd = prng(seed);
      const shape = (): RdmaShape => ({
        send_slots: 2 + Math.floor(rnd() * 10),
        recv_slots: 4 + Math.floor(rnd() * 12),
        slot_bytes: 4096 * (1 + Math.floor(rnd() * 4)),
      });
      const [a, b] = connect(shape(), shape(), rnd() < 0.5);
      const sent: Map<End, { h: Header; payload: Uint8Array }[]> = new Map([
        [a, []],
        [b, []],
      ]);
      let id = 1;
      for (let round = 0; round < 30; round++) {
        for (const e of [a, b]) {
          const n = Math.floor(rnd() * 6);
          for (let k = 0; k < n; k++) {
            const r = rnd();
            const len = r < 0.2 ? 0 : r < 0.7 ? Math.floor(rnd() * 5000) : Math.floor(rnd() * 70_000);
            const f = frame(id++, len, Math.floor(rnd() * 256));
            sent.get(e)!.push(f);
            if (rnd() < 0.5) e.framing.send(f.h, f.payload);
            else e.framing.sendFrame(encodeFrame(f.h, f.payload));
          }
          if (rnd() < 0.1) e.framing.pause();
          else if (rnd() < 0.3) e.framing.resume();
        }
        settle([a, b], rnd, Math.floor(rnd() * 200));
      }
      a.framing.resume();
      b.framing.resume();
      settle([a, b], rnd);
      for (const [from, to] of [
        [a, b],
        [b, a],
      ] as const) {
        const want = sent.get(from)!;
        expect({ seed, got: to.got.map((g) => g.id) }).toEqual({ seed, got: want.map((f) => f.h.request_id) });
        for (let i = 0; i < want.length; i++) {
          if (Buffer.compare(to.got[i]!.bytes, want[i]!.payload) !== 0) throw new Error(`seed ${seed}: frame ${want[i]!.h.request_id} differs`);
        }
        expect(from.framing.queued_bytes).toBe(0);
        expect(to.malformed).toBe("");
      }
    }
  });
});
