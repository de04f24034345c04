/**
 * A TOMA cluster takes over a cluster the single TOMA managed, with real processes: three targets
 * with a file drive each and one `toma run` (no --peers) over all three; a RAID1 volume written by
 * qemu-io through the client daemon; everything but the targets stopped; then three `toma run
 * --peers`, one per target. Checked: they found the cluster from the single TOMA's state (its
 * log says so), keep its cluster uuid, and `volume show` through every TOMA lists the volume with
 * the same uuid, columns and legs; the term is above the single TOMA's; the data is still on both
 * legs, equal.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { openSync, readSync, closeSync } from "node:fs";
import type { ClusterJson, VolumeJson } from "../../src/toma/api-types.ts";
import { Cluster } from "../support/cluster.ts";
import { TomaPeers } from "../support/toma-peers.ts";
import { NVMESH, ok, requireTool, run } from "../support/proc.ts";

let c: Cluster;
let p: TomaPeers | null = null;

beforeAll(async () => {
  requireTool("qemu-io");
  c = new Cluster({ targets: 3, drive_size: "64M" });
  await c.formatDrives();
  for (let t = 0; t < 3; t++) await c.startTarget(t);
}, 60_000);

afterAll(async () => {
  await p?.stopAll();
  await c.destroy();
});

test("three `toma run --peers` take over the single TOMA's cluster: same uuid, the volume with the same uuid and legs on every TOMA, its data intact", async () => {
  // The single TOMA: a mirror, written through the client daemon.
  await c.startToma();
  await c.startClient();
  await c.cli("volume", "create", "--name", "m1", "--capacity", "8M", "--raid-level", "1");
  const uri = await c.attach("m1");
  await ok(["qemu-io", "-f", "raw", "-c", "write -P 0x5a 0 4M", "-c", "read -P 0x5a 0 4M", uri]);
  const before = (await c.cliJson<{ cluster: ClusterJson }>("cluster", "status")).cluster;
  const [vol] = (await c.cliJson<VolumeJson[]>("volume", "show")).filter((v) => v.name === "m1");
  expect(vol).toBeDefined();
  await c.client!.stop("SIGTERM");
  await c.toma!.stop("SIGTERM");

  // The TOMA cluster on the same targets.
  p = await TomaPeers.start(c, { count: 3 });
  const a = await p.agreed([0, 1, 2], () => true, 30_000);
  for (const v of a.views) expect(v.cluster_uuid).toBe(before.cluster_uuid);
  expect(a.term).toBeGreaterThan(before.term!);
  expect(p.tomas.some((t) => t!.output.includes("taking over the single-TOMA cluster state"))).toBe(true);
  for (let i = 0; i < 3; i++) {
    const r = await run([NVMESH, "volume", "show", "-m", p.addrs[i]!, "-o", "json"], { env: c.keyEnv });
    expect(r.code).toBe(0);
    const shown = (JSON.parse(r.stdout) as VolumeJson[]).filter((v) => v.name === "m1");
    expect(shown.length).toBe(1);
    const v = shown[0]!;
    expect(v.uuid).toBe(vol!.uuid);
    expect(v.columns).toEqual(vol!.columns);
    expect(v.legs).toEqual(vol!.legs);
    const st = await p.status(i);
    expect(st?.cluster_uuid).toBe(before.cluster_uuid);
  }

  // The data written through the single TOMA is on both legs, equal.
  const legs = c.compareLegs(vol!);
  expect(legs.differences).toEqual([]);
  const col = vol!.columns[0]!;
  const f = c.driveFile(col.drive_uuid);
  const fd = openSync(f.path, "r");
  const buf = new Uint8Array(4096);
  try {
    readSync(fd, buf, 0, buf.length, f.data_offset + col.extents[0]! * vol!.extent_size_bytes);
  } finally {
    closeSync(fd);
  }
  expect(buf.every((b) => b === 0x5a)).toBe(true);
}, 120_000);
