/**
 * The frame header codec and the frame decoder: exact round trips, and fuzzing of everything a
 * peer can send (decodeHeader must never throw; a bad header always comes with a reason).
 */
import { describe, expect, test } from "bun:test";
import {
  Flag,
  FrameDecoder,
  HEADER_BYTES,
  type Header,
  MAGIC,
  MAX_IO_BYTES,
  Op,
  Status,
  decodeHeader,
  emptyHeader,
  encodeFrame,
  encodeHeader,
} from "../../src/engine/wire/header.ts";
import { SendBatcher } from "../../src/engine/wire/send-batcher.ts";
import type { Conn } from "../../src/engine/net/conn.ts";

/** Seeded so a failing case replays: xorshift32. */
function rng(seed: number) {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return x >>> 0;
  };
}

function sample(r: () => number): Header {
  const ops = [Op.HELLO, Op.READ, Op.WRITE, Op.FLUSH, Op.TRIM, Op.WRITE_ZEROES, Op.LIST_DRIVES, Op.META_READ, Op.META_WRITE, Op.CLAIM];
  const opcode = ops[r() % ops.length]!;
  const isResponse = r() % 2 === 0;
  const length = r() % (MAX_IO_BYTES + 1);
  const dataPayload = (opcode === Op.WRITE && !isResponse) || (opcode === Op.READ && isResponse);
  const uuid = new Uint8Array(16).map(() => r() & 0xff);
  return {
    opcode,
    flags: (isResponse ? Flag.RESPONSE : 0) | (r() % 2 ? Flag.FUA : 0),
    request_id: r(),
    length,
    offset: (r() % 0x200000) * 0x1_0000_0000 + r(),
    drive_uuid: uuid,
    client_id: (r() % 0x200000) * 0x1_0000_0000 + r(),
    generation: (r() % 0x200000) * 0x1_0000_0000 + r(),
    status: isResponse && !dataPayload ? (r() % 9) as Status : Status.OK,
    payload_len: dataPayload ? length : r() % 1000,
  };
}

describe("frame header", () => {
  test("encode → decode round-trips every field, 64-bit values up to 2^53-1 included", () => {
    const r = rng(1);
    for (let i = 0; i < 2000; i++) {
      const h = sample(r);
      const buf = new Uint8Array(HEADER_BYTES + 3);
      encodeHeader(h, buf, 3);
      expect(decodeHeader(buf, 3)).toEqual(h);
    }
    const max = { ...emptyHeader(), offset: Number.MAX_SAFE_INTEGER, client_id: Number.MAX_SAFE_INTEGER, generation: Number.MAX_SAFE_INTEGER };
    expect(decodeHeader(encodeFrame(max))).toMatchObject({ offset: Number.MAX_SAFE_INTEGER, generation: Number.MAX_SAFE_INTEGER });
  });

  test("fuzz: 100k random 64-byte headers never throw, and every rejection has a reason", () => {
    const r = rng(2);
    const buf = new Uint8Array(HEADER_BYTES);
    const dv = new DataView(buf.buffer);
    const reasons = new Set<string>();
    for (let i = 0; i < 100_000; i++) {
      for (let j = 0; j < HEADER_BYTES; j += 4) dv.setUint32(j, r(), true);
      // Most get a valid magic and version (and often a known opcode, no flags) so the checks
      // beyond those are reached too.
      if (i % 4) {
        dv.setUint32(0, MAGIC, true);
        dv.setUint8(4, 1);
        if (i % 2) dv.setUint8(5, Op.READ + (i % 5));
        if (i % 3) dv.setUint16(6, 0, true);
        // Keep the 64-bit fields and sizes plausible in some, so the later checks are reached.
        if (i % 8 === 1) {
          for (const off of [20, 44, 52]) dv.setUint32(off, r() % 0x200000, true);
          dv.setUint32(60, r() % (2 * MAX_IO_BYTES), true);
          dv.setUint32(56, r() % 12, true);
        }
      }
      const out = decodeHeader(buf);
      if (typeof out === "string") {
        expect(out.length).toBeGreaterThan(0);
        reasons.add(out.replace(/\b(0x[0-9a-f]+|\d+)\b/g, "N"));
      }
    }
    // The fuzz reached many distinct checks, not just the magic.
    expect([...reasons].sort()).toEqual(expect.arrayContaining(["bad magic", "status set in a request"]));
    expect(reasons.size).toBeGreaterThanOrEqual(8);
  });

  test("fuzz: single-byte mutations of valid headers either decode to a valid header or give a reason", () => {
    const r = rng(3);
    for (let i = 0; i < 20_000; i++) {
      const buf = encodeFrame(sample(r)).subarray(0, HEADER_BYTES).slice();
      buf[r() % HEADER_BYTES] = r() & 0xff;
      const out = decodeHeader(buf);
      if (typeof out === "string") {
        expect(out.length).toBeGreaterThan(0);
        continue;
      }
      // Whatever decodes satisfies the invariants the service relies on.
      expect(out.opcode in Op).toBe(true);
      expect(out.status in Status).toBe(true);
      expect(out.payload_len).toBeLessThanOrEqual(MAX_IO_BYTES);
      expect(Number.isSafeInteger(out.offset)).toBe(true);
      if ((out.flags & Flag.RESPONSE) === 0) expect(out.status).toBe(Status.OK);
      if (out.opcode === Op.WRITE && !(out.flags & Flag.RESPONSE)) expect(out.payload_len).toBe(out.length);
      // And re-encodes to the same bytes.
      const again = new Uint8Array(HEADER_BYTES);
      encodeHeader(out, again);
      expect(again).toEqual(buf);
    }
  });

  test("specific rejections name the field", () => {
    const base = () => encodeFrame({ ...emptyHeader(), opcode: Op.READ, length: 512 });
    const set = (off: number, v: number, bytes = 4) => {
      const b = base();
      const dv = new DataView(b.buffer);
      if (bytes === 1) dv.setUint8(off, v);
      else if (bytes === 2) dv.setUint16(off, v, true);
      else dv.setUint32(off, v, true);
      return decodeHeader(b);
    };
    expect(decodeHeader(new Uint8Array(63))).toBe("short header");
    expect(set(0, 0)).toBe("bad magic");
    expect(set(4, 2, 1)).toBe("unsupported version 2");
    expect(set(5, 99, 1)).toBe("unknown opcode 99");
    expect(set(6, 0x40, 2)).toBe("unknown flags 0x40");
    expect(set(20, 0x200000)).toBe("offset above 2^53");
    expect(set(56, 3)).toBe("status set in a request");
    expect(set(60, MAX_IO_BYTES + 1)).toContain("above limit");
    expect(set(12, MAX_IO_BYTES + 1)).toContain("I/O limit");
  });
});

describe("frame decoder", () => {
  test("any chunking of a frame stream yields the same frames", () => {
    const r = rng(4);
    const frames: Uint8Array[] = [];
    for (let i = 0; i < 200; i++) {
      const len = r() % 3 === 0 ? r() % 200_000 : r() % 100;
      const payload = new Uint8Array(len).map((_, j) => (i + j) & 0xff);
      frames.push(encodeFrame({ ...emptyHeader(), opcode: Op.WRITE, request_id: i, length: len }, payload));
    }
    const stream = new Uint8Array(frames.reduce((n, f) => n + f.length, 0));
    let at = 0;
    for (const f of frames) {
      stream.set(f, at);
      at += f.length;
    }
    for (const maxChunk of [1, 7, 64, 65, 4096, 1 << 20]) {
      const got: { id: number; sum: number; len: number }[] = [];
      const dec = new FrameDecoder(
        (h, p) => got.push({ id: h.request_id, len: p.length, sum: p.reduce((a, b) => a + b, 0) }),
        (why) => {
          throw new Error(why);
        },
      );
      for (let pos = 0; pos < stream.length; ) {
        const n = 1 + (r() % maxChunk);
        dec.push(stream.subarray(pos, pos + n));
        pos += n;
      }
      expect(got.length).toBe(200);
      got.forEach((g, i) => {
        const f = frames[i]!;
        expect(g.id).toBe(i);
        expect(g.len).toBe(f.length - HEADER_BYTES);
        expect(g.sum).toBe(f.subarray(HEADER_BYTES).reduce((a, b) => a + b, 0));
      });
    }
  }, 30_000); // a property test over many chunkings: seconds on a busy 2-core machine

  test("a bad header reports once and the decoder stays stopped", () => {
    const errors: string[] = [];
    let frames = 0;
    const dec = new FrameDecoder(
      () => frames++,
      (why) => errors.push(why),
    );
    const good = encodeFrame({ ...emptyHeader(), opcode: Op.FLUSH });
    const bad = new Uint8Array(64);
    dec.push(good);
    dec.push(bad);
    dec.push(good);
    expect(frames).toBe(1);
    expect(errors).toEqual(["bad magic"]);
  });
});

describe("send batcher", () => {
  test("frames of one tick leave in one send, big payloads uncopied, order kept", async () => {
    const sent: Uint8Array[] = [];
    const conn = { send: (b: Uint8Array) => sent.push(b) > 0 } as unknown as Conn;
    const b = new SendBatcher(conn);
    const big = new Uint8Array(100_000).fill(9);
    b.push(new Uint8Array([1, 2]));
    b.push(new Uint8Array([3]));
    b.push(big);
    b.push(new Uint8Array([4]));
    expect(sent.length).toBe(0);
    await Promise.resolve();
    expect(sent.length).toBe(3);
    expect([...sent[0]!]).toEqual([1, 2, 3]);
    expect(sent[1]).toBe(big);
    expect([...sent[2]!]).toEqual([4]);
  });
});

describe("control bodies", () => {
  test("decoded byte strings are the message's own, not views of the buffer it arrived in", async () => {
    const { MetaSlot, decodeBody, encodeBody, isInvalid } = await import("../../src/engine/wire/control.ts");
    const rx = new Uint8Array(encodeBody({ generation: 7, payload: new Uint8Array([1, 2, 3, 4]) }));
    const slot = decodeBody(MetaSlot, rx);
    if (isInvalid(slot)) throw new Error(slot.invalid);
    rx.fill(0xee); // the receive buffer is reused for the next frames
    expect(Array.from(slot.payload!)).toEqual([1, 2, 3, 4]);
  });
});
