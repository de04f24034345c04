/**
 * The requester side: connection loss fails everything at once, in-flight is bounded, a target
 * that breaks the protocol ends the session instead of confusing requests.
 */
import { afterEach, describe, expect, test } from "bun:test";
import type { FormattedDrive } from "../../src/engine/drive/formatted-api.ts";
import type { Conn, Listener } from "../../src/engine/net/conn.ts";
import { realEnv } from "../../src/engine/runtime/real-env.ts";
import { encodeBody } from "../../src/engine/wire/control.ts";
import { Flag, Op, Status, emptyHeader, encodeFrame } from "../../src/engine/wire/header.ts";
import { openSession } from "../../src/engine/wire/session.ts";
import { SessionClosedError, TargetError } from "../../src/engine/wire/session-api.ts";
import { type TargetHarness, dataBytes, memoryDrive, pattern, recordingLogger, startTarget, uuidBytes } from "./target-fixture.ts";

let h: TargetHarness | null = null;
let fake: Listener | null = null;
afterEach(() => {
  h?.stop();
  h = null;
  fake?.close();
  fake = null;
});

/** A drive whose reads wait until release() is called; counts reads started. */
async function gatedDrive(): Promise<{ drive: FormattedDrive; release: () => void; started: () => number }> {
  const d = await memoryDrive();
  let gate = Promise.withResolvers<void>();
  let started = 0;
  const data = Object.create(d.data) as typeof d.data;
  data.read = async (offset, dst) => {
    started++;
    await gate.promise;
    return d.data.read(offset, dst);
  };
  return {
    drive: { ...d, info: d.info, data },
    release: () => {
      gate.resolve();
      gate = Promise.withResolvers<void>();
    },
    started: () => started,
  };
}

const HELLO = { version: 1 as const, role: "client" as const, name: "session-test" };

/** A fake target: answers HELLO properly, then runs `behave` on each later frame's raw bytes. */
async function fakeTarget(behave: (conn: Conn, frame: Uint8Array) => void): Promise<string> {
  const env = realEnv("fake", recordingLogger([]));
  fake = await env.net.listen("127.0.0.1:0", (conn) => {
    let helloDone = false;
    conn.onData = (chunk) => {
      if (!helloDone) {
        helloDone = true;
        const info = { target_name: "fake", version: "0", drives: [] };
        conn.send(encodeFrame({ ...emptyHeader(), opcode: Op.HELLO, flags: Flag.RESPONSE, request_id: chunk[8]! }, encodeBody(info)));
        return;
      }
      behave(conn, chunk.slice());
    };
  });
  return fake.address;
}

describe("target session", () => {
  test("connection loss fails every in-flight and queued request at once", async () => {
    const g = await gatedDrive();
    h = await startTarget([g.drive]);
    const s = await h.session({ max_inflight: 4 });
    const u = uuidBytes(g.drive);
    const reasons: string[] = [];
    s.onClose = (r) => reasons.push(r);
    const ps = Array.from({ length: 10 }, (_, i) => s.read(u, i * 512, new Uint8Array(512)));
    while (g.started() < 4) await Bun.sleep(1);
    h.service.closeAll(); // the target drops the connection with requests outstanding
    const results = await Promise.allSettled(ps);
    for (const r of results) {
      expect(r.status).toBe("rejected");
      expect((r as PromiseRejectedResult).reason).toBeInstanceOf(SessionClosedError);
    }
    expect(s.closed).toBe(true);
    expect(reasons.length).toBe(1);
    await expect(s.write(u, 0, new Uint8Array(1), false)).rejects.toBeInstanceOf(SessionClosedError);
    g.release();
  });

  test("close() by the requester fails in-flight requests without waiting for the target", async () => {
    const g = await gatedDrive();
    h = await startTarget([g.drive]);
    const s = await h.session();
    const p = s.read(uuidBytes(g.drive), 0, new Uint8Array(512));
    s.close();
    await expect(p).rejects.toBeInstanceOf(SessionClosedError);
    g.release();
  });

  test("in flight never exceeds max_inflight; the rest wait and complete in turn", async () => {
    const g = await gatedDrive();
    h = await startTarget([g.drive]);
    const s = await h.session({ max_inflight: 3 });
    const u = uuidBytes(g.drive);
    await s.write(u, 0, pattern(3, 4096), false);
    const bufs = Array.from({ length: 20 }, () => new Uint8Array(512));
    const ps = bufs.map((b, i) => s.read(u, (i % 8) * 512, b));
    let maxSeen = 0;
    for (let round = 0; round < 100 && g.started() < 20; round++) {
      await Bun.sleep(2);
      maxSeen = Math.max(maxSeen, s.inflight);
      expect(s.inflight).toBeLessThanOrEqual(3);
      g.release();
    }
    g.release();
    await Promise.all(ps);
    expect(maxSeen).toBe(3);
    bufs.forEach((b, i) => expect(b).toEqual(pattern(3, 4096).subarray((i % 8) * 512, (i % 8) * 512 + 512)));
  });

  test("the byte bound admits one oversized request alone rather than deadlocking", async () => {
    const d = await memoryDrive();
    h = await startTarget([d]);
    const s = await h.session({ max_inflight_bytes: 64 * 1024 });
    const u = uuidBytes(d);
    const big = pattern(8, 1024 * 1024);
    await Promise.all([s.write(u, 0, big, false), s.write(u, 2 * 1024 * 1024, pattern(9, 4096), false)]);
    const got = new Uint8Array(1024 * 1024);
    await s.read(u, 0, got);
    expect(got).toEqual(big);
  });

  test("arguments the target would treat as malformed are rejected locally; session stays open", async () => {
    const d = await memoryDrive();
    h = await startTarget([d]);
    const s = await h.session();
    await expect(s.read(new Uint8Array(3), 0, new Uint8Array(1))).rejects.toThrow("16 bytes");
    await expect(s.read(uuidBytes(d), -1, new Uint8Array(1))).rejects.toThrow("bad offset");
    await expect(s.write(uuidBytes(d), 0, new Uint8Array(4 * 1024 * 1024 + 1), false)).rejects.toThrow("length");
    await expect(s.trim(uuidBytes(d), 0, 2 ** 32)).rejects.toThrow("length");
    await s.flush(uuidBytes(d));
    expect(s.closed).toBe(false);
  });

  test("TargetError carries the status and the target's message", async () => {
    const d = await memoryDrive();
    const n = dataBytes(d);
    h = await startTarget([d]);
    const s = await h.session();
    try {
      await s.read(uuidBytes(d), n, new Uint8Array(1));
      throw new Error("expected a TargetError");
    } catch (e) {
      expect(e).toBeInstanceOf(TargetError);
      expect((e as TargetError).status).toBe(Status.OUT_OF_RANGE);
      expect((e as TargetError).message).toBe(`range ${n}+1 is beyond the data area (${n} bytes)`);
    }
  });

  test("openSession rejects when HELLO is refused, and when nothing listens", async () => {
    const env = realEnv("s", recordingLogger([]));
    fake = await env.net.listen("127.0.0.1:0", (conn) => {
      conn.onData = (chunk) => {
        const body = encodeBody({ error: "go away" });
        const f = encodeFrame({ ...emptyHeader(), opcode: Op.HELLO, flags: Flag.RESPONSE, request_id: chunk[8]!, status: Status.NOT_AUTHENTICATED }, body);
        conn.send(f);
      };
    });
    await expect(openSession(env, fake.address, HELLO)).rejects.toThrow("go away");
    const port = Number(fake.address.split(":")[1]);
    fake.close();
    fake = null;
    await Bun.sleep(10);
    await expect(openSession(env, `127.0.0.1:${port}`, HELLO)).rejects.toThrow("cannot connect");
  });

  test("a target answering an unknown request id ends the session", async () => {
    const addr = await fakeTarget((conn) => {
      conn.send(encodeFrame({ ...emptyHeader(), opcode: Op.FLUSH, flags: Flag.RESPONSE, request_id: 999_999 }));
    });
    const s = await openSession(realEnv("s", recordingLogger([])), addr, HELLO);
    const reasons: string[] = [];
    s.onClose = (r) => reasons.push(r);
    await expect(s.flush(new Uint8Array(16))).rejects.toBeInstanceOf(SessionClosedError);
    await Bun.sleep(20);
    expect(reasons[0]).toContain("unknown request id 999999");
  });

  test("a target sending garbage ends the session with the decoder's reason", async () => {
    const addr = await fakeTarget((conn) => conn.send(new Uint8Array(64).fill(0x55)));
    const s = await openSession(realEnv("s", recordingLogger([])), addr, HELLO);
    const closed = new Promise<string>((r) => {
      s.onClose = r;
    });
    await expect(s.flush(new Uint8Array(16))).rejects.toBeInstanceOf(SessionClosedError);
    expect(await closed).toContain("malformed frame from target: bad magic");
  });

  test("fencing fields are carried on every request", async () => {
    const seen: { client_id: number; generation: number }[] = [];
    const addr = await fakeTarget((conn, frame) => {
      const dv = new DataView(frame.buffer);
      seen.push({ client_id: dv.getUint32(40, true), generation: dv.getUint32(48, true) });
      conn.send(encodeFrame({ ...emptyHeader(), opcode: Op.FLUSH, flags: Flag.RESPONSE, request_id: dv.getUint32(8, true) }));
    });
    const s = await openSession(realEnv("s", recordingLogger([])), addr, HELLO, { client_id: 7, generation: 3 });
    await s.flush(new Uint8Array(16));
    s.setFence(7, 4);
    await s.flush(new Uint8Array(16));
    expect(seen).toEqual([
      { client_id: 7, generation: 3 },
      { client_id: 7, generation: 4 },
    ]);
    s.close();
  });
});
