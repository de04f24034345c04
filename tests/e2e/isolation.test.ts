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
 * 3. Beneath the client daemon: a client host's own raw connection to a target (the client key,
 *    its daemon's registered client id, any generation) reaches only the extents of the volume
 *    it named at HELLO, and nothing of a deleted volume once the next one holds its extents:
 *    the targets hold every request to the volume's extents, whatever the client daemon does.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { readFileSync, statSync, writeFileSync } from "node:fs";
import type { Conn } from "../../src/engine/net/conn.ts";
import { uuidFromString } from "../../src/engine/uuid.ts";
import { Op, Status } from "../../src/engine/wire/header.ts";
import { NBD_CMD_READ, NBD_CMD_WRITE, NBD_OPT_EXPORT_NAME, NBD_REP_ERR_UNKNOWN } from "../../src/engine/nbd/constants.ts";
import { RawNbdClient } from "../../src/engine/nbd/test-kit.ts";
import { realEnv } from "../../src/engine/runtime/real-env.ts";
import type { VolumeJson } from "../../src/toma/api-types.ts";
import { rawPeer } from "../engine/raw-peer.ts";
import { Cluster, socketOf } from "../support/cluster.ts";
import { ok, requireTool, run } from "../support/proc.ts";

const MiB = 1024 * 1024;
const quiet = { debug() {}, info() {}, warn() {}, error() {} };
const env = realEnv("attacker", quiet);
const net = env.net;
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
        // The old volume's bytes were zeroed before its extents were free: the new one reads zeroes.
        expect(only(await firstMiB(newUri), 0)).toBe(true);
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

describe("a client host's own connection to a target reaches only the volume it is bound to", () => {
  /** The address of the target serving a drive. */
  function targetOf(drive_uuid: string): string {
    const path = c.driveFile(drive_uuid).path;
    return c.target_addrs[c.drives.findIndex((ds) => ds.includes(path))]!;
  }

  /** The client id the cluster's client daemon registered under last (its log says it). */
  function clientId(): number {
    const ids = [...c.client!.output.matchAll(/registered with the TOMA.*client=(\d+)/g)].map((m) => Number(m[1]));
    expect(ids.length).toBeGreaterThan(0);
    return ids.at(-1)!;
  }

  /** The drive byte offset of the first extent a volume has on a drive. */
  function extentOn(vol: VolumeJson, drive_uuid: string): number {
    return vol.columns.find((col) => col.drive_uuid === drive_uuid)!.runs[0]! * vol.extent_size_bytes;
  }

  test("raw READ and WRITE with the client key and the daemon's client id: its own volume's extents only, never a neighbour's or a deleted one's", async () => {
    const striped = ["--capacity", "48M", "--raid-level", "0", "--stripe-width", "3"];
    await c.cli("volume", "create", "--name", "mine", ...striped);
    await c.cli("volume", "create", "--name", "neighbour", ...striped);
    const [mine, neighbour] = [await c.volume("mine"), await c.volume("neighbour")];
    // The same client daemon serves both: its id is registered for both on every drive.
    const [mineUri, neighbourUri] = [await c.attach("mine"), await c.attach("neighbour")];
    await fill(mineUri, 0x31);
    await fill(neighbourUri, 0x42);
    const id = clientId();
    const drive = mine.columns[0]!.drive_uuid;
    const at = { drive_uuid: uuidFromString(drive), client_id: id, generation: 2 ** 40 };
    const read = (p: Awaited<ReturnType<typeof rawPeer>>, offset: number) => p.request({ opcode: Op.READ, ...at, offset, length: 4096 });
    const mineBinding = { uuid: mine.uuid, incarnation: mine.created_seq };

    const bound = await rawPeer(env, targetOf(drive), "client", "attacker", c.clientKey, mineBinding);
    try {
      // The path works: its own volume's first extent reads back what nbdcopy wrote.
      const own = await read(bound, extentOn(mine, drive));
      expect(Status[own.h.status]).toBe("OK");
      expect(only(own.body, 0x31)).toBe(true);
      // The neighbour's extent on the same drive: refused, read or write.
      const other = extentOn(neighbour, drive);
      const r = await read(bound, other);
      expect(`${Status[r.h.status]} ${r.error}`).toMatch(/^REFUSED .*outside the extents of volume/);
      const w = await bound.request({ opcode: Op.WRITE, ...at, offset: other, length: 4096 }, new Uint8Array(4096).fill(0xee));
      expect(Status[w.h.status]).toBe("REFUSED");
      // Bound to the neighbour instead, the same request is served: the binding is what decides.
      const as = await rawPeer(env, targetOf(drive), "client", "attacker", c.clientKey, { uuid: neighbour.uuid, incarnation: neighbour.created_seq });
      const ok = await read(as, other);
      as.close();
      expect(Status[ok.h.status]).toBe("OK");
      expect(only(ok.body, 0x42)).toBe(true);
      // Bound to no volume: nothing.
      const unbound = await rawPeer(env, targetOf(drive), "client", "attacker", c.clientKey);
      const u = await read(unbound, extentOn(mine, drive));
      unbound.close();
      expect(`${Status[u.h.status]} ${u.error}`).toMatch(/^REFUSED .*bound to no volume/);

      // "mine" deleted (its client fenced and detached), and the next volume takes its extents.
      await c.cli("volume", "delete", "mine", "-y", "--force");
      await c.cli("volume", "create", "--name", "next", ...striped);
      const next = await c.volume("next");
      expect(next.columns).toEqual(mine.columns);
      await fill(await c.attach("next"), 0x53);
      // Through the connection bound before the delete, and through a new one naming the
      // deleted volume: nothing of "next".
      const stale = bound.closed ? null : await read(bound, extentOn(mine, drive));
      if (stale !== null) expect(Status[stale.h.status]).toBe("REFUSED");
      const again = await rawPeer(env, targetOf(drive), "client", "attacker", c.clientKey, mineBinding);
      const g = await read(again, extentOn(next, drive));
      const gw = await again.request({ opcode: Op.WRITE, ...at, offset: extentOn(next, drive), length: 4096 }, new Uint8Array(4096).fill(0xee));
      again.close();
      expect(`${Status[g.h.status]} ${g.error}`).toMatch(/^REFUSED .*has no extents on drive/);
      expect(Status[gw.h.status]).toBe("REFUSED");
      expect(only(await firstMiB(neighbourUri), 0x42)).toBe(true);
      expect(only(await firstMiB(await attachedUri("next")), 0x53)).toBe(true);
    } finally {
      bound.close();
      for (const v of ["neighbour", "next"]) {
        await c.cliRaw("client", "detach", "--volume", v);
        await c.cliRaw("volume", "delete", v, "-y");
      }
    }
  }, 180_000);
});

/** The URI the cluster's client daemon serves an attached volume on. */
async function attachedUri(volume: string): Promise<string> {
  return (await c.cliJson<Attachment[]>("client", "show")).find((a) => a.volume === volume)!.uri;
}
