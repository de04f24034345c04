/**
 * `client attach --nbd-device /dev/nbd0` for real: a guest VM with a stock Debian kernel (which has
 * nbd) under QEMU (tests/support/vmlab.ts) runs the client daemon and nbd-client; the targets and
 * the TOMA are real processes on this host, and the volume is a RAID1 mirror over two of them.
 *
 * The network is the one a real cluster has: the TOMA knows its targets by this host's name
 * (`--target NAME:PORT`) and hands that address to clients as it is. On this host the name
 * resolves to this host; in the guest, /etc/hosts says NAME is 10.0.2.100, where the guest reaches
 * this host on the forwarded ports only (the targets', the TOMA's). The guest runs the very binary
 * that `npm run build` made, from a 9p share.
 *
 * In the guest: attach loads the nbd module and binds /dev/nbd0 (idempotent, one device per
 * volume); 512-byte sectors (a DOS partition table reads as written); ext4 (mkfs, write, e2fsck,
 * remount, compare); raw bytes with O_DIRECT; detach refused while mounted, then detach unbinds;
 * the daemon's shutdown unbinds. Back on this host, another client reads what the guest's kernel
 * wrote, and the mirror's legs are identical.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { lookup } from "node:dns/promises";
import { hostname } from "node:os";
import { Cluster } from "../support/cluster.ts";
import { NVMESH, ok, requireTool } from "../support/proc.ts";
import { buildVmlab, Guest, GUEST_HOST_IP } from "../support/vmlab.ts";

const MiB = 2 ** 20;
const VOLUME_BYTES = 128 * MiB;
/** Raw bytes written by the guest at this volume offset (beyond what the ext4 test uses). */
const RAW_OFFSET_MIB = 100;
const RAW_BYTES = 4 * MiB;

let c: Cluster;
let g: Guest | null = null;
/** In the guest: the nvmesh binary, with NO_COLOR so messages read plainly. */
const N = "env NO_COLOR=1 /mnt/host/nvmesh";
let pattern: Uint8Array;

/** Runs a snippet in the guest; when it fails, the error carries the guest's daemon log and kernel messages. */
async function guest(snippet: string, timeout_ms = 120_000): Promise<string> {
  try {
    return await g!.ok(snippet, timeout_ms);
  } catch (e) {
    const more = await g!.sh("tail -n 60 /tmp/client.log; dmesg | tail -n 20", 30_000).catch(() => null);
    throw new Error(`${(e as Error).message}\n--- guest: client daemon log, kernel messages:\n${more?.stdout ?? "(unavailable)"}`);
  }
}

/** A DOS partition table (512-byte sectors, as every disk image has) with one Linux partition. */
function mbr(start_sector: number, sectors: number): Uint8Array {
  const b = new Uint8Array(512);
  const v = new DataView(b.buffer);
  b[446 + 4] = 0x83;
  v.setUint32(446 + 8, start_sector, true);
  v.setUint32(446 + 12, sectors, true);
  b[510] = 0x55;
  b[511] = 0xaa;
  return b;
}

beforeAll(async () => {
  requireTool("nbdcopy");
  requireTool("debugfs");
  await buildVmlab();
  const name = hostname();
  await lookup(name).catch((e) => {
    throw new Error(`this host's name '${name}' does not resolve here (${e}); the test addresses its targets by it`);
  });
  if (name === "localhost" || name.startsWith(GUEST_HOST_IP)) throw new Error(`this host's name '${name}' cannot name it from a guest`);

  c = new Cluster({ targets: 2, drive_size: "256M" });
  await c.formatDrives();
  const ports: number[] = [];
  for (let t = 0; t < 2; t++) {
    const listening = await c.startTarget(t, "0.0.0.0:0");
    const port = Number(listening.slice(listening.lastIndexOf(":") + 1));
    ports.push(port);
    c.target_addrs[t] = `${name}:${port}`;
  }
  await c.startToma("127.0.0.1:0");
  const toma_port = Number(c.toma_addr.slice(c.toma_addr.lastIndexOf(":") + 1));
  await c.cli("volume", "create", "--name", "v1", "--capacity", "128M", "--raid-level", "1");

  // What the guest sees at /mnt/host: the binary and the raw pattern it writes.
  const share = `${c.dir}/share`;
  mkdirSync(share);
  copyFileSync(NVMESH, `${share}/nvmesh`);
  copyFileSync(c.clientKeyEnv.NVMESH_KEY_FILE!, `${share}/client.key`); // a client host holds the client key
  pattern = new Uint8Array(RAW_BYTES);
  for (let i = 0; i < RAW_BYTES; i += 65536) crypto.getRandomValues(pattern.subarray(i, i + 65536));
  writeFileSync(`${share}/pattern.bin`, pattern);
  writeFileSync(`${share}/mbr.bin`, mbr(2048, 65536));

  g = await Guest.up(`nvmesh-nbd-${process.pid}`, { mem_mib: 1024, fwd: [...ports, toma_port], share });
  await g.ok(`echo '${GUEST_HOST_IP} ${name}' >> /etc/hosts && getent hosts ${name}`);
  await g.ok(`mkdir -p /run/nvmesh && { NVMESH_KEY_FILE=/mnt/host/client.key setsid ${N} client serve -m ${name}:${toma_port} >/tmp/client.log 2>&1 </dev/null & echo $! >/tmp/client.pid; }`);
  await g.ok(`for i in $(seq 600); do grep -q 'client ready' /tmp/client.log && exit 0; sleep 0.1; done; cat /tmp/client.log; exit 1`);
}, 1_200_000);

afterAll(async () => {
  await g?.down();
  await c?.destroy();
});

describe("kernel nbd in a VM: client attach --nbd-device", () => {
  test("attach binds the volume to /dev/nbd0 with its size; again is the same; another device is refused", async () => {
    // The stock kernel boots without the nbd module: attach loads it.
    await guest("! test -e /sys/module/nbd");
    const out = await guest(`${N} client attach --volume v1 --nbd-device /dev/nbd0`);
    await guest("test -e /sys/module/nbd");
    expect(out).toContain("nbd+unix:///v1");
    const pid = (await guest("cat /sys/block/nbd0/pid")).trim();
    expect(pid).toMatch(/^\d+$/);
    expect(Number((await guest("blockdev --getsize64 /dev/nbd0")).trim())).toBe(VOLUME_BYTES);
    const shown = JSON.parse(await guest(`${N} client show -o json`)) as { volume: string; nbd_device: string | null }[];
    expect(shown).toEqual([expect.objectContaining({ volume: "v1", nbd_device: "/dev/nbd0" })]);
    // attach is idempotent, with the device too; a second device for the same volume is refused.
    await guest(`${N} client attach --volume v1 --nbd-device /dev/nbd0`);
    expect((await guest("cat /sys/block/nbd0/pid")).trim()).toBe(pid);
    const r = await g!.sh(`${N} client attach --volume v1 --nbd-device /dev/nbd1`);
    expect(r.code).not.toBe(0);
    expect(r.stdout + r.stderr).toContain("already bound to /dev/nbd0");
    await guest("! test -e /sys/block/nbd1/pid");
  }, 120_000);

  test("512-byte sectors: a partition table written as on any disk reads the same", async () => {
    expect((await guest("cat /sys/block/nbd0/queue/logical_block_size")).trim()).toBe("512");
    await guest("dd if=/mnt/host/mbr.bin of=/dev/nbd0 bs=512 count=1 oflag=direct status=none && blockdev --rereadpt /dev/nbd0");
    // Partition 1 from sector 2048 (1 MiB), 65536 sectors (32 MiB): sysfs counts 512-byte sectors.
    expect((await guest("cat /sys/block/nbd0/nbd0p1/start /sys/block/nbd0/nbd0p1/size")).split(/\s+/).filter(Boolean)).toEqual(["2048", "65536"]);
    await guest("dd if=/dev/zero of=/dev/nbd0 bs=4096 count=1 oflag=direct status=none && blockdev --rereadpt /dev/nbd0 && ! test -e /sys/block/nbd0/nbd0p1");
  }, 120_000);

  test("ext4 on /dev/nbd0: mkfs, write, e2fsck clean, remount reads the same", async () => {
    await guest(
      [
        "set -e",
        "mkfs.ext4 -q -F -L nvmesh /dev/nbd0",
        "mkdir -p /mnt/v && mount /dev/nbd0 /mnt/v",
        "head -c 8M /dev/urandom > /tmp/blob && cp /tmp/blob /mnt/v/blob",
        "echo hello-from-the-guest-kernel > /mnt/v/hello.txt",
        "sync && umount /mnt/v",
        "e2fsck -fn /dev/nbd0",
        "echo 3 > /proc/sys/vm/drop_caches",
        "mount /dev/nbd0 /mnt/v",
        "cmp /tmp/blob /mnt/v/blob",
        "grep -qx hello-from-the-guest-kernel /mnt/v/hello.txt",
        "umount /mnt/v",
      ].join("\n"),
      300_000,
    );
  }, 300_000);

  test("raw bytes written with O_DIRECT read back the same", async () => {
    await guest(
      [
        "set -e",
        `dd if=/mnt/host/pattern.bin of=/dev/nbd0 bs=1M seek=${RAW_OFFSET_MIB} oflag=direct conv=fsync status=none`,
        `dd if=/dev/nbd0 of=/tmp/back.bin bs=1M skip=${RAW_OFFSET_MIB} count=${RAW_BYTES / MiB} iflag=direct status=none`,
        "cmp /mnt/host/pattern.bin /tmp/back.bin",
      ].join("\n"),
      120_000,
    );
  }, 120_000);

  test("detach is refused while /dev/nbd0 is mounted; the filesystem stays usable", async () => {
    await guest("mount /dev/nbd0 /mnt/v");
    const r = await g!.sh(`${N} client detach --volume v1`);
    expect(r.code).not.toBe(0);
    expect(r.stdout + r.stderr).toContain("/dev/nbd0 is in use");
    await guest("test -e /sys/block/nbd0/pid && cmp /tmp/blob /mnt/v/blob && umount /mnt/v");
  }, 120_000);

  test("detach unbinds /dev/nbd0", async () => {
    await guest(`${N} client detach --volume v1`);
    await guest("! test -e /sys/block/nbd0/pid");
    expect((await guest("blockdev --getsize64 /dev/nbd0")).trim()).toBe("0");
    expect(JSON.parse(await guest(`${N} client show -o json`))).toEqual([]);
  }, 120_000);

  test("the client daemon's shutdown unbinds its devices", async () => {
    await guest(`${N} client attach --volume v1 --nbd-device /dev/nbd0`);
    await guest("test -e /sys/block/nbd0/pid");
    await guest(
      [
        "kill -TERM $(cat /tmp/client.pid)",
        "for i in $(seq 300); do kill -0 $(cat /tmp/client.pid) 2>/dev/null || break; sleep 0.1; done",
        "! kill -0 $(cat /tmp/client.pid) 2>/dev/null",
        "! test -e /sys/block/nbd0/pid",
      ].join("\n"),
    );
  }, 120_000);

  test("on this host, another client reads what the guest's kernel wrote", async () => {
    await c.startClient();
    const uri = await c.attach("v1");
    const img = `${c.dir}/v1.raw`;
    await ok(["nbdcopy", uri, img], { timeout_ms: 120_000 });
    const bytes = readFileSync(img);
    expect(bytes.length).toBe(VOLUME_BYTES);
    expect(Buffer.compare(bytes.subarray(RAW_OFFSET_MIB * MiB, RAW_OFFSET_MIB * MiB + RAW_BYTES), pattern)).toBe(0);
    expect(await ok(["debugfs", "-R", "cat /hello.txt", img])).toBe("hello-from-the-guest-kernel\n");
    // Both legs of the mirror hold the same bytes.
    const cmp = c.compareLegs(await c.volume("v1"));
    expect(cmp.differences).toEqual([]);
  }, 180_000);
});
