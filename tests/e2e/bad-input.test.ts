/**
 * Bad input against live daemons of the compiled binary: random bytes and truncated frames on the
 * target, TOMA and NBD ports, out-of-range NBD requests, wrong CLI values. Each gets a clear error
 * and changes nothing; every daemon stays alive and the data stays intact.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { chmodSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { connectNbd } from "../../src/engine/nbd/client.ts";
import { realEnv } from "../../src/engine/runtime/real-env.ts";
import { encodeFrame, emptyHeader, Op } from "../../src/engine/wire/header.ts";
import { Cluster, socketOf } from "../support/cluster.ts";
import { NVMESH, ok, requireTool, run } from "../support/proc.ts";
import { parseKeyFile } from "../../src/engine/wire/cluster-key.ts";
import { openSession } from "../../src/engine/wire/session.ts";
import { formatAuthorization, requestSignature } from "../../src/toma/api-auth.ts";

/** A management request signed with `key` (this cluster's server key by default), as sent. */
async function signedFetch(method: string, path: string, body: string, key = c.key!.key, signer = "server"): Promise<Response> {
  const nonce = ((await (await fetch(`http://${c.toma_addr}/v1/nonce`)).json()) as { nonce: string }).nonce;
  const authorization = formatAuthorization(signer, nonce, requestSignature(key, signer, nonce, method, path, body));
  return await fetch(`http://${c.toma_addr}${path}`, { method, body, headers: { "content-type": "application/json", authorization } });
}

let c: Cluster;
let uri = "";
let checksum = "";

async function volumeChecksum(): Promise<string> {
  await ok(["nbdcopy", uri, `${c.dir}/snap.raw`]);
  return Bun.hash(readFileSync(`${c.dir}/snap.raw`)).toString();
}

/** Sends bytes to a TCP or unix address, waits a little for the peer's reaction, closes. */
async function blast(addr: { hostname: string; port: number } | { unix: string }, bytes: Uint8Array): Promise<void> {
  const sock = await Bun.connect({ ...addr, socket: { data() {}, error() {} } } as Parameters<typeof Bun.connect>[0]);
  sock.write(bytes);
  await Bun.sleep(100);
  sock.end();
}

function randomBytes(n: number): Uint8Array {
  const b = new Uint8Array(n);
  crypto.getRandomValues(b);
  return b;
}

function hostPort(a: string) {
  const i = a.lastIndexOf(":");
  return { hostname: a.slice(0, i), port: Number(a.slice(i + 1)) };
}

beforeAll(async () => {
  for (const t of ["nbdcopy", "qemu-io"]) requireTool(t);
  c = await new Cluster({ targets: 3, drive_size: "256M" }).start();
  await c.cli("volume", "create", "--name", "v", "--capacity", "64M", "--raid-level", "0");
  uri = await c.attach("v");
  await ok(["qemu-io", "-f", "raw", "-c", "write -P 0x3c 0 64M", uri]);
  checksum = await volumeChecksum();
}, 120_000);

afterAll(async () => {
  await c?.destroy();
});

describe("bad input changes nothing and kills no daemon", () => {
  test("random bytes and truncated frames on every target port", async () => {
    for (const a of c.target_addrs) {
      await blast(hostPort(a), randomBytes(4096));
      // A valid header announcing a payload that never comes, then the connection drops.
      const h = encodeFrame({ ...emptyHeader(), opcode: Op.HELLO }, new Uint8Array(100)).subarray(0, 80);
      await blast(hostPort(a), h);
      // A WRITE before HELLO: refused, never executed.
      const w = encodeFrame({ ...emptyHeader(), opcode: Op.WRITE, length: 4096 }, new Uint8Array(4096));
      await blast(hostPort(a), w);
    }
    // The daemons' output is read asynchronously: wait for the line rather than race it.
    for (const t of c.targets) await t!.waitFor(/error|closing|malformed|refus|bad/i, 5000);
  });

  test("random bytes and malformed requests on the TOMA's management port", async () => {
    await blast(hostPort(c.toma_addr), randomBytes(2048));
    for (const body of ["{", "[]", '{"name":"x"}', '{"name":"../x","capacity_bytes":512,"raid_level":"0"}', '{"name":"y","capacity_bytes":-1,"raid_level":"0"}']) {
      const r = await signedFetch("POST", "/v1/volumes", body);
      expect(r.status).toBe(400);
      expect(((await r.json()) as { error: string }).error.length).toBeGreaterThan(0);
    }
    const vols = await c.cliJson<unknown[]>("volume", "show");
    expect(vols.length).toBe(1);
  });

  test("a stranger without the cluster key: the TOMA answers 401 and the targets refuse it, saying why", async () => {
    const body = JSON.stringify({ name: "intruder", capacity_bytes: 1 << 20, raid_level: "0" });
    const tries: Record<string, string>[] = [{}, { authorization: "Basic x" }, { authorization: `nvmesh-v1 server ${"0".repeat(32)} ${"0".repeat(64)}` }];
    for (const headers of tries) {
      const r = await fetch(`http://${c.toma_addr}/v1/volumes`, { method: "POST", body, headers: { "content-type": "application/json", ...headers } });
      expect(r.status).toBe(401);
      expect(((await r.json()) as { error: string }).error).toMatch(/requires the cluster key/);
    }
    const signedByAnother = await signedFetch("POST", "/v1/volumes", body, new Uint8Array(32));
    expect(signedByAnother.status).toBe(401);
    expect(((await signedByAnother.json()) as { error: string }).error).toMatch(/not this cluster's/);
    // The admin CLI without a key, and with another cluster's key.
    const none = await run([NVMESH, "volume", "create", "--name", "intruder", "--capacity", "1M"], { env: { NVMESH_MANAGEMENT: c.toma_addr, NVMESH_KEY_FILE: "" } });
    expect(none.code).not.toBe(0);
    expect(none.stdout + none.stderr).toMatch(/requires the cluster key/);
    const other = `${c.dir}/other.key`;
    await ok([NVMESH, "cluster", "genkey", "--out", other]);
    const wrong = await run([NVMESH, "volume", "show", "--key-file", other], { env: { NVMESH_MANAGEMENT: c.toma_addr } });
    expect(wrong.code).not.toBe(0);
    expect(wrong.stdout + wrong.stderr).toMatch(/not this cluster's/);
    // A data-path requester without the key (and with another one) on every target.
    for (const a of c.target_addrs) {
      const env = realEnv("test", { debug() {}, info() {}, warn() {}, error() {} });
      await expect(openSession(env, a, { version: 1, role: "toma", name: "intruder" })).rejects.toThrow(/requires the cluster key/);
      await expect(openSession(env, a, { version: 1, role: "toma", name: "intruder" }, { cluster_key: parseKeyFile(readFileSync(other, "utf8")) })).rejects.toThrow(/different cluster key/);
    }
    expect((await c.cliJson<unknown[]>("volume", "show")).length).toBe(1);
  });

  test("cluster genkey writes a private key file and never replaces one without --force", async () => {
    const path = `${c.dir}/new.key`;
    await ok([NVMESH, "cluster", "genkey", "--out", path]);
    expect(statSync(path).mode & 0o777).toBe(0o600);
    const first = readFileSync(path, "utf8");
    expect(first).toMatch(/^[0-9a-f]{64}\n$/);
    const again = await run([NVMESH, "cluster", "genkey", "--out", path]);
    expect(again.code).not.toBe(0);
    expect(again.stdout + again.stderr).toMatch(/exists.*--force/);
    expect(readFileSync(path, "utf8")).toBe(first);
    chmodSync(path, 0o644); // a key someone left readable: replacing it makes it private again
    await ok([NVMESH, "cluster", "genkey", "--out", path, "--force"]);
    expect(readFileSync(path, "utf8")).not.toBe(first);
    expect(statSync(path).mode & 0o777).toBe(0o600);
    writeFileSync(`${c.dir}/bad.key`, "not a key\n");
    const bad = await run([NVMESH, "cluster", "status", "--key-file", `${c.dir}/bad.key`], { env: { NVMESH_MANAGEMENT: c.toma_addr } });
    expect(bad.code).not.toBe(0);
    expect(bad.stdout + bad.stderr).toMatch(/64 hex digits/);
  });

  test("random bytes on the NBD socket and the client control socket", async () => {
    await blast({ unix: socketOf(uri) }, randomBytes(4096));
    await blast({ unix: `${c.runDir}/client.sock` }, randomBytes(1024));
  });

  test("out-of-range NBD requests are refused and the connection stays usable", async () => {
    const nbd = await connectNbd(realEnv("test"), `unix:${socketOf(uri)}`, "v");
    try {
      expect(nbd.size_bytes).toBe(64 * 2 ** 20);
      await expect(nbd.read(64 * 2 ** 20 - 512, 1024)).rejects.toThrow(/EINVAL|ENOSPC/);
      await expect(nbd.write(64 * 2 ** 20, new Uint8Array(512))).rejects.toThrow(/ENOSPC|EINVAL/);
      const got = await nbd.read(0, 512);
      expect(got.every((b) => b === 0x3c)).toBe(true);
    } finally {
      await nbd.close();
    }
    await expect(connectNbd(realEnv("test"), `unix:${socketOf(uri)}`, "no-such-volume")).rejects.toThrow(/UNKNOWN|no-such/);
  });

  const cliCases: [string, string[], RegExp][] = [
    ["capacity with an unknown suffix", ["volume", "create", "--name", "a", "--capacity", "3Q"], /invalid --capacity/],
    ["capacity not a multiple of 512", ["volume", "create", "--name", "a", "--capacity", "1000"], /multiple of 512/],
    ["unsupported raid level", ["volume", "create", "--name", "a", "--capacity", "1M", "--raid-level", "5"], /raid-level/],
    ["stripe width above the drive count", ["volume", "create", "--name", "a", "--capacity", "1M", "--raid-level", "0", "--stripe-width", "9"], /stripe|drive/i],
    ["stripe size not a power of two", ["volume", "create", "--name", "a", "--capacity", "1M", "--raid-level", "0", "--stripe-size", "48"], /stripe/i],
    ["name already taken", ["volume", "create", "--name", "v", "--capacity", "1M"], /exists|taken/],
    ["invalid name", ["volume", "create", "--name", "a b/c", "--capacity", "1M"], /name/],
    ["too large for the pool", ["volume", "create", "--name", "a", "--capacity", "9T"], /space/],
    ["unknown flag", ["volume", "show", "--colour"], /unknown option/],
    ["unknown volume", ["volume", "show", "nope"], /nope/],
    ["delete an unknown volume", ["volume", "delete", "nope", "-y"], /nope/],
    ["attach an unknown volume", ["client", "attach", "--volume", "nope"], /nope/],
    ["bad output format", ["cluster", "status", "-o", "yaml"], /output format/],
    ["bad management address", ["cluster", "status", "-m", "nohostport"], /management address/],
    ["kernel nbd where there is none", ["client", "attach", "--volume", "v", "--nbd-device", "/dev/nbd0"], /cannot bind \/dev\/nbd0: this kernel has no nbd driver/],
    ["format a drive a target serves", ["drive", "format", "__DRIVE__"], /in use by another process.*stop that process first/],
    ["a hosted target's options without --drive", ["client", "serve", "--target-listen", "127.0.0.1:1"], /go with --drive/],
    ["a hosted target on a file that is no drive", ["client", "serve", "--drive", "__NOTADRIVE__", "--target-listen", "127.0.0.1:0", "--run-dir", "__RUNDIR__"], /not an nvmesh drive yet; format it with 'nvmesh drive format .*'[\s\S]*nothing to serve/],
  ];
  test("CLI: kernel nbd where there is none, without a client daemon → the same clear message", async () => {
    const r = await c.cliRaw("client", "attach", "--volume", "v", "--nbd-device", "/dev/nbd0", "--run-dir", `${c.dir}/no-daemon`);
    expect(r.code).toBe(1);
    expect(r.stdout + r.stderr).toMatch(/cannot bind \/dev\/nbd0: this kernel has no nbd driver/);
  });
  for (const [name, args, re] of cliCases) {
    test(`CLI: ${name} → non-zero exit and a clear message`, async () => {
      const notADrive = `${c.dir}/not-a-drive.img`;
      writeFileSync(notADrive, new Uint8Array(1 << 20));
      const real = args.map((a) => (a === "__DRIVE__" ? c.drives[0]![0]! : a === "__NOTADRIVE__" ? notADrive : a === "__RUNDIR__" ? `${c.dir}/run-hosted` : a));
      const r = await c.cliRaw(...real);
      expect(r.code).not.toBe(0);
      expect(r.stdout + r.stderr).toMatch(re);
    });
  }

  test("afterwards: every daemon is alive, the volume set is unchanged and the data intact", async () => {
    for (const d of c.daemons()) expect(d.alive).toBe(true);
    const vols = await c.cliJson<{ name: string }[]>("volume", "show");
    expect(vols.map((v) => v.name)).toEqual(["v"]);
    expect(await volumeChecksum()).toBe(checksum);
  });
});
