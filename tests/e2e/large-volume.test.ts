/**
 * A 10 TiB RAID1 volume end to end, with real processes: two targets, each with one 10 TiB sparse
 * drive file, the TOMA and a client daemon. Its layout reaches the client as runs (one pair per
 * leg), so the attach view and `volume show` stay a few hundred bytes whatever the size; qemu-io
 * writes and reads back the first and the last 64 KiB of the volume through the client daemon,
 * and the drive files hold them exactly where the runs say. The view's size, and what the same
 * view would take with every extent listed, are printed (docs/protocol.md, "Attach info").
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { closeSync, openSync, readSync } from "node:fs";
import { fromRuns, runsLength } from "../../src/engine/layout/extent-runs.ts";
import type { AttachInfo } from "../../src/engine/layout/types.ts";
import type { VolumeJson } from "../../src/toma/api-types.ts";
import { tomaClient } from "../../src/toma/api-client.ts";
import { Cluster } from "../support/cluster.ts";
import { ok, requireTool } from "../support/proc.ts";

const TiB = 2 ** 40;
const CAPACITY = 10 * TiB;
const CHUNK = 64 * 1024;
let c: Cluster;

beforeAll(async () => {
  requireTool("qemu-io");
  // 10 TiB of extents plus the drive's metadata: sparse files, a few KiB on the host's disk.
  c = await new Cluster({ targets: 2, drive_size: "10241G" }).start();
  await c.cli("volume", "create", "--name", "big", "--capacity", "10T", "--raid-level", "1");
}, 120_000);

afterAll(async () => {
  await c?.destroy();
});

test("a 10 TiB RAID1 volume's attach view and volume show carry one run per leg", async () => {
  const info = await tomaClient(c.toma_addr, { key: c.key }).attach("big");
  expect(info.layout.capacity_bytes).toBe(CAPACITY);
  const E = info.layout.extent_size_bytes;
  for (const col of info.layout.columns) {
    // The allocator took each leg contiguously: one run of the whole leg.
    expect(col.runs.length).toBe(2);
    expect(col.runs[1]).toBe(CAPACITY / E);
  }
  const sent = JSON.stringify(info).length;
  // The same view with every extent listed, as the attach view was before runs.
  const listed = JSON.stringify({ ...info, layout: { ...info.layout, columns: info.layout.columns.map((x) => ({ drive_uuid: x.drive_uuid, extents: fromRuns(x.runs) })) } }).length;
  const shown = (await c.cli("volume", "show", "big", "-o", "json")).length;
  console.log(`  10 TiB RAID1, ${E / 2 ** 20} MiB extents: attach view ${sent} bytes of JSON (${listed} with every extent listed); volume show -o json ${shown} bytes`);
  const v = await c.cliJson<VolumeJson>("volume", "show", "big");
  expect(v.columns.map((x) => runsLength(x.runs))).toEqual([CAPACITY / E, CAPACITY / E]);
});

test("qemu-io through the client daemon: the first and the last 64 KiB written, read back, and on both legs where the runs say", async () => {
  const uri = await c.attach("big");
  const last = CAPACITY - CHUNK;
  await ok(["qemu-io", "-f", "raw", "-c", `write -P 0xa1 0 ${CHUNK}`, "-c", `write -P 0xb2 ${last} ${CHUNK}`, uri]);
  // Another NBD connection: read from what the legs hold, not from the writer's session.
  await ok(["qemu-io", "-f", "raw", "-c", `read -P 0xa1 0 ${CHUNK}`, "-c", `read -P 0xb2 ${last} ${CHUNK}`, "-c", `read -P 0 ${CHUNK} ${CHUNK}`, uri]);

  const info: AttachInfo = await tomaClient(c.toma_addr, { key: c.key }).attach("big");
  const E = info.layout.extent_size_bytes;
  const buf = new Uint8Array(CHUNK);
  for (const col of info.layout.columns) {
    const f = c.driveFile(col.drive_uuid);
    const fd = openSync(f.path, "r");
    try {
      // Volume byte 0 is in the first extent of the leg's run; the last chunk ends its last extent.
      const [start, count] = [col.runs[0]!, col.runs[1]!];
      readSync(fd, buf, 0, CHUNK, f.data_offset + start * E);
      expect(buf.every((b) => b === 0xa1)).toBe(true);
      readSync(fd, buf, 0, CHUNK, f.data_offset + (start + count) * E - CHUNK);
      expect(buf.every((b) => b === 0xb2)).toBe(true);
    } finally {
      closeSync(fd);
    }
  }
}, 60_000);
