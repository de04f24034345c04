/**
 * Payloads with room for the frame header in front (wire/headroom.ts): a large WRITE leaves a
 * stream link in one send, header and payload contiguous; the same payload can go to two links in
 * turn (a mirror's legs); a subarray of it, whose bytes in front belong to someone else, never
 * gets its header written there.
 */
import { expect, test } from "bun:test";
import type { Conn } from "../../src/engine/net/conn.ts";
import { streamLink } from "../../src/engine/net/stream-link.ts";
import { BufferPool } from "../../src/engine/wire/buffer-pool.ts";
import { FrameDecoder, HEADER_BYTES, type Header, Op, emptyHeader } from "../../src/engine/wire/header.ts";
import { frameAround, giveWithRoom, takeWithRoom } from "../../src/engine/wire/headroom.ts";

function header(id: number, payload_len: number): Header {
  return { ...emptyHeader(), opcode: Op.WRITE, request_id: id, length: payload_len, payload_len };
}

/** A conn that copies what it is sent, like the real sockets (send_copies), and keeps the copies. */
function copyingConn(): { conn: Conn & { send_copies: true }; sends: Uint8Array[] } {
  const sends: Uint8Array[] = [];
  const conn = {
    send_copies: true as const,
    remote: "test",
    send: (b: Uint8Array) => {
      sends.push(b.slice());
      return true;
    },
    close() {},
    pause() {},
    resume() {},
    onData: null,
    onClose: null,
  };
  return { conn, sends };
}

function decodeAll(sends: Uint8Array[]): { id: number; payload: Uint8Array }[] {
  const got: { id: number; payload: Uint8Array }[] = [];
  const d = new FrameDecoder((h, p) => got.push({ id: h.request_id, payload: p.slice() }), (why) => {
    throw new Error(why);
  });
  for (const s of sends) d.push(s);
  return got;
}

test("a large payload with room leaves in one send; the same payload goes to two links in turn", () => {
  const pool = new BufferPool();
  const p = takeWithRoom(pool, 128 * 1024);
  for (let i = 0; i < p.length; i++) p[i] = (i * 7) & 0xff;
  const x = copyingConn();
  const y = copyingConn();
  streamLink(x.conn).send(header(1, p.length), p);
  streamLink(y.conn).send(header(2, p.length), p);
  expect(x.sends.length).toBe(1);
  expect(y.sends.length).toBe(1);
  expect(x.sends[0]!.length).toBe(HEADER_BYTES + p.length);
  const gx = decodeAll(x.sends);
  const gy = decodeAll(y.sends);
  expect(gx.map((g) => g.id)).toEqual([1]);
  expect(gy.map((g) => g.id)).toEqual([2]);
  expect(Buffer.compare(gx[0]!.payload, p)).toBe(0);
  expect(Buffer.compare(gy[0]!.payload, p)).toBe(0);
});

test("a subarray of a buffer with room is sent as before: the bytes in front of it are left alone", () => {
  const pool = new BufferPool();
  const p = takeWithRoom(pool, 256 * 1024);
  p.fill(5);
  const second = p.subarray(128 * 1024);
  expect(frameAround(second)).toBeNull();
  const x = copyingConn();
  streamLink(x.conn).send(header(1, second.length), second);
  expect(x.sends.length).toBe(2); // header, then payload
  expect(p.every((b) => b === 5)).toBe(true);
  expect(Buffer.compare(decodeAll(x.sends)[0]!.payload, second)).toBe(0);
});

test("a link that keeps what it is sent (the simulator's) never gets the room written", () => {
  const pool = new BufferPool();
  const p = takeWithRoom(pool, 64 * 1024).fill(3);
  const kept: Uint8Array[] = [];
  const conn: Conn = { remote: "sim", send: (b) => (kept.push(b), true), close() {}, pause() {}, resume() {}, onData: null, onClose: null };
  const link = streamLink(conn, { batch: false });
  link.send(header(1, p.length), p);
  expect(kept.length).toBe(2);
  expect(kept[1]).toBe(p);
});

test("buffers go back to the pool whole and come out with room again", () => {
  const pool = new BufferPool();
  const p = takeWithRoom(pool, 32 * 1024);
  giveWithRoom(pool, p);
  expect(pool.held_bytes).toBe(HEADER_BYTES + 32 * 1024);
  const q = takeWithRoom(pool, 32 * 1024);
  expect(q.buffer).toBe(p.buffer);
  expect(frameAround(q)!.length).toBe(HEADER_BYTES + 32 * 1024);
  expect(() => giveWithRoom(pool, new Uint8Array(32 * 1024))).toThrow("invariant");
});
