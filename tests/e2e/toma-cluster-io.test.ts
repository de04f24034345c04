/**
 * I/O through a TOMA cluster, with real processes: three servers on 127.0.0.1, each a target with
 * one file drive and a `toma run --peers` TOMA, and a client daemon given every TOMA's address.
 * A RAID1 volume is attached (the daemon homed on the leader) and fio writes and verifies through
 * it while the leader's whole server (its TOMA and its target, which holds one leg of the
 * three-copy mirror) is killed with -9. Checked: a new leader takes over, the volume goes Degraded,
 * fio sees no error (the daemon re-homes on another TOMA and keeps its client id: the new leader
 * restored its registration from the cluster state), and once the killed processes are
 * back the leg is rebuilt (copied by the restarted server's own TOMA, on the new leader's order),
 * the volume is Normal, the daemon homes back on its first TOMA (once), and
 * the legs are equal on the drive files.
 * Then the leader's TOMA alone is paused (SIGSTOP) for 35 s under fio: a new leader, no I/O
 * error, and the client keeps its registration.
 * Timings are printed, never asserted.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import type { VolumeJson } from "../../src/toma/api-types.ts";
import { Cluster } from "../support/cluster.ts";
import { FioVerify } from "../support/fio.ts";
import { NVMESH, requireTool, run } from "../support/proc.ts";
import { TomaPeers } from "../support/toma-peers.ts";

const MiB = 2 ** 20;
let c: Cluster;
let p: TomaPeers;
/** The NBD URI of m1, attached by the first test and kept for the next. */
let uri = "";

async function volumeOn(i: number, name: string): Promise<VolumeJson | null> {
  const r = await run([NVMESH, "volume", "show", "-m", p.addrs[i]!, "-o", "json"], { env: c.keyEnv });
  if (r.code !== 0) return null;
  return (JSON.parse(r.stdout) as VolumeJson[]).find((v) => v.name === name) ?? null;
}

/** Polls the leader's view of the volume until `pred` holds. */
async function waitOn(which: number[], what: string, pred: (v: VolumeJson) => boolean, timeout_ms: number): Promise<VolumeJson> {
  const deadline = performance.now() + timeout_ms;
  let last: unknown = null;
  while (performance.now() < deadline) {
    const a = await p.agreed(which, () => true, timeout_ms).catch(() => null);
    const v = a ? await volumeOn(a.index, "m1") : null;
    last = v && { state: v.state, legs: v.legs, leg_views: v.leg_views.map((l) => l.reachable) };
    if (v && pred(v)) return v;
    await Bun.sleep(300);
  }
  throw new Error(`${what}: not within ${timeout_ms} ms; last ${JSON.stringify(last)}\n${p.logs()}\n--- client\n${c.client?.output.slice(-3000)}`);
}

beforeAll(async () => {
  requireTool("fio");
  c = new Cluster({ targets: 3, drives_per_target: 1, drive_size: "256M" });
  await c.formatDrives();
  for (let t = 0; t < 3; t++) await c.startTarget(t);
  p = await TomaPeers.start(c, { count: 3, name: (i) => `s${i}` });
}, 60_000);

afterAll(async () => {
  await c?.client?.stop("SIGKILL");
  await p?.stopAll();
  await c?.destroy();
});

test("kill -9 of the leader's server (TOMA and a leg's target) while fio verifies: a new leader, Degraded, no I/O error; back: rebuilt, Normal, legs equal", async () => {
  const t0 = performance.now();
  const el = () => `${((performance.now() - t0) / 1000).toFixed(2)} s`;
  const first = await p.agreed([0, 1, 2], () => true, 30_000);
  c.toma_addr = first.leader;
  // Every drive in the pool before the volume is carved.
  const deadline = performance.now() + 30_000;
  while ((await c.cliJson<{ member: boolean }[]>("drive", "show")).filter((d) => d.member).length < 3) {
    if (performance.now() > deadline) throw new Error(`drives not in the pool\n${p.logs()}`);
    await Bun.sleep(200);
  }
  // Three copies, one per server: the leader's server holds a leg whichever TOMA leads. (Killing
  // the leader's TOMA and another server's target would take two servers of three: that server's
  // TOMA keeps its state on its own target's drives, so no majority would be left to elect.)
  await c.cli("volume", "create", "--name", "m1", "--capacity", "128M", "--raid-level", "1", "--number-of-mirrors", "3");
  // Homed on the leader first, so that killing it makes the daemon move to another TOMA.
  c.client_management = [first.leader, ...p.addrs.filter((a) => a !== first.leader)].join(",");
  await c.startClient();
  uri = await c.attach("m1");
  console.log(`  ${el()}: m1 attached through the leader s${first.index}: ${uri}`);

  const v0 = (await volumeOn(first.index, "m1"))!;
  const serverOf = (drive: string) => c.drives.findIndex((ds) => ds.includes(c.driveFile(drive).path));
  const legServers = v0.columns.map((col) => serverOf(col.drive_uuid));
  const victimTarget = first.index;
  expect(legServers).toContain(victimTarget);
  const fio = new FioVerify({ uri, dir: c.dir, name: "leader-kill", size: "48M", runtime_s: 30 });
  await Bun.sleep(3000);
  console.log(`  ${el()}: kill -9 TOMA s${first.index} (leader, term ${first.term}) and target t${victimTarget} (legs on ${legServers.map((s) => `t${s}`).join(", ")})`);
  await Promise.all([p.tomas[first.index]!.stop("SIGKILL"), c.killTarget(victimTarget)]);
  const rest = [0, 1, 2].filter((i) => i !== first.index);
  const next = await p.agreed(rest, (a) => a.leader !== first.leader, 20_000);
  console.log(`  ${el()}: new leader s${next.index} in term ${next.term}`);
  const degraded = await waitOn(rest, "Degraded", (v) => v.state === "degraded" && v.legs.includes("dead"), 30_000);
  console.log(`  ${el()}: volume ${degraded.state}, legs ${degraded.legs.join(",")}`);
  await Bun.sleep(4000);

  await c.restartTarget(victimTarget);
  p.start(first.index);
  console.log(`  ${el()}: target t${victimTarget} and TOMA s${first.index} restarted`);
  const normal = await waitOn([0, 1, 2], "Normal again", (v) => v.state === "online" && v.legs.every((l) => l === "ok"), 90_000);
  console.log(`  ${el()}: volume ${normal.state}, legs ${normal.legs.join(",")}`);
  // The leg on the restarted server was copied by that server's own TOMA, on the leader's order.
  const copier = p.tomas[first.index]!.output;
  const leaderLog = p.tomas[next.index]!.output;
  console.log(`  rebuild: ${leaderLog.includes("rebuild handed to the TOMA serving the leg's drive") ? `handed to s${first.index}` : "not handed out"}; s${first.index} ${copier.includes("rebuild copy done for the leader") ? "copied it" : "did not copy it"}`);
  expect(leaderLog).toContain("rebuild handed to the TOMA serving the leg's drive");
  expect(leaderLog).toContain("rebuild copied by the TOMA serving the leg's drive");
  expect(copier).toContain("rebuild copy started for the leader");
  expect(copier).toContain("rebuild copy done for the leader");

  const r = await fio.result().catch((e: Error) => {
    throw new Error(`${e.message}\n--- client\n${c.client?.output.slice(-6000)}\n${p.logs(4000)}`);
  });
  const stall = fio.longestStall();
  console.log(`  fio wrote ${(r.write.io_bytes / MiB).toFixed(0)} MiB, verified ${(r.read.io_bytes / MiB).toFixed(0)} MiB; longest stall ${stall.gap_ms} ms at ${(stall.at_ms / 1000).toFixed(2)} s`);
  expect(r.error).toBe(0);
  expect(r.write.io_bytes).toBeGreaterThan(0);
  expect(r.read.io_bytes).toBeGreaterThanOrEqual(r.write.io_bytes - 256 * 64 * 1024);
  // The daemon's home moved from the killed leader to another TOMA...
  expect(c.client!.output).toContain("client daemon homed on another TOMA");
  // ...and back on its first TOMA once that one, restarted, served clients again.
  const back = `client daemon homed back on ${first.leader}`;
  for (const until = performance.now() + 30_000; !c.client!.output.includes(back) && performance.now() < until; ) await Bun.sleep(200);
  console.log(`  ${el()}: ${c.client!.output.includes(back) ? back : "the daemon did not home back"}`);
  expect(c.client!.output).toContain(back);
  expect(c.client!.output.split(back).length - 1).toBe(1);
  // ...and it kept its registration: the new leader restored it from the cluster state (one
  // registration, never again, the same client id all along).
  const registrations = c.client!.output.split("\n").filter((l) => l.includes("registered with the TOMA"));
  console.log(`  client registrations: ${registrations.length} (${registrations.map((l) => /client=(\d+)/.exec(l)?.[1]).join(", ")})`);
  expect(registrations.length).toBe(1);
  expect(c.client!.output).not.toContain("registering again");
  expect(p.logs(100_000)).toContain("client restored from the cluster state");
  const cmp = c.compareLegs(normal);
  console.log(`  legs compared on the drive files: ${cmp.bytes / MiB} MiB each, ${cmp.differences.length} differences`);
  expect(cmp.differences).toEqual([]);
  expect(cmp.bytes).toBe(normal.capacity_bytes);
}, 240_000);

test("SIGSTOP of the leader's TOMA for 35 s while fio verifies: a new leader, no I/O error, the client keeps its registration", async () => {
  expect(uri).not.toBe("");
  const t0 = performance.now();
  const el = () => `${((performance.now() - t0) / 1000).toFixed(2)} s`;
  const first = await p.agreed([0, 1, 2], () => true, 30_000);
  const before = c.client!.output.split("\n").filter((l) => l.includes("registered with the TOMA")).length;
  const fio = new FioVerify({ uri, dir: c.dir, name: "leader-stop", size: "48M", runtime_s: 50 });
  await Bun.sleep(3000);
  console.log(`  ${el()}: SIGSTOP TOMA s${first.index} (leader, term ${first.term}) for 35 s`);
  p.tomas[first.index]!.proc.kill("SIGSTOP");
  try {
    const rest = [0, 1, 2].filter((i) => i !== first.index);
    const next = await p.agreed(rest, (a) => a.leader !== first.leader, 20_000);
    console.log(`  ${el()}: new leader s${next.index} in term ${next.term}`);
    await Bun.sleep(35_000 - (performance.now() - t0 - 3000));
  } finally {
    p.tomas[first.index]!.proc.kill("SIGCONT");
  }
  console.log(`  ${el()}: SIGCONT TOMA s${first.index}`);
  const r = await fio.result().catch((e: Error) => {
    throw new Error(`${e.message}\n--- client\n${c.client?.output.slice(-6000)}\n${p.logs(4000)}`);
  });
  const stall = fio.longestStall();
  console.log(`  fio wrote ${(r.write.io_bytes / MiB).toFixed(0)} MiB, verified ${(r.read.io_bytes / MiB).toFixed(0)} MiB; longest stall ${stall.gap_ms} ms at ${(stall.at_ms / 1000).toFixed(2)} s`);
  expect(r.error).toBe(0);
  // No new registration: the new leader restored the client, the paused one was never needed again.
  expect(c.client!.output.split("\n").filter((l) => l.includes("registered with the TOMA")).length).toBe(before);
}, 180_000);
