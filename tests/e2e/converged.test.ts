/**
 * A client daemon that serves this host's drives itself (`nvmesh client serve --drive`): the
 * TOMA and other hosts reach that target over TCP as usual, and the client reaches it in-process
 * (client/local-target.ts, net/pipe.ts) with the same protocol: HELLO, AUTH with the cluster key,
 * fencing, locks, dirty bits. Real processes of the compiled binary; t0 is hosted by the client,
 * t1 and t2 are ordinary targets. Checked with fio verify, qemu-img, and a mirror whose legs span
 * the in-process target and a remote one.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { Cluster } from "../support/cluster.ts";
import { ok, requireTool } from "../support/proc.ts";

let c: Cluster;
const uris: Record<string, string> = {};

beforeAll(async () => {
  for (const t of ["fio", "qemu-img"]) requireTool(t);
  c = await new Cluster({ targets: 3, drive_size: "512M", converged: true }).start();
  await c.cli("volume", "create", "--name", "stripe", "--capacity", "384M", "--raid-level", "0", "--stripe-width", "3");
  await c.cli("volume", "create", "--name", "m1", "--capacity", "128M", "--raid-level", "1", "--number-of-mirrors", "3");
  uris.stripe = await c.attach("stripe");
  uris.m1 = await c.attach("m1");
}, 120_000);

afterAll(async () => {
  await c?.destroy();
});

async function fioVerify(uri: string, size_mib: number): Promise<void> {
  const out = await ok(
    [
      "fio", "--name=verify", "--ioengine=nbd", `--uri=${uri}`, "--rw=randwrite", "--bs=4k",
      "--iodepth=16", `--size=${size_mib}M`, "--verify=crc32c", "--do_verify=1", "--verify_fatal=1",
      "--verify_state_save=0", `--directory=${c.dir}`, "--output-format=json",
    ],
    { timeout_ms: 120_000 },
  );
  const j = JSON.parse(out.slice(out.indexOf("{"))) as { jobs: { error: number; read: { io_bytes: number }; write: { io_bytes: number } }[] };
  expect(j.jobs[0]!.error).toBe(0);
  expect(j.jobs[0]!.write.io_bytes).toBe(size_mib * 2 ** 20);
  expect(j.jobs[0]!.read.io_bytes).toBe(size_mib * 2 ** 20);
}

describe("a client daemon that hosts a target", () => {
  test("the TOMA sees the hosted target over TCP; the client reaches it in-process and only it", async () => {
    const targets = await c.cliJson<{ name?: string; target_name?: string; address?: string; io?: string | null }[]>("target", "show");
    expect(JSON.stringify(targets)).toContain(c.target_addrs[0]!);
    // Every drive, hosted or not, does its I/O through io_uring (this kernel allows it).
    expect(targets.map((t) => t.io)).toEqual(targets.map(() => "io_uring, buffered, inline writes"));
    const out = c.client!.output;
    const inproc = [...out.matchAll(/target reached in-process target=(\S+)/g)].map((m) => m[1]);
    // One connection per attached volume (each bound to its volume), every one of them in-process.
    expect(inproc).toEqual([c.target_addrs[0], c.target_addrs[0]]);
    // The stripe uses all three targets: t1 and t2 were reached over TCP.
    const vol = await c.volume("stripe");
    expect(new Set(vol.columns.map((k) => k.drive_uuid)).size).toBe(3);
  });

  test("fio randwrite with verify=crc32c through a stripe over the hosted and two remote targets", async () => {
    await fioVerify(uris.stripe!, 64);
  }, 150_000);

  // Three legs on three targets: one of them is in-process.
  test("a mirror with a leg in-process: fio verify, then the legs are byte-identical", async () => {
    const v = await c.volume("m1");
    const hosted = new Set(c.drives[0]!.map((p) => [...c.drive_files.values()].find((d) => d.path === p)!.uuid));
    expect(v.columns.some((k) => hosted.has(k.drive_uuid))).toBe(true);
    await fioVerify(uris.m1!, 48);
    const after = await c.volume("m1");
    const same = c.compareLegs(after);
    expect(same.differences).toEqual([]);
    expect(same.bytes).toBe(after.capacity_bytes);
  }, 150_000);

  test("qemu-img copies a random file in and out byte-identically", async () => {
    const data = new Uint8Array(16 * 2 ** 20);
    for (let i = 0; i < data.length; i += 65536) crypto.getRandomValues(data.subarray(i, i + 65536));
    await Bun.write(`${c.dir}/in.bin`, data);
    await ok(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", `${c.dir}/in.bin`, uris.stripe!]);
    await ok(["qemu-img", "convert", "-f", "raw", "-O", "raw", uris.stripe!, `${c.dir}/out.bin`]);
    expect(Buffer.from(readFileSync(`${c.dir}/out.bin`).subarray(0, data.length)).equals(Buffer.from(data))).toBe(true);
  }, 60_000);

  test("stop the client daemon and start it again: its target comes back, data intact", async () => {
    await ok(["qemu-img", "convert", "-f", "raw", "-O", "raw", uris.stripe!, `${c.dir}/before.raw`]);
    const want = Bun.hash(readFileSync(`${c.dir}/before.raw`));
    await c.client!.stop("SIGTERM");
    await c.startClient(...c.clientArgs);
    // The TOMA finds the target on its address again at its next reconnect attempt; until then
    // attach says the volume is not reachable.
    const deadline = performance.now() + 30_000;
    for (;;) {
      try {
        uris.stripe = await c.attach("stripe");
        break;
      } catch (e) {
        if (performance.now() > deadline || !String(e).includes("not reachable")) throw e;
        await Bun.sleep(200);
      }
    }
    await ok(["qemu-img", "convert", "-f", "raw", "-O", "raw", uris.stripe!, `${c.dir}/after.raw`]);
    expect(Bun.hash(readFileSync(`${c.dir}/after.raw`))).toBe(want);
    expect(c.client!.output).toContain(`target reached in-process target=${c.target_addrs[0]}`);
  }, 120_000);
});
