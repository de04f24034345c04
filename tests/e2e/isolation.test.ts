/**
 * No volume ever touches another's data, and each export is reachable only where it was attached:
 * real processes of the compiled binary (3 targets with a cluster key, 1 TOMA, a client daemon),
 * attacked the way a tester would, with standard clients (nbdinfo, nbdcopy, qemu-io) and a raw NBD
 * connection held open where a well-behaved client would have let go.
 *
 * 1. Delete and reuse, for RAID0, concatenated and RAID1: an NBD connection to a volume is held
 *    open while the volume is deleted and the next volume, created on the very same extents, is
 *    written by the same client daemon. Through the held connection nothing of the new volume may
 *    be read and nothing written. A delete without --force is refused while the volume is
 *    attached; --force removes the export (client show no longer lists it).
 * 2. A TCP export lists and serves its own volume only; a unix socket's mode is the operator's.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { readFileSync, statSync, writeFileSync } from "node:fs";
import type { Conn } from "../../src/engine/net/conn.ts";
import { NBD_CMD_READ, NBD_CMD_WRITE, NBD_OPT_EXPORT_NAME, NBD_REP_ERR_UNKNOWN } from "../../src/engine/nbd/constants.ts";
import { RawNbdClient } from "../../src/engine/nbd/test-kit.ts";
import { realEnv } from "../../src/engine/runtime/real-env.ts";
import type { VolumeJson } from "../../src/toma/api-types.ts";
import { Cluster, socketOf } from "../support/cluster.ts";
import { ok, requireTool, run } from "../support/proc.ts";

const MiB = 1024 * 1024;
const quiet = { debug() {}, info() {}, warn() {}, error() {} };
const net = realEnv("attacker", quiet).net;
let c: Cluster;

beforeAll(async () => {
  for (const t of ["nbdinfo", "nbdcopy", "qemu-io"]) requireTool(t);
  c = await new Cluster({ targets: 3, drive_size: "256M" }).start();
}, 120_000);

afterAll(async () => {
  for (const x of conns) x.close();
  await c?.destroy();
});

interface Attachment {
  volume: string;
  uri: string;
}

const shown = async () => (await c.cliJson<Attachment[]>("client", "show")).map((a) => a.volume);

/** The address of an NBD URI for a raw connection: unix:PATH or HOST:PORT. */
function addressOf(uri: string): string {
  if (uri.startsWith("nbd+unix:")) return `unix:${socketOf(uri)}`;
  const m = /^nbd:\/\/([^/]+)\//.exec(uri);
  if (!m) throw new Error(`not an NBD URI: ${uri}`);
  return m[1]!;
}

/** Raw connections the tests opened, closed at the end. */
const conns: Conn[] = [];

/** A raw NBD connection in transmission with `name`, held open by the test. */
async function hold(uri: string, name: string): Promise<RawNbdClient> {
  const conn: Conn = await net.connect(addressOf(uri));
  conns.push(conn);
  const client = new RawNbdClient(conn);
  await client.greet();
  await client.go(name);
  return client;
}

/** What a READ through a held connection got: its bytes, an NBD error, or a closed connection. */
async function heldRead(h: RawNbdClient, offset: number, length: number): Promise<{ kind: "data"; data: Uint8Array } | { kind: "error" | "closed"; why: string }> {
  try {
    h.request({ type: NBD_CMD_READ, cookie: 1, offset, length });
    const r = await h.reply(length);
    return r.error === 0 ? { kind: "data", data: r.data! } : { kind: "error", why: `NBD error ${r.error}` };
  } catch (e) {
    return { kind: "closed", why: (e as Error).message };
  }
}

async function heldWrite(h: RawNbdClient, offset: number, data: Uint8Array): Promise<"written" | string> {
  try {
    h.request({ type: NBD_CMD_WRITE, cookie: 2, offset, length: data.length }, data);
    const r = await h.reply();
    return r.error === 0 ? "written" : `NBD error ${r.error}`;
  } catch (e) {
    return `closed: ${(e as Error).message}`;
  }
}

/** 1 MiB of one byte value, written through the export with nbdcopy. */
async function fill(uri: string, value: number): Promise<void> {
  const path = `${c.dir}/fill-${value}.bin`;
  writeFileSync(path, new Uint8Array(MiB).fill(value));
  await ok(["nbdcopy", "--flush", path, uri], { timeout_ms: 60_000 });
}

async function firstMiB(uri: string): Promise<Uint8Array> {
  const path = `${c.dir}/read-${Date.now()}.bin`;
  await ok(["nbdcopy", uri, path], { timeout_ms: 60_000 });
  return new Uint8Array(readFileSync(path)).subarray(0, MiB);
}

const only = (b: Uint8Array, v: number) => b.every((x) => x === v);

async function until(what: string, cond: () => Promise<boolean>, timeout_ms: number): Promise<boolean> {
  const end = performance.now() + timeout_ms;
  for (;;) {
    if (await cond()) return true;
    if (performance.now() > end) return false;
    await Bun.sleep(100);
  }
}

describe("a deleted volume's export never reaches the next volume on its extents", () => {
  for (const [layout, create] of [
    ["RAID0", ["--raid-level", "0", "--stripe-width", "3"]],
    ["concatenated", ["--raid-level", "concatenated"]],
    ["RAID1", ["--raid-level", "1"]],
  ] as const) {
    test(`${layout}: held connection, delete, new volume on the same extents, same client daemon`, async () => {
      const [oldName, newName] = [`old-${layout}`, `new-${layout}`];
      await c.cli("volume", "create", "--name", oldName, "--capacity", "48M", ...create);
      const oldVol = await c.cliJson<VolumeJson>("volume", "show", oldName);
      const oldUri = await c.attach(oldName);
      await fill(oldUri, 0xa1);
      const held = await hold(oldUri, oldName);
      try {
        expect(await heldRead(held, 0, 4096)).toEqual({ kind: "data", data: new Uint8Array(4096).fill(0xa1) });

        // Refused while attached, naming the client that has it.
        const plain = await c.cliRaw("volume", "delete", oldName, "-y");
        const refusedWhileAttached = plain.code !== 0;
        if (refusedWhileAttached) {
          expect(plain.stderr + plain.stdout).toMatch(new RegExp(`volume '${oldName}' is attached by \\S+ \\(client \\d+\\): detach it there first, or delete with --force`));
          expect(await shown()).toContain(oldName);
          await c.cli("volume", "delete", oldName, "-y", "--force");
        }
        // The export goes: client show no longer lists it, and the daemon says why.
        const tornDown = await until("gone from client show", async () => !(await shown()).includes(oldName), 15_000);

        // The next volume, the same size and layout, takes the very same extents, and the same
        // client daemon (registered on those drives again) writes it.
        await c.cli("volume", "create", "--name", newName, "--capacity", "48M", ...create);
        const newVol = await c.cliJson<VolumeJson>("volume", "show", newName);
        expect(newVol.columns).toEqual(oldVol.columns);
        const newUri = await c.attach(newName);
        await fill(newUri, 0xb2);

        // Through the held connection: never the new volume's bytes, and no write lands.
        const r = await heldRead(held, 0, 4096);
        if (r.kind === "data") expect(`stale export read ${r.data.slice(0, 4).join(",")}...`).toBe("stale export refused or closed");
        const wrote = await heldWrite(held, 0, new Uint8Array(4096).fill(0xee));
        expect(wrote).not.toBe("written");
        expect(only(await firstMiB(newUri), 0xb2)).toBe(true);
        // A new connection to the old export finds nothing there.
        expect((await run(["nbdinfo", oldUri])).code).not.toBe(0);

        expect(refusedWhileAttached).toBe(true);
        expect(tornDown).toBe(true);
        expect(c.client!.output).toMatch(new RegExp(`volume gone: export removed, its NBD connections closed.*volume=${oldName}`));
      } finally {
        await c.cliRaw("client", "detach", "--volume", newName);
        await c.cliRaw("volume", "delete", newName, "-y");
      }
    }, 180_000);
  }
});

describe("each export is reachable only where it was attached", () => {
  test("a TCP export lists and serves its own volume only; the unix socket of another serves only that one", async () => {
    await c.cli("volume", "create", "--name", "tcpvol", "--capacity", "16M", "--raid-level", "concatenated");
    await c.cli("volume", "create", "--name", "private", "--capacity", "16M", "--raid-level", "concatenated");
    const tcpOut = await c.cli("client", "attach", "--volume", "tcpvol", "--nbd-tcp", "127.0.0.1:0");
    const tcpUri = /(nbd:\/\/\S+)/.exec(tcpOut)![1]!;
    const hostPort = addressOf(tcpUri);
    const privUri = await c.attach("private");
    await fill(privUri, 0x77);

    // NBD_OPT_LIST over the TCP listener: its own volume only.
    const list = JSON.parse(await ok(["nbdinfo", "--list", "--json", `nbd://${hostPort}`])) as { exports: { "export-name": string }[] };
    expect(list.exports.map((e) => e["export-name"])).toEqual(["tcpvol"]);
    // The private volume by name over TCP: refused, by nbdcopy and by qemu-io, read or write.
    const copy = await run(["nbdcopy", `nbd://${hostPort}/private`, "-"], { timeout_ms: 30_000 });
    expect(copy.code).not.toBe(0);
    expect(copy.stdout.length).toBe(0);
    const io = await run(["qemu-io", "-f", "raw", "-c", "write -P 0x66 0 4096", `nbd://${hostPort}/private`], { timeout_ms: 30_000 });
    expect(io.stdout + io.stderr).not.toMatch(/wrote 4096\/4096/);
    // Raw: GO is ERR_UNKNOWN, EXPORT_NAME closes.
    const rawConn = await net.connect(hostPort);
    conns.push(rawConn);
    const raw = new RawNbdClient(rawConn);
    await raw.greet();
    await expect(raw.go("private")).rejects.toThrow(`0x${NBD_REP_ERR_UNKNOWN.toString(16)}`);
    raw.sendOption(NBD_OPT_EXPORT_NAME, new TextEncoder().encode("private"));
    expect(await raw.closed).toBeDefined();
    // The other way round: the unix socket of "private" offers nothing but "private".
    const plist = JSON.parse(await ok(["nbdinfo", "--list", "--json", `nbd+unix://?socket=${socketOf(privUri)}`])) as { exports: { "export-name": string }[] };
    expect(plist.exports.map((e) => e["export-name"])).toEqual(["private"]);
    expect((await run(["nbdcopy", `nbd+unix:///tcpvol?socket=${socketOf(privUri)}`, "-"], { timeout_ms: 30_000 })).code).not.toBe(0);
    expect(only(await firstMiB(privUri), 0x77)).toBe(true);

    // Raw OPT_LIST too, for the record: one REP_SERVER, then ACK.
    const listConn = await net.connect(hostPort);
    conns.push(listConn);
    const lister = new RawNbdClient(listConn);
    await lister.greet();
    expect((await lister.list()).map((e) => e.name)).toEqual(["tcpvol"]);

    await c.cli("client", "detach", "--volume", "tcpvol");
    // Its listener went with it.
    expect((await run(["nbdinfo", "--list", `nbd://${hostPort}`], { timeout_ms: 30_000 })).code).not.toBe(0);
  }, 120_000);

  test("an explicit export list offers the volumes it names, no others", async () => {
    await c.cli("volume", "create", "--name", "shared", "--capacity", "16M", "--raid-level", "concatenated");
    const out = await c.cli("client", "attach", "--volume", "shared", "--nbd-tcp", "127.0.0.1:0", "--export-list", "shared,private");
    const hostPort = addressOf(/(nbd:\/\/\S+)/.exec(out)![1]!);
    const list = JSON.parse(await ok(["nbdinfo", "--list", "--json", `nbd://${hostPort}`])) as { exports: { "export-name": string }[] };
    expect(list.exports.map((e) => e["export-name"]).sort()).toEqual(["private", "shared"]);
    expect(only(await firstMiB(`nbd://${hostPort}/private`), 0x77)).toBe(true);
    await c.cli("client", "detach", "--volume", "shared");
  }, 60_000);

  test("a unix socket is its owner's only by default; --socket-mode and --socket-group set what the operator chooses", async () => {
    const priv = statSync(socketOf((await c.cliJson<Attachment[]>("client", "show")).find((a) => a.volume === "private")!.uri));
    expect((priv.mode & 0o777).toString(8)).toBe("600");
    await c.cli("volume", "create", "--name", "grouped", "--capacity", "16M", "--raid-level", "concatenated");
    const group = readFileSync("/etc/group", "utf8").split("\n").find((l) => l.startsWith("disk:")) ? "disk" : "6";
    const gid = group === "disk" ? Number(readFileSync("/etc/group", "utf8").split("\n").find((l) => l.startsWith("disk:"))!.split(":")[2]) : 6;
    const out = await c.cli("client", "attach", "--volume", "grouped", "--socket-mode", "0660", "--socket-group", group);
    const st = statSync(socketOf(/(nbd\+unix:\/\/\S+)/.exec(out)![1]!));
    expect((st.mode & 0o777).toString(8)).toBe("660");
    expect(st.gid).toBe(gid);
    // Bad input: refused, nothing attached.
    const bad = await c.cliRaw("client", "attach", "--volume", "private2", "--socket-mode", "999");
    expect(bad.code).not.toBe(0);
    expect(bad.stderr + bad.stdout).toMatch(/--socket-mode '999' is not an octal mode/);
    const nogroup = await c.cliRaw("client", "attach", "--volume", "grouped2", "--socket-group", "no-such-group-here");
    expect(nogroup.code).not.toBe(0);
    expect(nogroup.stderr + nogroup.stdout).toMatch(/no group named 'no-such-group-here'/);
    await c.cli("client", "detach", "--volume", "grouped");
  }, 60_000);
});
