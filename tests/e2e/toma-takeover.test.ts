/**
 * A TOMA cluster takes over a cluster the single TOMA managed, with real processes: three targets
 * with a file drive each and one `toma run` (no --peers) over all three; a RAID1 volume written by
 * qemu-io through the client daemon; everything but the targets stopped; then three `toma run
 * --peers`, one per target. Checked: they found the cluster from the single TOMA's state (its
 * log says so), keep its cluster uuid, and `volume show` through every TOMA lists the volume with
 * the same uuid, columns and legs; the term is above the single TOMA's; the data is still on both
 * legs, equal, and a client daemon homed on the cluster reads it back. The offline tools read both formats from the same drive files: `drive metadata`
 * shows the single TOMA's state before, each TOMA's hard-state record after (its toma id, term,
 * commit, and the state at the commit with a volume created by the cluster); `forensics scan`
 * takes a debug-format volume's layout from a TOMA's record.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { openSync, readSync, closeSync } from "node:fs";
import type { ClusterJson, DriveJson, VolumeJson } from "../../src/toma/api-types.ts";
import { Cluster } from "../support/cluster.ts";
import { TomaPeers } from "../support/toma-peers.ts";
import { NVMESH, ok, requireTool, run } from "../support/proc.ts";
import type { SlotContents } from "../../src/toma/slot-contents.ts";
import { toRuns } from "../../src/engine/layout/extent-runs.ts";

interface MetadataJson {
  drive_uuid: string;
  cluster_uuid: string;
  slot: { generation: number; other: string };
  contents: SlotContents;
}

async function metadata(path: string): Promise<MetadataJson> {
  return JSON.parse(await ok([NVMESH, "drive", "metadata", path, "-o", "json"])) as MetadataJson;
}

let c: Cluster;
let p: TomaPeers | null = null;

beforeAll(async () => {
  requireTool("qemu-io");
  c = new Cluster({ targets: 3, drive_size: "128M" });
  await c.formatDrives();
  for (let t = 0; t < 3; t++) await c.startTarget(t);
}, 60_000);

afterAll(async () => {
  await p?.stopAll();
  await c.destroy();
});

test("three `toma run --peers` take over the single TOMA's cluster: same uuid, the volume with the same uuid and legs on every TOMA, its data intact; the tools read both formats", async () => {
  // The single TOMA: a mirror written through the client daemon, and a debug-format mirror.
  await c.startToma();
  await c.startClient();
  await c.cli("volume", "create", "--name", "m1", "--capacity", "8M", "--raid-level", "1");
  await ok(["qemu-io", "-f", "raw", "-c", "write -P 0x5a 0 4M", "-c", "read -P 0x5a 0 4M", await c.attach("m1")]);
  await c.cli("volume", "create", "--name", "dbg", "--capacity", "1M", "--raid-level", "1", "--debug-format");
  await ok(["qemu-io", "-f", "raw", "-c", "write -P 0x33 0 256k", await c.attach("dbg")]);
  const before = (await c.cliJson<{ cluster: ClusterJson }>("cluster", "status")).cluster;
  const shown = await c.cliJson<VolumeJson[]>("volume", "show");
  const vol = shown.find((v) => v.name === "m1")!;
  const dbg = shown.find((v) => v.name === "dbg")!;
  await c.client!.stop("SIGTERM");
  await c.toma!.stop("SIGTERM");

  // Offline, the drives hold the single TOMA's state.
  const files = c.drives.map((d) => d[0]!);
  for (const f of files) {
    const m = await metadata(f);
    expect(m.contents.kind).toBe("single_toma");
    if (m.contents.kind !== "single_toma") continue;
    expect(m.contents.state.cluster_uuid).toBe(before.cluster_uuid!);
    expect(m.contents.state.generation).toBe(before.generation!);
  }

  // The TOMA cluster on the same targets.
  p = await TomaPeers.start(c, { count: 3 });
  const a = await p.agreed([0, 1, 2], () => true, 30_000);
  for (const v of a.views) expect(v.cluster_uuid).toBe(before.cluster_uuid);
  expect(a.term).toBeGreaterThan(before.term!);
  expect(p.tomas.some((t) => t!.output.includes("taking over the single-TOMA cluster state"))).toBe(true);
  for (let i = 0; i < 3; i++) {
    const r = await run([NVMESH, "volume", "show", "-m", p.addrs[i]!, "-o", "json"], { env: c.keyEnv });
    expect(r.code).toBe(0);
    const mine = (JSON.parse(r.stdout) as VolumeJson[]).filter((v) => v.name === "m1");
    expect(mine.length).toBe(1);
    expect(mine[0]!.uuid).toBe(vol.uuid);
    expect(mine[0]!.columns).toEqual(vol.columns);
    expect(mine[0]!.legs).toEqual(vol.legs);
    expect((await p.status(i))?.cluster_uuid).toBe(before.cluster_uuid);
  }

  // The data written through the single TOMA is on both legs, equal.
  expect(c.compareLegs(vol).differences).toEqual([]);
  const col = vol.columns[0]!;
  const f = c.driveFile(col.drive_uuid);
  const fd = openSync(f.path, "r");
  const buf = new Uint8Array(4096);
  try {
    readSync(fd, buf, 0, buf.length, f.data_offset + col.runs[0]! * vol.extent_size_bytes);
  } finally {
    closeSync(fd);
  }
  expect(buf.every((b) => b === 0x5a)).toBe(true);

  // The servers report their drives (claimed for this very cluster by the single TOMA) and every
  // TOMA lists them as members; then a volume created by the cluster: a committed entry on top of
  // the taken-over snapshot.
  const pooled = performance.now() + 30_000;
  for (;;) {
    const all = await Promise.all(
      [0, 1, 2].map(async (i) => {
        const r = await run([NVMESH, "drive", "show", "-m", p!.addrs[i]!, "-o", "json"], { env: c.keyEnv });
        return r.code === 0 ? (JSON.parse(r.stdout) as DriveJson[]) : null;
      }),
    );
    if (all.every((d) => d !== null && d.length === 3 && d.every((x) => x.member && x.state === "ok" && x.server))) break;
    if (performance.now() > pooled) throw new Error(`the drives never joined the pool: ${JSON.stringify(all)}\n${p.logs()}`);
    await Bun.sleep(200);
  }
  // A client daemon given the TOMAs' addresses attaches m1 through the cluster's leader and reads
  // back what was written through the single TOMA.
  c.toma_addr = a.leader;
  c.client_management = p.addrs.join(",");
  await c.startClient();
  await ok(["qemu-io", "-f", "raw", "-c", "read -P 0x5a 0 4M", await c.attach("m1")]);
  await c.cli("client", "detach", "--volume", "m1");
  await c.client!.stop("SIGTERM");

  // A TOMA persists its commit index only with its next change (a commit alone is not written),
  // so m3 comes after m2 for the records to show m2 committed.
  await ok([NVMESH, "volume", "create", "-m", p.addrs[0]!, "--name", "m2", "--capacity", "4M", "--raid-level", "1"], { env: c.keyEnv });
  await ok([NVMESH, "volume", "create", "-m", p.addrs[0]!, "--name", "m3", "--capacity", "1M", "--raid-level", "0"], { env: c.keyEnv });
  const gen = async (i: number) => (await p!.status(i))?.generation ?? -1;
  const deadline = performance.now() + 10_000;
  let applied: number[] = [];
  while (performance.now() < deadline) {
    applied = await Promise.all([0, 1, 2].map(gen));
    if (applied.every((g) => g === applied[0] && g > before.generation!)) break;
    await Bun.sleep(200);
  }
  expect(applied.every((g) => g === applied[0] && g > before.generation!)).toBe(true);

  // Deleting a volume the single TOMA created: its extents are zeroed under the leader's version
  // (the targets saw the single TOMA's, and take only higher ones) and released.
  await ok([NVMESH, "volume", "delete", "-y", "-m", p.addrs[1]!, "m1"], { env: c.keyEnv });
  const released = performance.now() + 20_000;
  for (;;) {
    const r = await run([NVMESH, "drive", "show", "-m", p.addrs[0]!, "-o", "json"], { env: c.keyEnv });
    const ds = r.code === 0 ? (JSON.parse(r.stdout) as DriveJson[]) : [];
    if (ds.length === 3 && ds.every((d) => (d.extents_retired ?? 0) === 0)) break;
    if (performance.now() > released) throw new Error(`m1's extents never released: ${r.stdout}\n${p.logs()}`);
    await Bun.sleep(200);
  }
  await p.stopAll();

  // Offline again: each drive holds its own TOMA's record, and the state at its commit.
  for (const [i, path] of files.entries()) {
    const m = await metadata(path);
    expect(m.contents.kind).toBe("hard_state");
    if (m.contents.kind !== "hard_state") continue;
    const r = m.contents.record;
    expect(r.toma_id).toBe(`toma${i}`);
    expect(r.cluster_uuid).toBe(before.cluster_uuid!);
    expect(r.snapshot.index).toBe(before.generation! + 1);
    expect(r.snapshot.term).toBe(before.term! + 1);
    expect(r.term).toBeGreaterThan(before.term!);
    expect(m.contents.state!.cluster_uuid).toBe(before.cluster_uuid!);
    expect(m.contents.state!.volumes.map((v) => v.name).sort()).toEqual(expect.arrayContaining(["dbg", "m2"]));
    expect(r.commit).toBeGreaterThan(r.snapshot.index);
    expect(m.contents.state!.volumes.find((v) => v.name === "dbg")!.columns.map((c) => ({ drive_uuid: c.drive_uuid, runs: toRuns(c.extents) }))).toEqual(dbg.columns);
    const text = await ok([NVMESH, "drive", "metadata", path]);
    expect(text).toContain(`the hard-state record of TOMA toma${i}`);
    expect(text).toContain("m2");
  }

  // forensics: the debug-format volume's layout, from a TOMA's record.
  const legs = dbg.columns.map((x) => c.driveFile(x.drive_uuid).path);
  const scan = await run([NVMESH, "forensics", "scan", legs[0]!, "--peer", legs[1]!, "--volume", dbg.uuid, "--json"], { timeout_ms: 60_000 });
  expect(scan.code).toBeLessThan(2);
  const placement = (JSON.parse(scan.stdout) as { placement: { exact: boolean; found?: { kind: string; toma_id: string } } }).placement;
  expect(placement.exact).toBe(true);
  expect(placement.found?.kind).toBe("hard_state");
}, 120_000);
