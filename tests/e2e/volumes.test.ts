/**
 * The first slice end to end, with real processes of the compiled binary (3 targets, 1 TOMA,
 * 1 client daemon on loopback) and real clients nobody here wrote: nbdinfo, fio with
 * ioengine=nbd and verify, qemu-img, qemu-io, nbdcopy, and ext4 through nbdfuse + losetup.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { Cluster } from "../support/cluster.ts";
import { Daemon, ok, requireTool, run } from "../support/proc.ts";

let c: Cluster;
const uris: Record<string, string> = {};

beforeAll(async () => {
  for (const t of ["fio", "qemu-img", "qemu-io", "nbdinfo", "nbdcopy", "nbdfuse", "mkfs.ext4", "e2fsck", "losetup", "fusermount3"]) {
    requireTool(t);
  }
  c = await new Cluster({ targets: 3, drive_size: "512M" }).start();
  await c.cli("volume", "create", "--name", "stripe", "--capacity", "768M", "--raid-level", "0", "--stripe-width", "3");
  // 600M is more than one 512M drive holds: the concatenation spans drives.
  await c.cli("volume", "create", "--name", "concat", "--capacity", "600M", "--raid-level", "concatenated");
  uris.stripe = await c.attach("stripe");
  uris.concat = await c.attach("concat");
}, 120_000);

afterAll(async () => {
  await c?.destroy();
});

/** A random file and its bytes, written in the cluster's temp folder. */
function randomFile(name: string, bytes: number): { path: string; data: Uint8Array } {
  const data = new Uint8Array(bytes);
  for (let i = 0; i < bytes; i += 65536) crypto.getRandomValues(data.subarray(i, Math.min(bytes, i + 65536)));
  const path = `${c.dir}/${name}`;
  writeFileSync(path, data);
  return { path, data };
}

describe("volumes through real NBD clients", () => {
  test("volume show lists both volumes Online with their layout", async () => {
    const vols = await c.cliJson<{ name: string; state: string; raid_level: string; columns: unknown[] }[]>("volume", "show");
    const byName = Object.fromEntries(vols.map((v) => [v.name, v]));
    expect(byName.stripe).toMatchObject({ state: "online", raid_level: "0" });
    expect(byName.stripe!.columns.length).toBe(3);
    expect(byName.concat).toMatchObject({ state: "online", raid_level: "concatenated" });
    expect(byName.concat!.columns.length).toBeGreaterThanOrEqual(2);
  });

  test("nbdinfo shows the right size and the flags that make multi-conn safe", async () => {
    for (const [name, size] of [["stripe", 768 * 2 ** 20], ["concat", 600 * 2 ** 20]] as const) {
      const info = JSON.parse(await ok(["nbdinfo", "--json", uris[name]!])) as {
        exports: { "export-size": number; can_flush: boolean; can_fua: boolean; can_multi_conn: boolean; can_trim: boolean; can_zero: boolean }[];
      };
      expect(info.exports[0]).toMatchObject({ "export-size": size, can_flush: true, can_fua: true, can_multi_conn: true, can_trim: true, can_zero: true });
    }
  });

  for (const name of ["stripe", "concat"]) {
    test(`fio randwrite with verify=crc32c through ${name}`, async () => {
      const out = await ok(
        [
          "fio", "--name=verify", "--ioengine=nbd", `--uri=${uris[name]}`, "--rw=randwrite", "--bs=4k",
          "--iodepth=16", "--size=96M", "--verify=crc32c", "--do_verify=1", "--verify_fatal=1",
          "--verify_state_save=0", `--directory=${c.dir}`, "--output-format=json",
        ],
        { timeout_ms: 120_000 },
      );
      const j = JSON.parse(out.slice(out.indexOf("{"))) as { jobs: { error: number; read: { io_bytes: number }; write: { io_bytes: number } }[] };
      expect(j.jobs[0]!.error).toBe(0);
      expect(j.jobs[0]!.write.io_bytes).toBe(96 * 2 ** 20);
      expect(j.jobs[0]!.read.io_bytes).toBe(96 * 2 ** 20); // every block written was read back and verified
    }, 150_000);
  }

  test("qemu-img and nbdcopy copy a random file in and out byte-identically", async () => {
    const src = randomFile("random.bin", 40 * 2 ** 20 + 4096 * 3);
    // qemu-img writes it into the striped volume, nbdcopy reads it back out.
    await ok(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", src.path, uris.stripe!], { timeout_ms: 120_000 });
    const back = `${c.dir}/back.bin`;
    await ok(["nbdcopy", uris.stripe!, back], { timeout_ms: 120_000 });
    expect(Buffer.from(readFileSync(back).subarray(0, src.data.length)).equals(Buffer.from(src.data))).toBe(true);
    // And the other way round on the concatenated volume, across its drive boundary.
    await ok(["nbdcopy", src.path, uris.concat!], { timeout_ms: 120_000 });
    const back2 = `${c.dir}/back2.raw`;
    await ok(["qemu-img", "convert", "-f", "raw", "-O", "raw", uris.concat!, back2], { timeout_ms: 120_000 });
    expect(Buffer.from(readFileSync(back2).subarray(0, src.data.length)).equals(Buffer.from(src.data))).toBe(true);
  }, 300_000);

  test("qemu-io writes a pattern across the concatenation boundary and reads it back", async () => {
    // 512M is where the first drive's column ends (its extents), so this I/O spans two drives.
    const at = 500 * 2 ** 20;
    const out = await ok([
      "qemu-io", "-f", "raw", "-c", `write -P 0x5a ${at} 24M`, "-c", `read -P 0x5a ${at} 24M`, "-c", "flush", uris.concat!,
    ]);
    expect(out).not.toContain("Pattern verification failed");
    expect(out).toMatch(/read 25165824\/25165824 bytes/);
  });

  test("ext4 through nbdfuse + losetup: mkfs, files, e2fsck clean, mount again, read them back", async () => {
    const fuse = `${c.dir}/fuse`;
    const mnt = `${c.dir}/mnt`;
    mkdirSync(fuse, { recursive: true });
    mkdirSync(mnt, { recursive: true });
    const pidfile = `${c.dir}/nbdfuse.pid`;
    const nbdfuse = new Daemon("nbdfuse", ["nbdfuse", "-P", pidfile, fuse, uris.stripe!]);
    let loop = "";
    try {
      for (let i = 0; i < 100 && !existsSync(pidfile); i++) await Bun.sleep(100);
      expect(existsSync(`${fuse}/nbd`)).toBe(true);
      loop = (await ok(["losetup", "-f", "--show", `${fuse}/nbd`])).trim();
      await ok(["mkfs.ext4", "-q", "-F", loop], { timeout_ms: 120_000 });
      await ok(["mount", loop, mnt]);
      const files = [1, 2, 3].map((i) => randomFile(`f${i}.bin`, i * 3 * 2 ** 20 + 777));
      for (const [i, f] of files.entries()) await ok(["cp", f.path, `${mnt}/file${i}`]);
      await ok(["umount", mnt]);
      const fsck = await run(["e2fsck", "-fn", loop]);
      expect(fsck.code).toBe(0);
      await ok(["mount", loop, mnt]);
      for (const [i, f] of files.entries()) {
        expect(Buffer.from(readFileSync(`${mnt}/file${i}`)).equals(Buffer.from(f.data))).toBe(true);
      }
      await ok(["umount", mnt]);
    } finally {
      await run(["umount", mnt]);
      if (loop) await run(["losetup", "-d", loop]);
      await run(["fusermount3", "-u", fuse]);
      await nbdfuse.stop();
    }
  }, 240_000);

  test("stop every daemon and start them again: volumes and data are intact", async () => {
    await ok(["qemu-img", "convert", "-f", "raw", "-O", "raw", uris.stripe!, `${c.dir}/before.raw`]);
    const want = Bun.hash(readFileSync(`${c.dir}/before.raw`)).toString();
    await c.stopAll("SIGTERM");
    // Targets come back on new ports: drives are found by UUID, not by address.
    c.target_addrs = [];
    for (let t = 0; t < 3; t++) await c.startTarget(t);
    c.toma_addr = "";
    await c.startToma();
    await c.startClient();
    const vols = await c.cliJson<{ name: string; state: string }[]>("volume", "show");
    expect(vols.map((v) => v.name).sort()).toEqual(["concat", "stripe"]);
    uris.stripe = await c.attach("stripe");
    uris.concat = await c.attach("concat");
    await ok(["qemu-img", "convert", "-f", "raw", "-O", "raw", uris.stripe!, `${c.dir}/after.raw`]);
    expect(Bun.hash(readFileSync(`${c.dir}/after.raw`)).toString()).toBe(want);
  }, 180_000);

  test("kill -9 every daemon: data acknowledged before a flush survives", async () => {
    const src = randomFile("flushed.bin", 8 * 2 ** 20);
    await ok(["nbdcopy", "--flush", src.path, uris.concat!]);
    await c.stopAll("SIGKILL");
    c.target_addrs = [];
    for (let t = 0; t < 3; t++) await c.startTarget(t);
    c.toma_addr = "";
    await c.startToma();
    await c.startClient();
    uris.concat = await c.attach("concat");
    const back = `${c.dir}/flushed-back.raw`;
    await ok(["nbdcopy", uris.concat!, back]);
    expect(Buffer.from(readFileSync(back).subarray(0, src.data.length)).equals(Buffer.from(src.data))).toBe(true);
  }, 180_000);

  test("delete a volume: it is gone and its space is free again", async () => {
    const cl1 = await c.cliJson<{ cluster: { capacity: { used_bytes: number } } }>("cluster", "status");
    await c.cli("client", "detach", "--volume", "concat");
    await c.cli("volume", "delete", "concat", "-y");
    const cl2 = await c.cliJson<{ cluster: { capacity: { used_bytes: number } } }>("cluster", "status");
    expect(cl2.cluster.capacity.used_bytes).toBeLessThan(cl1.cluster.capacity.used_bytes);
    const r = await c.cliRaw("volume", "show", "concat");
    expect(r.code).not.toBe(0);
    expect(r.stderr + r.stdout).toMatch(/concat/);
  });
});
