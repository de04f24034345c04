/** NBD transmission phase against an in-memory Conn: replies, errors, ordering, bounds, draining. */
import { describe, expect, test } from "bun:test";
import { MemoryStore } from "../../src/engine/drive/memory-store.ts";
import type { DriveStore } from "../../src/engine/drive/store.ts";
import {
  NBD_CMD_BLOCK_STATUS,
  NBD_CMD_DISC,
  NBD_CMD_FLAG_DF,
  NBD_CMD_FLAG_FUA,
  NBD_CMD_FLAG_NO_HOLE,
  NBD_CMD_FLUSH,
  NBD_CMD_READ,
  NBD_CMD_TRIM,
  NBD_CMD_WRITE,
  NBD_CMD_WRITE_ZEROES,
  NBD_EINVAL,
  NBD_EIO,
  NBD_ENOSPC,
  NBD_EPERM,
} from "../../src/engine/nbd/constants.ts";
import { ExportRegistry, type NbdExport } from "../../src/engine/nbd/exports.ts";
import { NbdServer, type NbdServerOptions } from "../../src/engine/nbd/server.ts";
import { memConnPair, RawNbdClient, testEnv } from "../../src/engine/nbd/test-kit.ts";

const MiB = 1024 * 1024;
const flushMicrotasks = () => new Promise((r) => setImmediate(r));

/** A MemoryStore that records calls and can hold every operation until released. */
class SpyStore implements DriveStore {
  readonly inner: MemoryStore;
  readonly calls: string[] = [];
  held: (() => void)[] = [];
  hold = false;
  executing = 0;
  max_executing = 0;
  fail = false;

  constructor(readonly size_bytes: number) {
    this.inner = new MemoryStore(size_bytes);
  }
  get describe() {
    return "spy";
  }
  private async gate<T>(name: string, fn: () => Promise<T>): Promise<T> {
    this.calls.push(name);
    this.executing++;
    this.max_executing = Math.max(this.max_executing, this.executing);
    try {
      if (this.hold) await new Promise<void>((r) => this.held.push(r));
      if (this.fail) throw new Error("injected media error");
      return await fn();
    } finally {
      this.executing--;
    }
  }
  release(): void {
    const h = this.held;
    this.held = [];
    for (const r of h) r();
  }
  read(o: number, d: Uint8Array) {
    return this.gate(`read ${o}+${d.length}`, () => this.inner.read(o, d));
  }
  write(o: number, s: Uint8Array, fua: boolean) {
    return this.gate(`write ${o}+${s.length}${fua ? " fua" : ""}`, () => this.inner.write(o, s, fua));
  }
  flush() {
    return this.gate("flush", () => this.inner.flush());
  }
  writeZeroes(o: number, l: number, fua: boolean) {
    return this.gate(`zeroes ${o}+${l}${fua ? " fua" : ""}`, () => this.inner.writeZeroes(o, l, fua));
  }
  trim(o: number, l: number) {
    return this.gate(`trim ${o}+${l}`, () => this.inner.trim(o, l));
  }
  close() {
    return this.inner.close();
  }
}

async function connect(exp: NbdExport, opts: NbdServerOptions = {}, chunk = 1 << 30) {
  const env = testEnv();
  const exports = new ExportRegistry();
  exports.add("disk", exp);
  const server = new NbdServer(env, exports, opts);
  const [c, s] = memConnPair(chunk);
  const client = new RawNbdClient(c);
  server.handle(s);
  await client.greet();
  await client.go("disk");
  return { env, exports, server, client };
}

function pattern(length: number, seed: number): Uint8Array {
  const b = new Uint8Array(length);
  for (let i = 0; i < length; i++) b[i] = (i * 31 + seed * 7 + (i >> 9)) & 0xff;
  return b;
}

describe("nbd transmission", () => {
  test("write then read returns the bytes, whatever the chunking of the stream", async () => {
    for (const chunk of [1, 7, 28, 4096, 1 << 30]) {
      const { client } = await connect({ store: new MemoryStore(MiB) }, {}, chunk);
      const data = pattern(chunk === 1 ? 600 : 70_000, chunk);
      client.request({ type: NBD_CMD_WRITE, cookie: 1, offset: 1234 }, data);
      expect(await client.reply()).toMatchObject({ error: 0, cookie: 1 });
      client.request({ type: NBD_CMD_READ, cookie: 2, offset: 1234, length: data.length });
      const r = await client.reply(data.length);
      expect(r.cookie).toBe(2);
      expect(r.data).toEqual(data);
    }
  });

  test("requests beyond the end get EINVAL (read, trim) or ENOSPC (write, zeroes); the connection stays", async () => {
    const { client } = await connect({ store: new MemoryStore(MiB) });
    client.request({ type: NBD_CMD_READ, cookie: 1, offset: MiB - 512, length: 1024 });
    expect((await client.reply(1024)).error).toBe(NBD_EINVAL);
    client.request({ type: NBD_CMD_READ, cookie: 2, offset: 2 ** 60, length: 1 });
    expect((await client.reply(1)).error).toBe(NBD_EINVAL);
    client.request({ type: NBD_CMD_WRITE, cookie: 3, offset: MiB - 1 }, new Uint8Array(2));
    expect((await client.reply()).error).toBe(NBD_ENOSPC);
    client.request({ type: NBD_CMD_TRIM, cookie: 4, offset: MiB, length: 1 });
    expect((await client.reply()).error).toBe(NBD_EINVAL);
    client.request({ type: NBD_CMD_WRITE_ZEROES, cookie: 5, offset: 0, length: MiB + 1 });
    expect((await client.reply()).error).toBe(NBD_ENOSPC);
    // Byte granularity inside the export is allowed.
    client.request({ type: NBD_CMD_WRITE, cookie: 6, offset: MiB - 3 }, new Uint8Array([1, 2, 3]));
    expect((await client.reply()).error).toBe(0);
    client.request({ type: NBD_CMD_READ, cookie: 7, offset: MiB - 3, length: 3 });
    expect((await client.reply(3)).data).toEqual(new Uint8Array([1, 2, 3]));
  });

  test("unknown commands and flags get EINVAL and the connection stays", async () => {
    const { client } = await connect({ store: new MemoryStore(MiB) });
    client.request({ type: 99, cookie: 1, length: 4 });
    expect((await client.reply()).error).toBe(NBD_EINVAL);
    client.request({ type: NBD_CMD_BLOCK_STATUS, cookie: 2, length: 4096 });
    expect((await client.reply()).error).toBe(NBD_EINVAL);
    client.request({ type: NBD_CMD_READ, cookie: 3, length: 512, flags: NBD_CMD_FLAG_DF });
    expect((await client.reply(512)).error).toBe(NBD_EINVAL);
    // A rejected write's payload is still consumed, so the stream stays in sync.
    client.request({ type: NBD_CMD_WRITE, cookie: 4, flags: NBD_CMD_FLAG_NO_HOLE }, pattern(5000, 1));
    expect((await client.reply()).error).toBe(NBD_EINVAL);
    client.request({ type: NBD_CMD_READ, cookie: 5, length: 32 * MiB + 1 });
    expect((await client.reply()).error).toBe(NBD_EINVAL);
    client.request({ type: NBD_CMD_READ, cookie: 6, length: 512 });
    expect(await client.reply(512)).toMatchObject({ error: 0, cookie: 6 });
  });

  test("a bad request magic closes that connection with a logged reason", async () => {
    const { client, env } = await connect({ store: new MemoryStore(MiB) });
    client.send(new Uint8Array(28).fill(0x41));
    await client.closed;
    expect(env.logged.some((l) => l.level === "warn" && String(l.fields?.reason).includes("magic"))).toBe(true);
  });

  test("a write payload over 32 MiB closes the connection before any allocation", async () => {
    const { client, env } = await connect({ store: new MemoryStore(MiB) });
    const h = new Uint8Array(28);
    const v = new DataView(h.buffer);
    v.setUint32(0, 0x25609513);
    v.setUint16(6, NBD_CMD_WRITE);
    v.setUint32(24, 0xffffffff);
    client.send(h);
    await client.closed;
    expect(env.logged.some((l) => String(l.fields?.reason).includes("exceeds"))).toBe(true);
  });

  test("replies leave in completion order: reads that finish in reverse are answered in reverse", async () => {
    const store = new SpyStore(MiB);
    store.hold = true;
    const { client } = await connect({ store });
    for (let i = 0; i < 8; i++) client.request({ type: NBD_CMD_READ, cookie: i, offset: i * 4096, length: 4096 });
    await flushMicrotasks();
    expect(store.executing).toBe(8); // all in flight at once: pipelined
    const held = store.held;
    store.held = [];
    for (let i = held.length - 1; i >= 0; i--) {
      held[i]!();
      await flushMicrotasks();
    }
    const order: number[] = [];
    for (let i = 0; i < 8; i++) order.push((await client.reply(4096)).cookie);
    expect(order).toEqual([7, 6, 5, 4, 3, 2, 1, 0]);
  });

  test("decoding pauses at the in-flight bound and resumes; nothing is dropped", async () => {
    const store = new SpyStore(MiB);
    store.hold = true;
    const { client } = await connect({ store }, { max_inflight_requests: 4 }, 100);
    const n = 50;
    for (let i = 0; i < n; i++) {
      if (i % 2 === 0) client.request({ type: NBD_CMD_WRITE, cookie: i, offset: i * 512 }, pattern(512, i));
      else client.request({ type: NBD_CMD_READ, cookie: i, offset: i * 512, length: 512 });
    }
    let answered = 0;
    while (answered < n) {
      await flushMicrotasks();
      expect(store.executing).toBeLessThanOrEqual(4);
      store.release();
      await flushMicrotasks();
      while (client.pending_bytes >= 16) {
        const peek = await client.read(16);
        const cookie = new DataView(peek.buffer).getUint32(12);
        expect(new DataView(peek.buffer).getUint32(4)).toBe(0);
        if (cookie % 2 === 1) await client.read(512);
        answered++;
      }
    }
    expect(store.max_executing).toBe(4);
  });

  test("in-flight bytes are bounded too", async () => {
    const store = new SpyStore(4 * MiB);
    store.hold = true;
    const { client } = await connect({ store }, { max_inflight_bytes: 2 * MiB });
    for (let i = 0; i < 4; i++) client.request({ type: NBD_CMD_READ, cookie: i, offset: 0, length: MiB });
    await flushMicrotasks();
    expect(store.executing).toBe(2);
    store.release();
    await flushMicrotasks();
    expect(store.executing).toBe(2);
    store.release();
    for (let i = 0; i < 4; i++) expect((await client.reply(MiB)).error).toBe(0);
  });

  test("store I/O errors are EIO replies (a failed READ carries no payload); the connection stays", async () => {
    const store = new SpyStore(MiB);
    const { client } = await connect({ store });
    store.fail = true;
    client.request({ type: NBD_CMD_READ, cookie: 1, length: 4096 });
    expect(await client.reply(4096)).toMatchObject({ error: NBD_EIO, data: null });
    client.request({ type: NBD_CMD_WRITE, cookie: 2 }, new Uint8Array(512));
    expect((await client.reply()).error).toBe(NBD_EIO);
    client.request({ type: NBD_CMD_FLUSH, cookie: 3 });
    expect((await client.reply()).error).toBe(NBD_EIO);
    store.fail = false;
    client.request({ type: NBD_CMD_READ, cookie: 4, length: 4096 });
    expect((await client.reply(4096)).error).toBe(0);
  });

  test("flush, FUA, trim and zeroing reach the store as the client asked", async () => {
    const store = new SpyStore(MiB);
    const { client } = await connect({ store });
    client.request({ type: NBD_CMD_WRITE, cookie: 1, offset: 0, flags: NBD_CMD_FLAG_FUA }, pattern(4096, 3));
    await client.reply();
    client.request({ type: NBD_CMD_FLUSH, cookie: 2 });
    await client.reply();
    client.request({ type: NBD_CMD_TRIM, cookie: 3, offset: 0, length: 1024, flags: NBD_CMD_FLAG_FUA });
    await client.reply();
    client.request({ type: NBD_CMD_WRITE_ZEROES, cookie: 4, offset: 1024, length: 1024 });
    await client.reply();
    client.request({ type: NBD_CMD_WRITE_ZEROES, cookie: 5, offset: 0, length: 3 * MiB / 2 - MiB, flags: NBD_CMD_FLAG_NO_HOLE });
    await client.reply();
    expect(store.calls).toEqual([
      "write 0+4096 fua",
      "flush",
      "trim 0+1024",
      "flush",
      "zeroes 1024+1024",
      `write 0+${MiB / 2}`, // NO_HOLE: real zero bytes, not a hole
    ]);
    client.request({ type: NBD_CMD_READ, cookie: 6, length: 4096 });
    expect((await client.reply(4096)).data).toEqual(new Uint8Array(4096));
  });

  test("read-only exports refuse writes, trims and zeroing with EPERM but serve reads", async () => {
    const { client } = await connect({ store: new MemoryStore(MiB), read_only: true });
    client.request({ type: NBD_CMD_WRITE, cookie: 1 }, new Uint8Array(512));
    expect((await client.reply()).error).toBe(NBD_EPERM);
    client.request({ type: NBD_CMD_TRIM, cookie: 2, length: 512 });
    expect((await client.reply()).error).toBe(NBD_EPERM);
    client.request({ type: NBD_CMD_WRITE_ZEROES, cookie: 3, length: 512 });
    expect((await client.reply()).error).toBe(NBD_EPERM);
    client.request({ type: NBD_CMD_READ, cookie: 4, length: 512 });
    expect((await client.reply(512)).error).toBe(0);
  });

  test("DISC answers the requests in flight, then closes", async () => {
    const store = new SpyStore(MiB);
    store.hold = true;
    const { client, server } = await connect({ store });
    client.request({ type: NBD_CMD_WRITE, cookie: 1 }, pattern(512, 9));
    client.request({ type: NBD_CMD_DISC, cookie: 2 });
    client.request({ type: NBD_CMD_READ, cookie: 3, length: 512 }); // after DISC: ignored
    await flushMicrotasks();
    expect(client.closeReason).toBeNull();
    store.release();
    expect(await client.reply()).toMatchObject({ error: 0, cookie: 1 });
    await client.closed;
    await flushMicrotasks();
    expect(store.calls).toEqual(["write 0+512"]);
    expect(server.connection_count).toBe(0);
  });

  test("detach drains the export's connections, then resolves so the store can be closed", async () => {
    const store = new SpyStore(MiB);
    store.hold = true;
    const { client, server, exports } = await connect({ store });
    client.request({ type: NBD_CMD_READ, cookie: 1, length: 512 });
    await flushMicrotasks();
    let detached = false;
    const done = server.detach("disk").then((e) => {
      detached = true;
      return e;
    });
    await flushMicrotasks();
    expect(detached).toBe(false);
    expect(exports.get("disk")).toBeUndefined();
    store.release();
    expect((await client.reply(512)).error).toBe(0);
    expect((await done)?.store).toBe(store);
    await client.closed;
  });

  test("a 32 MiB write and read round-trip", async () => {
    const { client } = await connect({ store: new MemoryStore(64 * MiB) }, {}, 256 * 1024);
    const data = pattern(32 * MiB, 5);
    client.request({ type: NBD_CMD_WRITE, cookie: 1, offset: 3 * MiB }, data);
    expect((await client.reply()).error).toBe(0);
    client.request({ type: NBD_CMD_READ, cookie: 2, offset: 3 * MiB, length: 32 * MiB });
    const r = await client.reply(32 * MiB);
    expect(Buffer.from(r.data!).equals(Buffer.from(data))).toBe(true);
  });

  test("random bytes after the handshake never escape the connection", async () => {
    for (let seed = 1; seed <= 200; seed++) {
      const { client, env, server } = await connect({ store: new MemoryStore(MiB) }, {}, 1 + (seed % 29));
      let x = seed * 7919;
      const rnd = () => ((x = (Math.imul(x, 1103515245) + 12345) >>> 0) >>> 16) & 0xff;
      // Every other run starts with a valid request magic so the field checks see garbage too.
      const junk = Array.from({ length: 28 + (rnd() * 3) }, rnd);
      if (seed % 2 === 0) junk.splice(0, 4, 0x25, 0x60, 0x95, 0x13);
      if (seed % 4 === 0) junk[24] = 0; // keep WRITE payload lengths small enough to finish
      client.send(new Uint8Array(junk));
      await flushMicrotasks();
      await server.close();
      expect(env.logged.filter((l) => l.level === "error")).toEqual([]);
    }
  });

  test("a WRITE above 1 MiB is written in pieces cut at 1 MiB boundaries of the export, answered once all are", async () => {
    const store = new SpyStore(8 * MiB);
    const { client, server } = await connect({ store }, {}, 100_000);
    const data = pattern(3 * MiB + 1000, 9);
    client.request({ type: NBD_CMD_WRITE, cookie: 1, offset: MiB / 2, flags: NBD_CMD_FLAG_FUA }, data);
    expect((await client.reply()).error).toBe(0);
    expect(store.calls).toEqual([`write ${MiB / 2}+${MiB / 2} fua`, `write ${MiB}+${MiB} fua`, `write ${2 * MiB}+${MiB} fua`, `write ${3 * MiB}+${MiB / 2 + 1000} fua`]);
    client.request({ type: NBD_CMD_READ, cookie: 2, offset: MiB / 2, length: data.length });
    expect(Buffer.from((await client.reply(data.length)).data!).equals(Buffer.from(data))).toBe(true);
    // Small writes crossing a boundary are not split.
    client.request({ type: NBD_CMD_WRITE, cookie: 3, offset: MiB - 512 }, pattern(4096, 1));
    expect((await client.reply()).error).toBe(0);
    expect(store.calls.at(-1)).toBe(`write ${MiB - 512}+4096`);
    expect(server.payload_bytes_in_flight).toBe(0);
  });

  test("a WRITE whose data stalls holds only the piece being filled, and nothing once written", async () => {
    const store = new SpyStore(64 * MiB);
    const { client, server } = await connect({ store });
    const data = pattern(32 * MiB, 3);
    const whole = new Uint8Array(28 + data.length);
    whole.set(encodeRequestBytes(1, 0, data.length), 0);
    whole.set(data, 28);
    client.send(whole.subarray(0, 28)); // the header alone: nothing is reserved yet
    await flushMicrotasks();
    expect(server.payload_bytes_in_flight).toBe(0);
    client.send(whole.subarray(28, 28 + 5 * MiB + 100)); // five pieces and a bit
    await flushMicrotasks();
    await flushMicrotasks();
    expect(server.payload_bytes_in_flight).toBeLessThanOrEqual(MiB);
    client.send(whole.subarray(28 + 5 * MiB + 100));
    expect((await client.reply()).error).toBe(0);
    expect(server.payload_bytes_in_flight).toBe(0);
  });

  test("two connections flooding a budget smaller than their demand both finish, in turn", async () => {
    const env = testEnv();
    const exports = new ExportRegistry();
    const store = new SpyStore(16 * MiB);
    exports.add("disk", { store });
    const server = new NbdServer(env, exports, { payload_budget_bytes: 2 * MiB, max_inflight_bytes: 2 * MiB });
    const clients = await Promise.all(
      [0, 1].map(async () => {
        const [c, s] = memConnPair(64 * 1024);
        server.handle(s);
        const client = new RawNbdClient(c);
        await client.greet();
        await client.go("disk");
        return client;
      }),
    );
    let peak = 0;
    const watch = setInterval(() => (peak = Math.max(peak, server.payload_bytes_in_flight)), 0);
    for (const [i, client] of clients.entries()) {
      for (let k = 0; k < 20; k++) client.request({ type: NBD_CMD_WRITE, cookie: k, offset: (i * 20 + k) * 256 * 1024 }, pattern(256 * 1024, k));
    }
    for (const client of clients) for (let k = 0; k < 20; k++) expect((await client.reply()).error).toBe(0);
    clearInterval(watch);
    expect(peak).toBeLessThanOrEqual(2 * MiB);
    expect(server.payload_bytes_in_flight).toBe(0);
    await server.close();
  });

  test("a client that pipelines far beyond the bounds is paused, never disconnected: all 5000 answered", async () => {
    const store = new SpyStore(8 * MiB);
    store.hold = true;
    const { client, server } = await connect({ store }, { max_inflight_requests: 4 });
    const all = new Uint8Array(5000 * (28 + 4096));
    for (let k = 0; k < 5000; k++) all.set(encodeRequestBytes(k, (k % 512) * 4096, 4096), k * (28 + 4096));
    client.send(all);
    await flushMicrotasks();
    expect(store.executing).toBe(4);
    for (let answered = 0; answered < 5000; ) {
      store.release();
      await flushMicrotasks();
      while (client.pending_bytes >= 16) {
        expect((await client.reply()).error).toBe(0);
        answered++;
      }
    }
    expect(client.closeReason).toBe(null);
    expect(server.connection_count).toBe(1);
  });
});

/** A WRITE request header (the data follows separately). */
function encodeRequestBytes(cookie: number, offset: number, length: number): Uint8Array {
  const b = new Uint8Array(28);
  const v = new DataView(b.buffer);
  v.setUint32(0, 0x25609513);
  v.setUint16(6, NBD_CMD_WRITE);
  v.setUint32(12, cookie);
  v.setUint32(16, Math.floor(offset / 2 ** 32));
  v.setUint32(20, offset >>> 0);
  v.setUint32(24, length);
  return b;
}
