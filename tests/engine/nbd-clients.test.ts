/**
 * The NBD server on a real unix socket, driven by real clients nobody here wrote: nbdinfo, qemu-io,
 * qemu-img, nbdcopy, fio (ioengine=nbd) and a filesystem through nbdfuse. A missing tool fails the
 * test with the command that installs it.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { MemoryStore } from "../../src/engine/drive/memory-store.ts";
import type { Logger } from "../../src/engine/env.ts";
import type { Listener } from "../../src/engine/net/conn.ts";
import { ExportRegistry } from "../../src/engine/nbd/exports.ts";
import { NbdServer } from "../../src/engine/nbd/server.ts";
import { realEnv } from "../../src/engine/runtime/real-env.ts";

const MiB = 1024 * 1024;
const EXPORT_BYTES = 64 * MiB;

const PACKAGES: Record<string, string> = {
  nbdinfo: "libnbd-bin",
  nbdcopy: "libnbd-bin",
  nbdfuse: "nbdfuse",
  "qemu-io": "qemu-utils",
  "qemu-img": "qemu-utils",
  fio: "fio",
  "mkfs.ext4": "e2fsprogs",
  e2fsck: "e2fsprogs",
  fusermount3: "fuse3",
  stat: "coreutils",
  sh: "dash",
  debugfs: "e2fsprogs",
  losetup: "mount",
  mount: "mount",
  umount: "mount",
};

/** The tool's path; never skips: a missing tool is a failure that says how to install it. */
function tool(name: string): string {
  const path = Bun.which(name) ?? Bun.which(name, { PATH: "/usr/sbin:/sbin:/usr/bin:/bin" });
  if (!path) throw new Error(`${name} is not installed; install it with: apt-get install -y ${PACKAGES[name]}`);
  return path;
}

async function run(argv: string[], timeout_ms = 60_000): Promise<{ code: number; out: string; err: string }> {
  const [name, ...args] = argv;
  // cwd: tools drop state files where they run (fio's verify state on failure).
  const p = Bun.spawn([tool(name!), ...args], { stdout: "pipe", stderr: "pipe", stdin: "ignore", cwd: dir });
  const timer = setTimeout(() => p.kill(9), timeout_ms);
  const [out, err] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text()]);
  const code = await p.exited;
  clearTimeout(timer);
  return { code, out, err };
}

/** Runs and expects success, showing the tool's own words when it fails. */
async function ok(argv: string[], timeout_ms?: number): Promise<string> {
  const r = await run(argv, timeout_ms);
  if (r.code !== 0) throw new Error(`${argv.join(" ")} exited ${r.code}\n${r.out}\n${r.err}`);
  return r.out;
}

const problems: string[] = [];
const log: Logger = {
  debug: () => {},
  info: () => {},
  warn: (m, f) => problems.push(`warn ${m} ${JSON.stringify(f)}`),
  error: (m, f) => problems.push(`error ${m} ${JSON.stringify(f)}`),
};

let dir = "";
let socket = "";
let listener: Listener;
const exports = new ExportRegistry();
let server: NbdServer;

function uri(name: string): string {
  return `nbd+unix:///${name}?socket=${socket}`;
}

function randomFile(name: string, bytes: number): string {
  const path = join(dir, name);
  const b = new Uint8Array(bytes);
  for (let i = 0; i < bytes; i += 65536) crypto.getRandomValues(b.subarray(i, i + 65536));
  writeFileSync(path, b);
  return path;
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "nvmesh-nbd-"));
  socket = join(dir, "nbd.sock");
  const env = realEnv("nbd-test", log);
  server = new NbdServer(env, exports);
  listener = await env.net.listen(`unix:${socket}`, (c) => server.handle(c));
});

afterAll(async () => {
  await server.close();
  listener.close();
  // Never recurse into a mount left behind by a failed cleanup (it may be served by this process).
  if (readFileSync("/proc/mounts", "utf8").includes(dir)) throw new Error(`${dir} still has mounts; not removing it`);
  rmSync(dir, { recursive: true, force: true });
});

describe("nbd server with real clients", () => {
  test("nbdinfo --json sees size, flags and block sizes", async () => {
    exports.add("info", { store: new MemoryStore(EXPORT_BYTES), description: "info volume" });
    const j = JSON.parse(await ok(["nbdinfo", "--json", uri("info")]));
    expect(j.protocol).toBe("newstyle-fixed");
    expect(j.structured).toBe(false); // we refuse NBD_OPT_STRUCTURED_REPLY; libnbd falls back
    const e = j.exports[0];
    expect(e["export-name"]).toBe("info");
    expect(e["export-size"]).toBe(EXPORT_BYTES);
    expect(e.description).toBe("info volume");
    expect(e).toMatchObject({
      is_read_only: false,
      can_flush: true,
      can_fua: true,
      can_trim: true,
      can_zero: true,
      can_multi_conn: true,
      block_size_minimum: 512,
      block_size_preferred: 4096,
      block_size_maximum: 32 * MiB,
    });
    exports.add("info-ro", { store: new MemoryStore(MiB), read_only: true });
    const ro = JSON.parse(await ok(["nbdinfo", "--json", uri("info-ro")]));
    expect(ro.exports[0].is_read_only).toBe(true);
  }, 30_000);

  test("nbdinfo --list shows every export (NBD_OPT_LIST); an unknown export is refused", async () => {
    exports.add("list-a", { store: new MemoryStore(MiB), description: "volume A" });
    exports.add("list-b", { store: new MemoryStore(2 * MiB) });
    const j = JSON.parse(await ok(["nbdinfo", "--list", "--json", uri("")]));
    const names = j.exports.map((e: { "export-name": string }) => e["export-name"]);
    expect(names).toContain("list-a");
    expect(names).toContain("list-b");
    const a = j.exports.find((e: { "export-name": string }) => e["export-name"] === "list-a");
    expect(a.description).toBe("volume A");
    const missing = await run(["nbdinfo", uri("no-such-volume")]);
    expect(missing.code).not.toBe(0);
  }, 30_000);

  test("qemu-io writes and reads back patterns, zeroes, discards, flushes, aio", async () => {
    exports.add("qemu", { store: new MemoryStore(EXPORT_BYTES) });
    const cmds = [
      "write -P 0xab 0 1M",
      "read -P 0xab 0 1M",
      "write -P 0x11 1000 3000", // unaligned: qemu does its own read-modify-write at 512
      "read -P 0x11 1000 3000",
      "write -z 4M 1M",
      "read -P 0 4M 1M",
      "write -P 0x5a 63M 1M",
      "read -P 0x5a 63M 1M",
      "discard 8M 64k",
      "flush",
      "write -f -P 0x77 16M 32M", // -f: FUA; 32 MiB is our maximum payload
      "read -P 0x77 16M 32M",
      "aio_write -P 0x22 0 64k",
      "aio_write -P 0x33 64k 64k",
      "aio_flush",
      "read -P 0x22 0 64k",
      "read -P 0x33 64k 64k",
    ];
    const out = await ok(["qemu-io", "-f", "raw", ...cmds.flatMap((c) => ["-c", c]), uri("qemu")]);
    expect(out).not.toContain("Pattern verification failed");
    expect(out).not.toMatch(/error|failed/i);
  }, 60_000);

  test("nbdcopy (multi-conn) and qemu-img copy a random image in and out byte-identically", async () => {
    exports.add("copy", { store: new MemoryStore(EXPORT_BYTES) });
    const input = randomFile("in.bin", EXPORT_BYTES);
    const output = join(dir, "out.bin");
    // --flush ends the copy with NBD_CMD_FLUSH on the export.
    await ok(["nbdcopy", "--connections=4", "--requests=64", "--flush", input, uri("copy")]);
    await ok(["nbdcopy", "--connections=4", uri("copy"), output]);
    expect(Buffer.compare(readFileSync(input), readFileSync(output))).toBe(0);

    const second = randomFile("in2.bin", EXPORT_BYTES);
    await ok(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", second, uri("copy")]);
    expect(await ok(["qemu-img", "compare", "-f", "raw", "-F", "raw", second, uri("copy")])).toContain("identical");
  }, 120_000);

  test("fio randrw with crc32c verify passes for 3 s", async () => {
    exports.add("fio", { store: new MemoryStore(EXPORT_BYTES) });
    const out = await ok(fioArgs("fio"), 60_000);
    const j = JSON.parse(out.slice(out.indexOf("{"))); // fio prints "connected to NBD server" first
    const job = j.jobs[0];
    expect(job.error).toBe(0);
    expect(job.write.io_bytes).toBeGreaterThan(0);
    expect(job.read.io_bytes).toBeGreaterThan(0);
  }, 60_000);

  test("fio's verify is real: a store that corrupts reads makes it fail", async () => {
    const honest = new MemoryStore(EXPORT_BYTES);
    const liar = Object.assign(Object.create(honest) as MemoryStore, {
      read: async (offset: number, dst: Uint8Array) => {
        await honest.read(offset, dst);
        if (dst.length > 0) dst[dst.length >> 1]! ^= 0x01;
      },
    });
    exports.add("fio-liar", { store: liar });
    const r = await run(fioArgs("fio-liar"), 60_000);
    expect(r.code).not.toBe(0);
    expect(r.out + r.err).toMatch(/verify.*(crc32c|bad|fail)|crc32c/i);
  }, 60_000);

  test("a filesystem through nbdfuse: mkfs.ext4, loop-mount, write a file, unmount, e2fsck clean", async () => {
    // This process *is* the NBD server, so it must never touch the FUSE file or the mounted
    // filesystem itself: a blocking syscall there waits on a server that cannot run (a deadlock in
    // D state). Every access below goes through a subprocess, awaited asynchronously.
    for (const t of ["mkfs.ext4", "e2fsck", "debugfs", "fusermount3", "losetup", "mount", "umount", "sh"]) tool(t);
    exports.add("fs", { store: new MemoryStore(EXPORT_BYTES) });
    const fuseDir = join(dir, "fuse");
    const image = join(fuseDir, "nbd");
    const fsDir = join(dir, "mounted");
    mkdirSync(fuseDir);
    mkdirSync(fsDir);
    // nbdfuse stays in the foreground until unmounted; the file appears once it has connected.
    const fuse = Bun.spawn([tool("nbdfuse"), image, uri("fs")], { stdout: "ignore", stderr: "pipe" });
    let loop = "";
    let mounted = false;
    try {
      let size = "";
      for (let i = 0; i < 200 && size !== String(EXPORT_BYTES); i++) {
        size = (await run(["stat", "-c", "%s", image])).out.trim();
        if (size !== String(EXPORT_BYTES)) await Bun.sleep(50);
      }
      expect(size).toBe(String(EXPORT_BYTES));
      await ok(["mkfs.ext4", "-q", "-F", image]);
      loop = (await ok(["losetup", "-f", "--show", image])).trim();
      await ok(["mount", loop, fsDir]);
      mounted = true;
      await ok(["sh", "-c", `echo "written through the NBD server" > ${fsDir}/hello.txt && sync -f ${fsDir}/hello.txt`]);
      await ok(["umount", fsDir]);
      mounted = false;
      await ok(["losetup", "-d", loop]);
      loop = "";
      await ok(["e2fsck", "-f", "-n", image]);
      expect(await ok(["debugfs", "-R", "cat /hello.txt", image])).toContain("written through the NBD server");
    } finally {
      if (mounted) await run(["umount", "-l", fsDir]);
      if (loop) await run(["losetup", "-d", loop]);
      await run(["fusermount3", "-u", fuseDir]);
      const timer = setTimeout(() => fuse.kill(9), 10_000);
      await fuse.exited;
      clearTimeout(timer);
    }
  }, 120_000);

  test("the server logged no warnings or errors while real clients used it", () => {
    // The lying store corrupts data without an I/O error, so the server has nothing to report either.
    expect(problems).toEqual([]);
  });
});

function fioArgs(name: string): string[] {
  return [
    "fio",
    "--name=nbd-verify",
    "--ioengine=nbd",
    `--uri=${uri(name)}`,
    "--rw=randrw",
    "--bs=4k",
    "--iodepth=32",
    `--size=${EXPORT_BYTES}`,
    "--time_based",
    "--runtime=3",
    "--verify=crc32c",
    "--verify_fatal=1",
    "--verify_state_save=0",
    "--output-format=json",
  ];
}
