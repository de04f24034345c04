/**
 * Mirrored volumes with real processes of the compiled binary on loopback (3 targets, 1 TOMA,
 * 1 client daemon) and real faults: kill -9 of a target while fio writes and verifies through the
 * NBD export, the target restarted, its drive swapped for a blank one, kill -9 of the client
 * daemon in the middle of its writes. After each, the legs are compared byte for byte on the
 * drive files. Timings are printed, never asserted (the machine is noisy).
 */
import { afterEach, describe, expect, test } from "bun:test";
import type { VolumeJson } from "../../src/toma/api-types.ts";
import { Cluster } from "../support/cluster.ts";
import { FioVerify, fillRandom, readAll, readRange } from "../support/fio.ts";
import { Daemon, requireTool } from "../support/proc.ts";

const MiB = 2 ** 20;
let cluster: Cluster | null = null;

afterEach(async () => {
  await cluster?.destroy();
  cluster = null;
});

/** A 3-target cluster with a 256 MiB RAID1 volume "m1", filled with random data, attached. */
async function raid1(): Promise<{ c: Cluster; uri: string; data: Uint8Array }> {
  for (const t of ["fio", "nbdcopy", "qemu-img"]) requireTool(t);
  // Three targets: a cluster change needs a majority of the drives, so one may die.
  const c = await new Cluster({ targets: 3, drive_size: "512M" }).start();
  cluster = c;
  await c.cli("volume", "create", "--name", "m1", "--capacity", "256M", "--raid-level", "1");
  const uri = await c.attach("m1");
  const data = await fillRandom(uri, c.dir, "fill.bin", 256 * MiB);
  return { c, uri, data };
}

/** The target that serves the drive of column `column` of the volume. */
function targetOf(c: Cluster, v: VolumeJson, column: number): number {
  const path = c.driveFile(v.columns[column]!.drive_uuid).path;
  return c.drives.findIndex((ds) => ds.includes(path));
}

const isNormal = (v: VolumeJson) => v.state === "online" && v.legs.every((l) => l === "ok");
const isDegraded = (v: VolumeJson) => v.state === "degraded" && v.legs.includes("dead");

/** The bytes the TOMA's last rebuild of `column` copied (its log line). */
function rebuiltBytes(c: Cluster, volume: string, column: number): number {
  const all = [...c.toma!.output.matchAll(new RegExp(`rebuild done volume=${volume} column=${column} bytes=(\\d+)`, "g"))];
  if (all.length === 0) throw new Error(`no rebuild of ${volume} column ${column} in the TOMA's log:\n${c.toma!.output}`);
  return Number(all.at(-1)![1]);
}

function clock(): () => string {
  const t0 = performance.now();
  return () => `${((performance.now() - t0) / 1000).toFixed(2)} s`;
}

function expectLegsEqual(c: Cluster, v: VolumeJson): void {
  const cmp = c.compareLegs(v);
  console.log(`  legs compared on the drive files: ${cmp.bytes / MiB} MiB of each copy, ${cmp.differences.length} differences`);
  expect(cmp.differences).toEqual([]);
  expect(cmp.bytes).toBe(v.capacity_bytes);
}

/** Prints the longest pause of fio's completions between two moments (performance.now()). */
function stallBetween(fio: FioVerify, what: string, from_ms: number, to_ms: number): void {
  const [a, b] = [fio.fioTime(from_ms), fio.fioTime(to_ms)];
  const s = fio.longestStall(a, b);
  console.log(`  longest stall ${what} (${(a / 1000).toFixed(2)}..${(b / 1000).toFixed(2)} s of fio's run): ${s.gap_ms} ms, from ${(s.at_ms / 1000).toFixed(2)} s`);
}

async function expectFioClean(fio: FioVerify, label: string): Promise<void> {
  const r = await fio.result();
  const stall = fio.longestStall();
  console.log(
    `  ${label}: fio wrote ${(r.write.io_bytes / MiB).toFixed(0)} MiB, read back and verified ${(r.read.io_bytes / MiB).toFixed(0)} MiB; ` +
      `longest stall between completions ${stall.gap_ms} ms (at ${(stall.at_ms / 1000).toFixed(2)} s); ` +
      `write clat max ${(r.write.clat_ns.max / 1e6).toFixed(1)} ms, mean ${(r.write.clat_ns.mean / 1e3).toFixed(0)} us`,
  );
  expect(r.error).toBe(0);
  expect(r.write.io_bytes).toBeGreaterThan(0);
  // Every block written is read back and checked; at most the last backlog is left unread.
  expect(r.read.io_bytes).toBeGreaterThanOrEqual(r.write.io_bytes - 256 * 64 * 1024);
}

describe("RAID1 with real processes", () => {
  test("target kill -9 while fio verifies: Degraded, I/O goes on, a second client attaches and reads; restarted: only the regions written meanwhile are copied, Normal, legs equal", async () => {
    const { c, uri, data } = await raid1();
    let v = await c.volume("m1");
    const victim = targetOf(c, v, 1);
    const el = clock();
    // fio writes (and verifies) only the first 48 MiB: that is all the Degraded writes can dirty.
    const fio = new FioVerify({ uri, dir: c.dir, name: "kill", size: "48M", runtime_s: 25 });
    await Bun.sleep(3000);
    console.log(`  ${el()}: kill -9 target t${victim} (leg 1)`);
    const killed_at = performance.now();
    await c.killTarget(victim);
    v = await c.waitVolume("m1", "degraded", isDegraded);
    console.log(`  ${el()}: volume ${v.state}, legs ${v.legs.join(",")}`);
    // A client on another host attaches the Degraded volume (its dead leg's drive is gone) and
    // reads what fio does not touch; it stays attached, so it takes part in every switch after.
    const host2 = await c.startExtraClient("host2");
    const uri2 = await c.attachOn(host2, "m1");
    const tail = await readRange(uri2, c.dir, "host2.bin", 48 * MiB, 208 * MiB);
    expect(Buffer.from(tail).equals(Buffer.from(data.subarray(48 * MiB)))).toBe(true);
    console.log(`  ${el()}: a second client daemon attached the Degraded volume and read it`);
    await Bun.sleep(2000);
    const restarted_at = performance.now();
    await c.restartTarget(victim);
    console.log(`  ${el()}: target t${victim} restarted`);
    v = await c.waitVolume("m1", "Normal again", isNormal, 90_000);
    const normal_at = performance.now();
    console.log(`  ${el()}: volume ${v.state}, legs ${v.legs.join(",")}`);
    const copied = rebuiltBytes(c, "m1", 1);
    console.log(`  rebuild copied ${copied / MiB} MiB of the ${v.capacity_bytes / MiB} MiB leg`);
    expect(copied).toBeGreaterThan(0);
    expect(copied).toBeLessThanOrEqual(48 * MiB);
    await expectFioClean(fio, "through the kill and the rebuild");
    stallBetween(fio, "from the kill to the restart", killed_at - 500, restarted_at);
    stallBetween(fio, "from the restart to Normal", restarted_at, normal_at + 500);
    expectLegsEqual(c, await c.volume("m1"));
  }, 150_000);

  test("target paused (SIGSTOP) for 35 s while fio verifies: no I/O error, Degraded; resumed (SIGCONT): rebuilt, Normal, legs equal", async () => {
    const { c, uri } = await raid1();
    let v = await c.volume("m1");
    const victim = targetOf(c, v, 1);
    const pid = c.targets[victim]!.proc.pid;
    const el = clock();
    const fio = new FioVerify({ uri, dir: c.dir, name: "pause", size: "48M", runtime_s: 50 });
    await Bun.sleep(3000);
    // Alive, its connections open, its kernel acknowledging every byte: it answers nothing. Longer
    // than every timeout (the session's liveness deadline, the client's I/O timeout, the TOMA's
    // client expiry).
    console.log(`  ${el()}: SIGSTOP target t${victim} (leg 1)`);
    const paused_at = performance.now();
    process.kill(pid, "SIGSTOP");
    let resumed_at = 0;
    try {
      v = await c.waitVolume("m1", "degraded", isDegraded);
      console.log(`  ${el()}: volume ${v.state}, legs ${v.legs.join(",")} (${((performance.now() - paused_at) / 1000).toFixed(2)} s after the pause)`);
      await Bun.sleep(Math.max(0, 35_000 - (performance.now() - paused_at)));
    } finally {
      process.kill(pid, "SIGCONT");
      resumed_at = performance.now();
    }
    console.log(`  ${el()}: SIGCONT target t${victim}`);
    v = await c.waitVolume("m1", "Normal again", isNormal, 90_000);
    const normal_at = performance.now();
    console.log(`  ${el()}: volume ${v.state}, legs ${v.legs.join(",")}; rebuild copied ${rebuiltBytes(c, "m1", 1) / MiB} MiB`);
    await expectFioClean(fio, "through the pause and the rebuild");
    stallBetween(fio, "from the pause to the resume", paused_at - 500, resumed_at);
    stallBetween(fio, "from the resume to Normal", resumed_at, normal_at + 500);
    expectLegsEqual(c, await c.volume("m1"));
  }, 200_000);

  test("a leg's target killed and the TOMA stopped (SIGSTOP) 20 s at once: the client is not expired for the TOMA's own stop; Degraded, no I/O error; restarted: Normal, legs equal", async () => {
    const { c, uri } = await raid1();
    let v = await c.volume("m1");
    const victim = targetOf(c, v, 1);
    const el = clock();
    const fio = new FioVerify({ uri, dir: c.dir, name: "tomastop", size: "48M", runtime_s: 45 });
    await Bun.sleep(3000);
    // A whole server stopped (its target dies, the TOMA beside it stands still), as an emulated
    // guest starved of CPU. On waking, the TOMA's timers run before it reads what its clients
    // sent meanwhile: judged by the raw clock, the client had been silent past its timeout, was
    // expired, and could never be fenced out of the dead target's drive, so nothing completed
    // until that target came back.
    console.log(`  ${el()}: kill -9 target t${victim} (leg 1), SIGSTOP the TOMA for 20 s`);
    await c.killTarget(victim);
    const toma = c.toma!.proc.pid;
    process.kill(toma, "SIGSTOP");
    try {
      await Bun.sleep(20_000);
    } finally {
      process.kill(toma, "SIGCONT");
    }
    console.log(`  ${el()}: SIGCONT the TOMA`);
    v = await c.waitVolume("m1", "degraded", isDegraded);
    console.log(`  ${el()}: volume ${v.state}, legs ${v.legs.join(",")}`);
    await expectFioClean(fio, "through the kill and the TOMA's stop");
    expect(c.toma!.output).not.toContain("client expired");
    await c.restartTarget(victim);
    v = await c.waitVolume("m1", "Normal again", isNormal, 90_000);
    console.log(`  ${el()}: volume ${v.state}, legs ${v.legs.join(",")}`);
    expectLegsEqual(c, await c.volume("m1"));
  }, 300_000);

  test("a blank drive replaces the dead one (drive evict): full rebuild with progress in volume show, legs equal; an idle client daemon holds nothing back", async () => {
    const { c, uri } = await raid1();
    // A client daemon whose only attach failed (no such volume) stays up: it has no I/O, so it
    // must not hold back the topology steps below (it once froze them for good).
    const bystander = await c.startExtraClient("bystander");
    expect((await c.cliRaw("client", "attach", "--volume", "no-such-volume", "--run-dir", `${c.dir}/run-bystander`)).code).not.toBe(0);
    expect(bystander.daemon.alive).toBe(true);
    let v = await c.volume("m1");
    // Fill the third drive, so the only place for the new leg is the blank drive in the old slot.
    const spare = c.drive_files.values().find((f) => !v.columns.some((x) => x.drive_uuid === f.uuid))!;
    const d = (await c.cliJson<{ uuid: string; extents_free: number; extent_size_bytes: number }[]>("drive", "show")).find((x) => x.uuid === spare.uuid)!;
    await c.cli("volume", "create", "--name", "filler", "--capacity", String(d.extents_free * d.extent_size_bytes), "--raid-level", "concatenated");
    const old = v.columns[1]!.drive_uuid;
    const victim = targetOf(c, v, 1);
    const el = clock();
    const fio = new FioVerify({ uri, dir: c.dir, name: "replace", size: "48M", runtime_s: 25 });
    await Bun.sleep(2000);
    console.log(`  ${el()}: kill -9 target t${victim}; its drive is swapped for a blank formatted one`);
    const killed_at = performance.now();
    await c.killTarget(victim);
    v = await c.waitVolume("m1", "degraded", isDegraded);
    const blank = await c.replaceDrive(victim);
    await c.restartTarget(victim);
    await waitFor(async () => (await c.cliJson<{ uuid: string; member: boolean }[]>("drive", "show")).some((x) => x.uuid === blank.uuid && x.member), "blank drive a member");
    console.log(`  ${el()}: blank drive ${blank.uuid} is a member; evicting ${old}`);
    const evicted_at = performance.now();
    await c.cli("drive", "evict", old);
    // Watch the rebuild, and keep one table of `volume show` taken while it runs.
    const samples: number[] = [];
    let table = "";
    const deadline = performance.now() + 90_000;
    for (v = await c.volume("m1"); !isNormal(v); v = await c.volume("m1")) {
      if (performance.now() > deadline) throw new Error(`not Normal after 90 s: ${JSON.stringify(v.leg_views)}\n${c.toma!.output}`);
      const r = v.leg_views[1]?.rebuild;
      if (v.legs[1] === "syncing" && r && r.total_bytes > 0) {
        samples.push(r.done_bytes / r.total_bytes);
        if (!table) {
          const out = await c.cli("volume", "show", "m1");
          if (/\[[#.]{20}\] \d+%/.test(out)) table = out;
        }
      }
    }
    console.log(`  ${el()}: volume ${v.state}; rebuild progress seen: ${samples.map((f) => `${Math.floor(f * 100)}%`).join(" ")}`);
    const normal_at = performance.now();
    if (table) console.log(`  volume show m1 during the rebuild:\n${table.replace(/^/gm, "    ")}`);
    expect(samples.length).toBeGreaterThan(0);
    expect(v.columns[1]!.drive_uuid).toBe(blank.uuid);
    expect(rebuiltBytes(c, "m1", 1)).toBe(v.capacity_bytes);
    await expectFioClean(fio, "through the swap and the full rebuild");
    stallBetween(fio, "from the kill to the eviction", killed_at - 500, evicted_at);
    stallBetween(fio, "from the eviction to Normal (full rebuild)", evicted_at, normal_at + 500);
    expectLegsEqual(c, await c.volume("m1"));
  }, 150_000);
});

describe("RAID1 with real processes, client faults", () => {
  test("client daemon kill -9 in the middle of its writes: its stale locks are recovered, legs equal, data readable by a new client", async () => {
    const { c, uri, data } = await raid1();
    const el = clock();
    // Writes only (no verify reads in between), 32 in flight: the daemon holds locks when it dies.
    const fio = new Daemon("fio writes", [
      "fio", "--name=w", "--ioengine=nbd", `--uri=${uri}`, "--rw=randwrite", "--bs=64k", "--iodepth=32",
      "--size=32M", "--time_based", "--runtime=60",
    ]);
    await Bun.sleep(3000);
    // Frozen (SIGSTOP) until it is seen holding locks (it drains them in its pauses), then killed.
    let v = await c.volume("m1");
    const legs = v.columns.map((x, i) => ({ t: targetOf(c, v, i), drive: x.drive_uuid }));
    const pid = c.client!.proc.pid;
    let held: Awaited<ReturnType<Cluster["locks"]>> = [];
    for (let attempt = 0; attempt < 50; attempt++) {
      process.kill(pid, "SIGSTOP");
      await Bun.sleep(100);
      held = (await Promise.all(legs.map((l) => c.locks(l.t, l.drive)))).flat();
      if (held.length > 0) break;
      process.kill(pid, "SIGCONT");
      await Bun.sleep(50 + 10 * attempt);
    }
    console.log(`  ${el()}: kill -9 the client daemon`);
    await c.client!.stop("SIGKILL");
    await fio.proc.exited;
    const before = c.compareLegs(v, 1000);
    console.log(`  right after the kill: the dead client holds ${held.length} lock(s); ${before.differences.length} MiB chunk(s) of the legs differ`);
    // A new client daemon (a new client id) attaches at once and reads everything: reads of a
    // unit the dead one still locks wait until the TOMA has recovered it.
    await c.startClient();
    const uri2 = await c.attach("m1");
    console.log(`  ${el()}: a new client daemon attached the volume`);
    const reading = readAll(uri2, c.dir, "after.bin");
    const m = await c.toma!.waitFor(/stale locks recovered volume=m1 [^\n]*/, 60_000);
    console.log(`  ${el()}: ${m[0]}`);
    const units = [...c.toma!.output.matchAll(/stale locks recovered volume=m1 set=\d+ units=(\d+)/g)].reduce((n, x) => n + Number(x[1]), 0);
    expect(units).toBeGreaterThan(0);
    const back = await reading;
    console.log(`  ${el()}: the new client read all ${back.length / MiB} MiB`);
    // Outside the range fio wrote, the data is what was written before.
    expect(Buffer.from(back.subarray(32 * MiB)).equals(Buffer.from(data.subarray(32 * MiB)))).toBe(true);
    v = await c.volume("m1");
    expect(isNormal(v)).toBe(true);
    expectLegsEqual(c, v);
    expect(held.length).toBeGreaterThan(0);
    const left = (await Promise.all(legs.map((l) => c.locks(l.t, l.drive)))).flat();
    expect(left.filter((l) => held.some((h) => h.client_id === l.client_id))).toEqual([]);
    // And the volume takes verified writes again.
    const fio2 = new FioVerify({ uri: uri2, dir: c.dir, name: "after", size: "32M" });
    await expectFioClean(fio2, "the new client");
    expectLegsEqual(c, await c.volume("m1"));
  }, 150_000);
});

describe("RAID10 with real processes", () => {
  test("fio verify through RAID10 (2 mirror sets) while a target holding legs of both sets is killed and restarted: legs of each set equal", async () => {
    for (const t of ["fio", "nbdcopy"]) requireTool(t);
    const c = await new Cluster({ targets: 3, drives_per_target: 2, drive_size: "256M" }).start();
    cluster = c;
    await c.cli("volume", "create", "--name", "m10", "--capacity", "256M", "--raid-level", "10", "--stripe-width", "2");
    const uri = await c.attach("m10");
    let v = await c.volume("m10");
    expect(v.columns.length).toBe(4);
    expect(new Set(v.columns.map((x) => x.drive_uuid)).size).toBe(4);
    for (const set of [0, 1]) expect(targetOf(c, v, 2 * set)).not.toBe(targetOf(c, v, 2 * set + 1));
    await fillRandom(uri, c.dir, "fill.bin", 256 * MiB);
    // The target with the most legs (with 4 legs on 3 targets, one holds a leg of each set).
    const legsOn = (t: number) => v.columns.filter((_, i) => targetOf(c, v, i) === t).length;
    const victim = [0, 1, 2].sort((a, b) => legsOn(b) - legsOn(a))[0]!;
    const el = clock();
    const fio = new FioVerify({ uri, dir: c.dir, name: "raid10", size: "128M", iodepth: 32, runtime_s: 20 });
    await Bun.sleep(3000);
    console.log(`  ${el()}: kill -9 target t${victim} (${legsOn(victim)} legs)`);
    const killed_at = performance.now();
    await c.killTarget(victim);
    v = await c.waitVolume("m10", "degraded", isDegraded);
    console.log(`  ${el()}: volume ${v.state}, legs ${v.legs.join(",")}`);
    await Bun.sleep(3000);
    const restarted_at = performance.now();
    await c.restartTarget(victim);
    v = await c.waitVolume("m10", "Normal again", isNormal, 90_000);
    const normal_at = performance.now();
    console.log(`  ${el()}: volume ${v.state}, legs ${v.legs.join(",")}`);
    await expectFioClean(fio, "RAID10 through the kill and the rebuild");
    stallBetween(fio, "from the kill to the restart", killed_at - 500, restarted_at);
    stallBetween(fio, "from the restart to Normal", restarted_at, normal_at + 500);
    expectLegsEqual(c, await c.volume("m10"));
  }, 150_000);
});

async function waitFor(cond: () => Promise<boolean>, what: string, timeout_ms = 30_000): Promise<void> {
  const deadline = performance.now() + timeout_ms;
  while (!(await cond())) {
    if (performance.now() > deadline) throw new Error(`not ${what} after ${timeout_ms} ms`);
    await Bun.sleep(100);
  }
}
