/**
 * The cluster's keys against an attacker, on live daemons of the compiled binary (docs/security.md):
 *
 * - a compromised client host, which holds the client key: its hand-made HELLO naming the TOMA's
 *   role and name is served as a client (no metadata, no FENCE or CLAIM, no unfenced I/O, the
 *   TOMA's connection not superseded); with the CLI it cannot create, delete or evict; it cannot
 *   act for (fence out) another client daemon;
 * - a listener on the network, who records management requests: a request replayed byte for
 *   byte, or altered, is a 401 and changes nothing (a volume re-created or re-deleted, a live
 *   client fenced out);
 * - nobody without a key: refused by targets and the TOMA; no daemon runs without a key unless
 *   told --insecure, which it announces.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { hostname } from "node:os";
import { readFileSync } from "node:fs";
import { realEnv } from "../../src/engine/runtime/real-env.ts";
import { uuidFromString } from "../../src/engine/uuid.ts";
import { encodeBody } from "../../src/engine/wire/control.ts";
import { Flag, Op, Status } from "../../src/engine/wire/header.ts";
import { TomaApiError, tomaClient } from "../../src/toma/api-client.ts";
import { rawPeer } from "../engine/raw-peer.ts";
import { Cluster } from "../support/cluster.ts";
import { Daemon, NVMESH, ok, requireTool, run } from "../support/proc.ts";
import { RecordingProxy, replay } from "../support/recording-proxy.ts";

const quiet = { debug() {}, info() {}, warn() {}, error() {} };
const env = realEnv("attacker", quiet);

let c: Cluster;
let uri = "";
let checksum = "";
let proxy: RecordingProxy;
let victim: Daemon;
let victimUri = "";
const victimRun = () => `${c.dir}/run-victim`;

function hostPort(a: string) {
  const i = a.lastIndexOf(":");
  return { hostname: a.slice(0, i), port: Number(a.slice(i + 1)) };
}

async function volumeChecksum(): Promise<string> {
  await ok(["nbdcopy", uri, `${c.dir}/snap.raw`]);
  return Bun.hash(readFileSync(`${c.dir}/snap.raw`)).toString();
}

const volumeNames = async () => (await c.cliJson<{ name: string }[]>("volume", "show")).map((v) => v.name).sort();

/** The drive uuid served by target t. */
function driveOf(t: number): string {
  return [...c.drive_files.values()].find((f) => f.path === c.drives[t]![0])!.uuid;
}

beforeAll(async () => {
  for (const t of ["nbdcopy", "qemu-io"]) requireTool(t);
  c = await new Cluster({ targets: 2, drive_size: "256M" }).start();
  await c.cli("volume", "create", "--name", "m", "--capacity", "32M", "--raid-level", "1");
  uri = await c.attach("m");
  await ok(["qemu-io", "-f", "raw", "-c", "write -P 0x5a 0 32M", uri]);
  checksum = await volumeChecksum();
  // A second client host whose management traffic a listener on the network records.
  proxy = new RecordingProxy(hostPort(c.toma_addr));
  victim = new Daemon("client victim", [NVMESH, "client", "serve", "--run-dir", victimRun(), "-m", proxy.address, "--name", "victim"], c.clientKeyEnv);
  await victim.waitFor(/client ready/);
  const out = await ok([NVMESH, "client", "attach", "--volume", "m", "--run-dir", victimRun()]);
  victimUri = /(nbd\+unix:\/\/\S+)/.exec(out)![1]!;
}, 120_000);

afterAll(async () => {
  await victim?.stop();
  proxy?.stop();
  await c?.destroy();
});

describe("a compromised client host (it holds the client key)", () => {
  test("a hand-made HELLO naming the TOMA's role and name is served as a client: no metadata, FENCE, CLAIM or unfenced I/O", async () => {
    const drive = uuidFromString(driveOf(0));
    const key = c.clientKey!;
    for (const role of ["toma", "admin"] as const) {
      const p = await rawPeer(env, c.target_addrs[0]!, role, hostname(), key);
      const refused: [string, Awaited<ReturnType<typeof p.request>>][] = [
        ["META_WRITE", await p.request({ opcode: Op.META_WRITE, drive_uuid: drive }, encodeBody({ generation: 2 ** 40, payload: new Uint8Array([1, 2, 3]) }))],
        ["META_READ", await p.request({ opcode: Op.META_READ, drive_uuid: drive })],
        ["CLAIM", await p.request({ opcode: Op.CLAIM, drive_uuid: drive }, encodeBody({ cluster_uuid: "11111111-2222-4333-8444-555555555555" }))],
        ["FENCE", await p.request({ opcode: Op.FENCE, drive_uuid: drive }, encodeBody({ replace: true, set: [], remove: [] }))],
        ["LOCK_LIST", await p.request({ opcode: Op.LOCK_LIST, drive_uuid: drive })],
        ["DIRTY_INHERITED", await p.request({ opcode: Op.DIRTY_INHERITED, drive_uuid: drive, length: 1 << 20 })],
        ["unfenced READ", await p.request({ opcode: Op.READ, drive_uuid: drive, offset: 0, length: 4096, client_id: 123456789 })],
        ["unfenced WRITE", await p.request({ opcode: Op.WRITE, drive_uuid: drive, offset: 0, length: 4096, client_id: 123456789 }, new Uint8Array(4096))],
        ["LOSSY_COPY WRITE", await p.request({ opcode: Op.WRITE, flags: Flag.LOSSY_COPY, drive_uuid: drive, offset: 0, length: 4096 }, new Uint8Array(4096))],
        ["unlock of others' locks", await p.request({ opcode: Op.UNLOCK, drive_uuid: drive, offset: 0, length: 1 << 20, client_id: 123456789 })],
      ];
      for (const [what, a] of refused) {
        // The unlock is fenced like any data-path request of an unregistered client.
        expect(`${what}: ${Status[a.h.status]}`).toBe(`${what}: REFUSED`);
      }
      p.close();
    }
    await c.targets[0]!.waitFor(/served as a client/);
    // The TOMA's own connection was not superseded by the fake one (a client's may be: the name
    // is not authenticated, docs/security.md): the cluster carries on.
    expect(c.targets[0]!.output).not.toMatch(/superseded.*requester=toma:/);
    const targets = await c.cliJson<{ state: string }[]>("target", "show");
    expect(targets.every((t) => t.state === "up")).toBe(true);
    expect(await volumeChecksum()).toBe(checksum);
    expect((await c.volume("m")).state).toBe("online");
  });

  test("with the client key the CLI cannot create, delete or evict (403), and nothing changes", async () => {
    const as = { env: { ...c.clientKeyEnv, NVMESH_MANAGEMENT: c.toma_addr } };
    const before = await volumeNames();
    const attempts = [
      ["volume", "create", "--name", "evil", "--capacity", "16M"],
      ["volume", "delete", "m", "-y"],
      ["drive", "evict", driveOf(1)],
    ];
    for (const args of attempts) {
      const r = await run([NVMESH, ...args], as);
      expect(r.code).not.toBe(0);
      expect(r.stdout + r.stderr).toMatch(/needs the server key.*signed with the client key/);
    }
    expect(await volumeNames()).toEqual(before);
    expect((await c.volume("m")).legs).toEqual(["ok", "ok"]);
    // It may read the cluster's state, and register its own client daemon: what a client host does.
    const api = tomaClient(c.toma_addr, { key: c.clientKey });
    expect((await api.volumes()).map((v) => v.name).sort()).toEqual(before);
  });

  test("it cannot act for another client daemon: fencing the victim out is refused (403)", async () => {
    const id = victimId();
    const api = tomaClient(c.toma_addr, { key: c.clientKey });
    for (const [method, path] of [["DELETE", `/v1/clients/${id}`], ["POST", `/v1/clients/${id}/report`]] as const) {
      const e = (await api.call(method, path, method === "POST" ? { volume: "m", column: 0, error: "fake" } : undefined).catch((x) => x)) as TomaApiError;
      expect(e).toBeInstanceOf(TomaApiError);
      expect(e.status).toBe(403);
      expect(e.message).toMatch(new RegExp(`only client ${id} itself`));
    }
    await victimStillServes();
  });
});

/** The victim's client id, as a listener reads it in the paths of its requests. */
function victimId(): string {
  const ids = proxy.requests().map((r) => /^\S+ \/v1\/clients\/(\d+)\//.exec(r)?.[1]).filter((x) => x !== undefined);
  expect(ids.length).toBeGreaterThan(0);
  return ids.at(-1)!;
}

/** The victim was never fenced out: its export reads and writes, and the TOMA never let it go. */
async function victimStillServes(): Promise<void> {
  await ok(["qemu-io", "-f", "raw", "-c", "write -P 0x77 1M 64k", "-c", "read -P 0x77 1M 64k", victimUri]);
  await ok(["qemu-io", "-f", "raw", "-c", "write -P 0x5a 1M 64k", victimUri]);
  expect(c.toma!.output).not.toMatch(/client left: fencing it out/);
  expect(await volumeChecksum()).toBe(checksum);
}

describe("a listener on the network (it records management requests)", () => {
  test("a captured volume create, replayed byte for byte after the volume was deleted: 401, not re-created", async () => {
    await c.cli("volume", "create", "--name", "tmp", "--capacity", "16M", "-m", proxy.address);
    const create = proxy.requests().filter((r) => r.startsWith("POST /v1/volumes ")).at(-1)!;
    expect(create).toMatch(/"name":"tmp"/);
    await c.cli("volume", "delete", "tmp", "-y");
    const r = await replay(hostPort(c.toma_addr), create, 1);
    expect(r.statuses).toEqual([401]);
    expect(r.text).toMatch(/accepted once/);
    expect(await volumeNames()).toEqual(["m"]);
  });

  test("a captured volume delete, replayed after the name was created again: 401, the new volume stays", async () => {
    await c.cli("volume", "create", "--name", "tmp2", "--capacity", "16M");
    await c.cli("volume", "delete", "tmp2", "-y", "-m", proxy.address);
    const del = proxy.requests().filter((r) => r.startsWith("DELETE /v1/volumes/tmp2 ")).at(-1)!;
    await c.cli("volume", "create", "--name", "tmp2", "--capacity", "16M");
    const r = await replay(hostPort(c.toma_addr), del, 1);
    expect(r.statuses).toEqual([401]);
    expect(await volumeNames()).toEqual(["m", "tmp2"]);
    // Altered into a delete of another volume (the attached one): its signature no longer fits.
    const altered = del.replace("DELETE /v1/volumes/tmp2 ", "DELETE /v1/volumes/m ");
    const a = await replay(hostPort(c.toma_addr), altered, 1);
    expect(a.statuses).toEqual([401]);
    expect(a.text).toMatch(/not this cluster's/);
    await c.cli("volume", "delete", "tmp2", "-y");
    expect(await volumeNames()).toEqual(["m"]);
  });

  test("a captured request of a client daemon, replayed, or altered into fencing that client out: 401, the client serves on", async () => {
    const id = victimId();
    const watch = proxy.requests().filter((r) => r.startsWith(`GET /v1/clients/${id}/watch?`)).at(-1)!;
    expect(watch).toMatch(/known=\d+&stable=\d+/);
    const again = await replay(hostPort(c.toma_addr), watch, 1);
    expect(again.statuses).toEqual([401]);
    // Its request line made a DELETE of the victim's registration (what fences a client out).
    const fence = watch.replace(/^GET \S+ /, `DELETE /v1/clients/${id} `);
    const f = await replay(hostPort(c.toma_addr), fence, 1);
    expect(f.statuses).toEqual([401]);
    await victimStillServes();
  });
});

describe("nobody without a key", () => {
  test("a keyless requester gets nothing from a target, and a 401 from the TOMA", async () => {
    for (const a of c.target_addrs) {
      const p = await rawPeer(env, a, "toma", "nokey");
      const r = await p.request({ opcode: Op.META_READ, drive_uuid: uuidFromString(driveOf(0)) });
      expect(Status[r.h.status]).toBe("NOT_AUTHENTICATED");
      for (let i = 0; i < 100 && !p.closed; i++) await Bun.sleep(10);
      expect(p.closed).toBe(true);
    }
    const r = await fetch(`http://${c.toma_addr}/v1/volumes`, { method: "POST", body: JSON.stringify({ name: "x", capacity_bytes: 1 << 20, raid_level: "0" }) });
    expect(r.status).toBe(401);
    expect(await volumeNames()).toEqual(["m"]);
  });

  test("no daemon starts without a key unless told --insecure, and then it says so loudly", async () => {
    const drive = (await c.formatDrive(`${c.dir}/lab.img`)).path;
    const none = { env: { NVMESH_KEY_FILE: "" }, timeout_ms: 20_000 };
    const daemons = [
      ["target", "serve", "--drive", drive, "--listen", "127.0.0.1:0"],
      ["toma", "run", "--target", "127.0.0.1:1", "--listen", "127.0.0.1:0"],
      ["client", "serve", "-m", "127.0.0.1:1", "--run-dir", `${c.dir}/run-lab`],
    ];
    for (const args of daemons) {
      const r = await run([NVMESH, ...args], none);
      expect(r.code).not.toBe(0);
      expect(r.stdout + r.stderr).toMatch(/needs a cluster key.*--insecure runs it without one, for labs only/s);
    }
    const ready = [/target ready/, /management API on/, /client ready/];
    for (const [i, args] of daemons.entries()) {
      const d = new Daemon(`lab ${args[0]}`, [NVMESH, ...args, "--insecure"], { NVMESH_KEY_FILE: "" });
      try {
        await d.waitFor(ready[i]!);
        expect(d.output).toMatch(/INSECURE: .* runs without a cluster key/);
      } finally {
        await d.stop();
      }
    }
    // --insecure with a key is a contradiction, refused.
    const both = await run([NVMESH, ...daemons[0]!, "--insecure"], { env: c.keyEnv });
    expect(both.code).not.toBe(0);
    expect(both.stdout + both.stderr).toMatch(/--insecure and a cluster key/);
    // A target or a TOMA will not run on a client key.
    const client = await run([NVMESH, ...daemons[0]!], { env: c.clientKeyEnv });
    expect(client.code).not.toBe(0);
    expect(client.stdout + client.stderr).toMatch(/needs the cluster's server key/);
  });
});
