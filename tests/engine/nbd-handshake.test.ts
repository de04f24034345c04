/** NBD handshake against an in-memory Conn: what a client sees for good and bad option haggling. */
import { describe, expect, test } from "bun:test";
import { MemoryStore } from "../../src/engine/drive/memory-store.ts";
import {
  NBD_FLAG_CAN_MULTI_CONN,
  NBD_FLAG_FIXED_NEWSTYLE,
  NBD_FLAG_HAS_FLAGS,
  NBD_FLAG_NO_ZEROES,
  NBD_FLAG_READ_ONLY,
  NBD_FLAG_SEND_FLUSH,
  NBD_FLAG_SEND_FUA,
  NBD_FLAG_SEND_TRIM,
  NBD_FLAG_SEND_WRITE_ZEROES,
  NBD_INFO_BLOCK_SIZE,
  NBD_INFO_DESCRIPTION,
  NBD_INFO_EXPORT,
  NBD_INFO_NAME,
  NBD_OPT_ABORT,
  NBD_OPT_EXPORT_NAME,
  NBD_OPT_INFO,
  NBD_OPT_LIST,
  NBD_OPT_STARTTLS,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_OPTS_MAGIC,
  NBD_REP_ACK,
  NBD_REP_ERR_INVALID,
  NBD_REP_ERR_UNKNOWN,
  NBD_REP_ERR_UNSUP,
  NBD_REP_INFO,
} from "../../src/engine/nbd/constants.ts";
import { ExportRegistry } from "../../src/engine/nbd/exports.ts";
import { NbdServer } from "../../src/engine/nbd/server.ts";
import { memConnPair, RawNbdClient, testEnv } from "../../src/engine/nbd/test-kit.ts";

const MiB = 1024 * 1024;
const utf8 = new TextEncoder();

function setup(chunk = 1 << 30) {
  const env = testEnv();
  const exports = new ExportRegistry();
  exports.add("vol1", { store: new MemoryStore(8 * MiB), description: "first volume" });
  exports.add("ro", { store: new MemoryStore(1 * MiB), read_only: true });
  const server = new NbdServer(env, exports);
  const [clientSide, serverSide] = memConnPair(chunk);
  const client = new RawNbdClient(clientSide);
  server.handle(serverSide);
  return { env, exports, server, client };
}

function infoRequest(name: string, infos: number[]): Uint8Array {
  const n = utf8.encode(name);
  const d = new Uint8Array(4 + n.length + 2 + 2 * infos.length);
  const v = new DataView(d.buffer);
  v.setUint32(0, n.length);
  d.set(n, 4);
  v.setUint16(4 + n.length, infos.length);
  infos.forEach((t, i) => v.setUint16(6 + n.length + 2 * i, t));
  return d;
}

const flushMicrotasks = () => new Promise((r) => setImmediate(r));

describe("nbd handshake", () => {
  test("greeting is NBDMAGIC, IHAVEOPT, FIXED_NEWSTYLE|NO_ZEROES", async () => {
    const { client } = setup();
    const g = await client.read(18);
    const v = new DataView(g.buffer);
    expect(new TextDecoder().decode(g.subarray(0, 8))).toBe("NBDMAGIC");
    expect(v.getBigUint64(8)).toBe(NBD_OPTS_MAGIC);
    expect(v.getUint16(16)).toBe(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
  });

  test("unknown client flags close the connection and are logged", async () => {
    const { client, env } = setup();
    await client.read(18);
    client.send(new Uint8Array([0xde, 0xad, 0xbe, 0xef]));
    expect(await client.closed).toBeDefined();
    expect(env.logged.some((l) => l.level === "warn" && String(l.fields?.reason).includes("client flags"))).toBe(true);
  });

  test("bad option magic closes the connection", async () => {
    const { client } = setup();
    await client.greet();
    client.send(utf8.encode("GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
    await client.closed;
  });

  test("unknown and unsupported options get ERR_UNSUP and the handshake continues", async () => {
    const { client } = setup();
    await client.greet();
    for (const opt of [NBD_OPT_STRUCTURED_REPLY, NBD_OPT_STARTTLS, 4242]) {
      client.sendOption(opt, new Uint8Array(3));
      const r = await client.readOptionReply();
      expect(r.option).toBe(opt);
      expect(r.type).toBe(NBD_REP_ERR_UNSUP);
    }
    const { size } = await client.go("vol1");
    expect(size).toBe(8 * MiB);
  });

  test("GO on an unknown export gets ERR_UNKNOWN and the connection stays usable", async () => {
    const { client } = setup();
    await client.greet();
    await expect(client.go("nope")).rejects.toThrow(/0x80000006/);
    expect((await client.go("vol1")).size).toBe(8 * MiB);
  });

  test("GO advertises the transmission flags, multi-conn included; read-only exports say so", async () => {
    const { client } = setup();
    await client.greet();
    const { flags } = await client.go("vol1");
    expect(flags).toBe(
      NBD_FLAG_HAS_FLAGS |
        NBD_FLAG_SEND_FLUSH |
        NBD_FLAG_SEND_FUA |
        NBD_FLAG_SEND_TRIM |
        NBD_FLAG_SEND_WRITE_ZEROES |
        NBD_FLAG_CAN_MULTI_CONN,
    );
    const ro = setup();
    await ro.client.greet();
    expect((await ro.client.go("ro")).flags & NBD_FLAG_READ_ONLY).toBe(NBD_FLAG_READ_ONLY);
  });

  test("LIST names every export with its description; LIST with data is ERR_INVALID", async () => {
    const { client } = setup();
    await client.greet();
    expect((await client.list()).map((e) => `${e.name}|${e.description}`)).toEqual(["vol1|first volume", "ro|"]);
    client.sendOption(NBD_OPT_LIST, new Uint8Array(1));
    expect((await client.readOptionReply()).type).toBe(NBD_REP_ERR_INVALID);
  });

  test("INFO answers export, block size, name and description, and stays in the handshake", async () => {
    const { client } = setup();
    await client.greet();
    client.sendOption(NBD_OPT_INFO, infoRequest("vol1", [NBD_INFO_NAME, NBD_INFO_DESCRIPTION, NBD_INFO_BLOCK_SIZE]));
    const infos = new Map<number, Uint8Array>();
    for (;;) {
      const r = await client.readOptionReply();
      if (r.type === NBD_REP_ACK) break;
      expect(r.type).toBe(NBD_REP_INFO);
      infos.set(new DataView(r.data.buffer).getUint16(0), r.data.subarray(2));
    }
    expect([...infos.keys()].sort()).toEqual([NBD_INFO_EXPORT, NBD_INFO_NAME, NBD_INFO_DESCRIPTION, NBD_INFO_BLOCK_SIZE]);
    const bs = new DataView(infos.get(NBD_INFO_BLOCK_SIZE)!.slice().buffer);
    expect([bs.getUint32(0), bs.getUint32(4), bs.getUint32(8)]).toEqual([512, 4096, 32 * MiB]);
    expect(new TextDecoder().decode(infos.get(NBD_INFO_DESCRIPTION))).toBe("first volume");
    expect((await client.go("vol1")).size).toBe(8 * MiB); // still negotiating after INFO
  });

  test("malformed INFO data is ERR_INVALID, never trusted", async () => {
    const { client } = setup();
    await client.greet();
    const bad = infoRequest("vol1", []);
    new DataView(bad.buffer).setUint32(0, 0xffffffff); // name length beyond the data
    client.sendOption(NBD_OPT_INFO, bad);
    expect((await client.readOptionReply()).type).toBe(NBD_REP_ERR_INVALID);
    client.sendOption(NBD_OPT_INFO, new Uint8Array(2));
    expect((await client.readOptionReply()).type).toBe(NBD_REP_ERR_INVALID);
    const extra = infoRequest("vol1", [NBD_INFO_NAME]);
    client.sendOption(NBD_OPT_INFO, extra.subarray(0, extra.length - 1));
    expect((await client.readOptionReply()).type).toBe(NBD_REP_ERR_INVALID);
  });

  test("INFO on an unknown export is ERR_UNKNOWN", async () => {
    const { client } = setup();
    await client.greet();
    client.sendOption(NBD_OPT_INFO, infoRequest("missing", []));
    expect((await client.readOptionReply()).type).toBe(NBD_REP_ERR_UNKNOWN);
  });

  test("EXPORT_NAME answers size and flags (no padding with NO_ZEROES), unknown name closes", async () => {
    const { client } = setup();
    await client.greet();
    client.sendOption(NBD_OPT_EXPORT_NAME, utf8.encode("vol1"));
    const r = await client.read(10);
    const v = new DataView(r.buffer);
    expect(v.getUint32(0) * 2 ** 32 + v.getUint32(4)).toBe(8 * MiB);
    expect(v.getUint16(8) & NBD_FLAG_HAS_FLAGS).toBe(NBD_FLAG_HAS_FLAGS);
    await flushMicrotasks();
    expect(client.pending_bytes).toBe(0);

    const other = setup();
    await other.client.greet();
    other.client.sendOption(NBD_OPT_EXPORT_NAME, utf8.encode("nope"));
    await other.client.closed;
  });

  test("EXPORT_NAME without NO_ZEROES sends the 124 zero bytes", async () => {
    const { client } = setup();
    await client.read(18);
    client.send(new Uint8Array([0, 0, 0, 1])); // FIXED_NEWSTYLE only
    client.sendOption(NBD_OPT_EXPORT_NAME, utf8.encode("vol1"));
    const r = await client.read(134);
    expect(r.subarray(10).every((b) => b === 0)).toBe(true);
  });

  test("option data over 64 KiB closes the connection without reading it", async () => {
    const { client, env } = setup();
    await client.greet();
    const h = new Uint8Array(16);
    const v = new DataView(h.buffer);
    v.setBigUint64(0, NBD_OPTS_MAGIC);
    v.setUint32(8, NBD_OPT_INFO);
    v.setUint32(12, 0xfffffff0);
    client.send(h);
    await client.closed;
    expect(env.logged.some((l) => l.level === "warn")).toBe(true);
  });

  test("ABORT is acknowledged, then the connection closes", async () => {
    const { client } = setup();
    await client.greet();
    client.sendOption(NBD_OPT_ABORT);
    expect((await client.readOptionReply()).type).toBe(NBD_REP_ACK);
    await client.closed;
  });

  test("a client that never finishes the handshake is closed at the deadline", async () => {
    const { client, env, server } = setup();
    await client.greet();
    await flushMicrotasks();
    expect(server.connection_count).toBe(1);
    env.fireTimers();
    await client.closed;
    await flushMicrotasks();
    expect(server.connection_count).toBe(0);
  });

  test("random bytes never escape the connection, in any chunking", async () => {
    for (let seed = 1; seed <= 300; seed++) {
      const { client, env } = setup(1 + (seed % 13));
      let x = seed;
      const rnd = () => ((x = (Math.imul(x, 1103515245) + 12345) >>> 0) >>> 16) & 0xff;
      // Half the runs start with a valid client flags word so the option parser sees garbage too.
      const prefix = seed % 2 === 0 ? [0, 0, 0, 3, ...new Uint8Array(new BigUint64Array([0n]).buffer)] : [];
      if (seed % 4 === 0) prefix.splice(4, 8, 0x49, 0x48, 0x41, 0x56, 0x45, 0x4f, 0x50, 0x54);
      const junk = new Uint8Array([...prefix, ...Array.from({ length: 1 + (rnd() * 7) }, rnd)]);
      client.send(junk);
      await flushMicrotasks();
      env.fireTimers();
      await client.closed;
      expect(env.logged.filter((l) => l.level === "error")).toEqual([]);
    }
  });
});

describe("a listener's view: one listener, one volume", () => {
  function viewed(names: string[]) {
    const env = testEnv();
    const exports = new ExportRegistry();
    exports.add("mine", { store: new MemoryStore(2 * MiB), description: "its own volume" });
    exports.add("other", { store: new MemoryStore(4 * MiB), description: "attached on another socket" });
    const server = new NbdServer(env, exports);
    const [clientSide, serverSide] = memConnPair(1 << 30);
    const client = new RawNbdClient(clientSide);
    const view = exports.view(names);
    server.handle(serverSide, view);
    return { exports, server, client, view };
  }

  const listed = async (client: RawNbdClient) => (await client.list()).map((e) => e.name);

  test("LIST names only the view's export; GO and INFO on another export are ERR_UNKNOWN; EXPORT_NAME of it closes", async () => {
    const { client } = viewed(["mine"]);
    await client.greet();
    expect(await listed(client)).toEqual(["mine"]);
    await expect(client.go("other")).rejects.toThrow(/0x80000006/);
    client.sendOption(NBD_OPT_INFO, infoRequest("other", []));
    expect((await client.readOptionReply()).type).toBe(NBD_REP_ERR_UNKNOWN);
    client.sendOption(NBD_OPT_EXPORT_NAME, utf8.encode("other"));
    expect(await client.closed).toBeDefined();
  });

  test("an export list offers several; a listed name attached later shows up, a removed one vanishes", async () => {
    const { client, exports } = viewed(["mine", "other", "later"]);
    await client.greet();
    expect(await listed(client)).toEqual(["mine", "other"]);
    exports.add("later", { store: new MemoryStore(1 * MiB) });
    exports.remove("other");
    expect(await listed(client)).toEqual(["mine", "later"]);
    expect((await client.go("later")).size).toBe(1 * MiB);
  });

  test("stopView closes the connections accepted through that view only", async () => {
    const a = viewed(["mine"]);
    await a.client.greet();
    expect((await a.client.go("mine")).size).toBe(2 * MiB);
    const [otherSide, serverSide] = memConnPair(1 << 30);
    const b = new RawNbdClient(otherSide);
    a.server.handle(serverSide, a.exports.view(["other"]));
    await b.greet();
    a.server.stopView(a.view, "listener closed");
    expect(await a.client.closed).toBeDefined();
    expect((await b.go("other")).size).toBe(4 * MiB);
  });
});
