/**
 * Hostile and broken peers: whatever arrives on one connection closes at most that connection,
 * is logged with the peer address, and the target keeps serving everyone else with data intact.
 */
import { afterEach, describe, expect, test } from "bun:test";
import type { Conn } from "../../src/engine/net/conn.ts";
import { encodeBody } from "../../src/engine/wire/control.ts";
import {
  Flag,
  HEADER_BYTES,
  MAGIC,
  MAX_PAYLOAD_BYTES,
  Op,
  Status,
  decodeHeader,
  emptyHeader,
  encodeFrame,
} from "../../src/engine/wire/header.ts";
import { type TargetHarness, memoryDrive, pattern, startTarget, uuidBytes } from "./target-fixture.ts";

let h: TargetHarness | null = null;
afterEach(() => {
  h?.stop();
  h = null;
});

/** A raw connection that records everything it receives and resolves `closed` when it ends. */
async function rawConn(address: string) {
  const conn: Conn = await h!.env.net.connect(address);
  const chunks: Uint8Array[] = [];
  const closed = new Promise<string>((resolve) => {
    conn.onClose = resolve;
  });
  conn.onData = (c) => chunks.push(c.slice());
  const received = () => {
    const all = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
    let at = 0;
    for (const c of chunks) {
      all.set(c, at);
      at += c.length;
    }
    return all;
  };
  return { conn, closed, received };
}

const HELLO = encodeFrame({ ...emptyHeader(), opcode: Op.HELLO, request_id: 1 }, encodeBody({ version: 1, role: "client", name: "raw" }));
/** An administrator's: the drives' metadata and CLAIM are refused to a client before their bodies are read. */
const ADMIN_HELLO = encodeFrame({ ...emptyHeader(), opcode: Op.HELLO, request_id: 1 }, encodeBody({ version: 1, role: "admin", name: "raw" }));

/** Writes known data, lets `attack` run, then checks a fresh session still reads it back. */
async function survives(attack: () => Promise<void>): Promise<void> {
  const d = await memoryDrive();
  h = await startTarget([d]);
  const before = await h.session();
  const u = uuidBytes(d);
  await before.write(u, 8192, pattern(42, 4096), true);
  await attack();
  expect(before.closed).toBe(false); // the other connection was never touched
  const after = await h.session();
  const got = new Uint8Array(4096);
  await after.read(u, 8192, got);
  expect(got).toEqual(pattern(42, 4096));
  await after.write(u, 0, pattern(43, 512), false);
}

function closeLogs(): string[] {
  return h!.logs
    .filter((l) => l.msg === "closing connection")
    .map((l) => `${l.level} peer=${String(l.fields?.peer)} ${String(l.fields?.reason)}`);
}

describe("target under bad input", () => {
  test("random bytes: the connection is closed with a logged reason naming the peer", async () => {
    await survives(async () => {
      const r = await rawConn(h!.address);
      const junk = crypto.getRandomValues(new Uint8Array(4096));
      r.conn.send(junk);
      await r.closed;
      expect(r.received().length).toBe(0);
      const logs = closeLogs();
      expect(logs.length).toBe(1);
      expect(logs[0]).toMatch(/^error peer=127\.0\.0\.1.* malformed frame: bad magic/);
    });
  });

  test("a truncated frame, then the peer closes: nothing breaks", async () => {
    await survives(async () => {
      const r = await rawConn(h!.address);
      r.conn.send(HELLO);
      const write = encodeFrame(
        { ...emptyHeader(), opcode: Op.WRITE, request_id: 2, length: 4096, drive_uuid: uuidBytes(h!.drives[0]!) },
        pattern(1, 4096),
      );
      r.conn.send(write.subarray(0, HEADER_BYTES + 1000));
      await Bun.sleep(20);
      r.conn.close();
      await r.closed;
    });
    // The partial write (offset 0..4096) never reached the drive; survives() wrote only 0..512.
    const check = await h!.session();
    const got = new Uint8Array(3000);
    await check.read(uuidBytes(h!.drives[0]!), 1000, got);
    expect(got.every((b) => b === 0)).toBe(true);
  });

  test("payload_len above the limit: closed before any payload is buffered", async () => {
    await survives(async () => {
      const r = await rawConn(h!.address);
      r.conn.send(HELLO);
      const big = new Uint8Array(HEADER_BYTES);
      const dv = new DataView(big.buffer);
      dv.setUint32(0, MAGIC, true);
      dv.setUint8(4, 1);
      dv.setUint8(5, Op.LIST_DRIVES);
      dv.setUint32(60, MAX_PAYLOAD_BYTES + 1, true);
      r.conn.send(big);
      await r.closed;
      expect(closeLogs()[0]).toContain("above limit");
    });
  });

  test("a non-HELLO first frame is answered NOT_AUTHENTICATED, then the connection closes", async () => {
    await survives(async () => {
      const r = await rawConn(h!.address);
      r.conn.send(encodeFrame({ ...emptyHeader(), opcode: Op.READ, request_id: 9, length: 512, drive_uuid: uuidBytes(h!.drives[0]!) }));
      await r.closed;
      const resp = decodeHeader(r.received());
      if (typeof resp === "string") throw new Error(resp);
      expect(resp.status).toBe(Status.NOT_AUTHENTICATED);
      expect(resp.request_id).toBe(9);
      expect(resp.flags & Flag.RESPONSE).toBe(Flag.RESPONSE);
      expect(r.received().length).toBe(HEADER_BYTES + resp.payload_len); // no data leaked
    });
  });

  test("a HELLO with an invalid body is answered INVALID, then the connection closes", async () => {
    await survives(async () => {
      const r = await rawConn(h!.address);
      r.conn.send(encodeFrame({ ...emptyHeader(), opcode: Op.HELLO, request_id: 1 }, encodeBody({ version: 2 })));
      await r.closed;
      const resp = decodeHeader(r.received());
      if (typeof resp === "string") throw new Error(resp);
      expect(resp.status).toBe(Status.INVALID);
    });
  });

  test("a valid HELLO followed by garbage in the same chunk: HELLO answered, then closed", async () => {
    await survives(async () => {
      const r = await rawConn(h!.address);
      const both = new Uint8Array(HELLO.length + 64);
      both.set(HELLO);
      both.fill(0xab, HELLO.length);
      r.conn.send(both);
      await r.closed;
      const resp = decodeHeader(r.received());
      if (typeof resp === "string") throw new Error(resp);
      expect(resp.opcode).toBe(Op.HELLO);
      expect(resp.status).toBe(Status.OK);
    });
  });

  test("requests with wrong payloads are INVALID without closing the connection", async () => {
    await survives(async () => {
      const r = await rawConn(h!.address);
      r.conn.send(ADMIN_HELLO);
      const u = uuidBytes(h!.drives[0]!);
      r.conn.send(encodeFrame({ ...emptyHeader(), opcode: Op.FLUSH, request_id: 2, drive_uuid: u }, new Uint8Array(8)));
      r.conn.send(encodeFrame({ ...emptyHeader(), opcode: Op.CLAIM, request_id: 3, drive_uuid: u }, new Uint8Array([0xff, 0xff])));
      r.conn.send(encodeFrame({ ...emptyHeader(), opcode: Op.META_WRITE, request_id: 4, drive_uuid: u }, encodeBody({ generation: -1, payload: null })));
      await Bun.sleep(50);
      const bytes = r.received();
      const statuses: number[] = [];
      for (let at = 0; at < bytes.length; ) {
        const resp = decodeHeader(bytes, at);
        if (typeof resp === "string") throw new Error(resp);
        if (resp.opcode !== Op.HELLO) statuses.push(resp.status);
        at += HEADER_BYTES + resp.payload_len;
      }
      expect(statuses).toEqual([Status.INVALID, Status.INVALID, Status.INVALID]);
      expect(h!.service.connectionCount).toBe(2);
      r.conn.close();
      await r.closed;
    });
  });

  test("DIRTY, INTENT or LOCK on an op that changes no data is INVALID, named, without closing the connection", async () => {
    await survives(async () => {
      const r = await rawConn(h!.address);
      r.conn.send(HELLO);
      const u = uuidBytes(h!.drives[0]!);
      const flags = [Flag.DIRTY, Flag.INTENT, Flag.LOCK, Flag.INTENT | Flag.LOCK];
      flags.forEach((flags, i) => r.conn.send(encodeFrame({ ...emptyHeader(), opcode: Op.FLUSH, flags, request_id: 2 + i, drive_uuid: u })));
      await Bun.sleep(50);
      const bytes = r.received();
      const errors: string[] = [];
      for (let at = 0; at < bytes.length; ) {
        const resp = decodeHeader(bytes, at);
        if (typeof resp === "string") throw new Error(resp);
        if (resp.opcode !== Op.HELLO) {
          expect(resp.status).toBe(Status.INVALID);
          errors.push(new TextDecoder().decode(bytes.subarray(at + HEADER_BYTES, at + HEADER_BYTES + resp.payload_len)));
        }
        at += HEADER_BYTES + resp.payload_len;
      }
      expect(errors.length).toBe(4);
      for (const [i, name] of ["DIRTY", "INTENT", "LOCK", "INTENT"].entries()) {
        expect(errors[i]).toContain(`the ${name} flag applies to WRITE, WRITE_ZEROES and TRIM only, not FLUSH`);
      }
      expect(h!.service.connectionCount).toBe(2);
      r.conn.close();
      await r.closed;
    });
  });

  test("a peer that floods far beyond the in-flight limit is slowed by backpressure, not disconnected; others unaffected", async () => {
    const d = await memoryDrive();
    // A drive that never completes flushes: every FLUSH stays in flight.
    const data = Object.create(d.data) as typeof d.data;
    data.flush = () => new Promise<void>(() => {});
    const stuck = { ...d, info: d.info, data };
    h = await startTarget([stuck], { max_inflight_per_conn: 4 });
    const r = await rawConn(h.address);
    r.conn.send(HELLO);
    const u = uuidBytes(d);
    const n = 20_000; // five times the queue's safety cap: only a paused socket keeps it short
    const flood = new Uint8Array(n * HEADER_BYTES);
    for (let i = 0; i < n; i++) {
      flood.set(encodeFrame({ ...emptyHeader(), opcode: Op.FLUSH, request_id: i + 10, drive_uuid: u }), i * HEADER_BYTES);
    }
    r.conn.send(flood);
    const s = await h.session();
    await s.write(u, 0, pattern(5, 512), false);
    await Bun.sleep(200);
    expect(closeLogs()).toEqual([]);
    expect(r.conn.send(new Uint8Array(0))).toBe(true); // still open
  });

  test("a flood of pipelined requests with no bound of its own is answered in full", async () => {
    const d = await memoryDrive();
    h = await startTarget([d], { max_inflight_per_conn: 4 });
    const r = await rawConn(h.address);
    r.conn.send(HELLO);
    const u = uuidBytes(d);
    const n = 20_000;
    const flood = new Uint8Array(n * (HEADER_BYTES + 512));
    for (let i = 0; i < n; i++) {
      const f = encodeFrame({ ...emptyHeader(), opcode: Op.WRITE, request_id: i + 10, drive_uuid: u, offset: (i % 64) * 512, length: 512 }, pattern(i, 512));
      flood.set(f, i * f.length);
    }
    r.conn.send(flood);
    // Every answer is at least a header: wait for that many bytes (bounded, not a timing claim).
    for (let tries = 0; r.received().length < (n + 1) * HEADER_BYTES && tries < 600; tries++) await Bun.sleep(50);
    const all = r.received();
    let at = 0;
    const statuses = new Map<number, number>();
    while (at + HEADER_BYTES <= all.length) {
      const hd = decodeHeader(all, at);
      if (typeof hd === "string") throw new Error(`bad answer at ${at}: ${hd}`);
      if (hd.opcode === Op.WRITE) statuses.set(hd.status, (statuses.get(hd.status) ?? 0) + 1);
      at += HEADER_BYTES + hd.payload_len;
    }
    expect(Object.fromEntries(statuses)).toEqual({ [Status.OK]: n });
    expect(closeLogs()).toEqual([]);
  });
});
