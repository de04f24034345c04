/**
 * The pool and volumes in a TOMA cluster, with real processes: three servers on 127.0.0.1, each a
 * target with two file drives and a `toma run --peers` TOMA. Checked: every TOMA claims its own
 * drives and the leader adds them (drive show through any TOMA lists all six, each with its
 * server); a RAID1 volume created through a follower (the CLI follows the 421 to the leader) has
 * its legs on two different servers, and `volume show` through every TOMA agrees on it; bad input
 * is refused with the reason and changes nothing; attach information comes from the leader; kill
 * -9 of the leader: the new leader lists the volume, and deleting it through a follower of the new
 * leader works; its extents are zeroed and released by the new leader.
 */
import { expect, test } from "bun:test";
import type { DriveJson, VolumeJson } from "../../src/toma/api-types.ts";
import { tomaClusterFixture } from "../support/toma-cluster-fixture.ts";
import { NVMESH, run } from "../support/proc.ts";
import { runsLength } from "../../src/engine/layout/extent-runs.ts";

const f = tomaClusterFixture({ drive_size: "64M" });
const { json, volumes, until } = f;
const drives = (i: number) => json<DriveJson[]>(["drive", "show", "-m", f.p.addrs[i]!]);

/** The TOMA every given TOMA names leader, once they agree and it is ready. */
const leaderOf = async (which: number[], pred: (leader: string) => boolean, timeout_ms: number) => (await f.p.agreed(which, (a) => pred(a.leader), timeout_ms)).index;

test("drives join the pool; a RAID1 volume created through a follower has legs on two servers, every TOMA shows it; after kill -9 of the leader it is still there and deleted", async () => {
  const { c, p } = f;
  const li = await leaderOf([0, 1, 2], () => true, 30_000);

  // Every TOMA lists the six drives as members of the pool, each with the server that serves it.
  const pools = await until(
    "six member drives on every TOMA",
    async () => {
      const all = await Promise.all([0, 1, 2].map(drives));
      return all.every((d) => d !== null && d.length === 6 && d.every((x) => x.member && x.state === "ok" && x.server)) ? (all as DriveJson[][]) : null;
    },
    30_000,
  );
  const server = new Map(pools[0]!.map((d) => [d.uuid, d.server!]));
  expect([...server.values()].sort()).toEqual(["s0", "s0", "s1", "s1", "s2", "s2"]);
  for (const p of pools) expect(p.map((d) => [d.uuid, d.server])).toEqual(pools[0]!.map((d) => [d.uuid, d.server]));
  const st = await p.status(li);
  expect(st!.drives.ok).toBe(6);
  expect(st!.capacity.total_bytes).toBeGreaterThan(0);

  // Created through a follower: the CLI is sent to the leader.
  const fi = [0, 1, 2].find((i) => i !== li)!;
  const made = await run([NVMESH, "volume", "create", "--name", "m1", "--capacity", "16M", "--raid-level", "1", "-m", p.addrs[fi]!], { env: c.keyEnv });
  expect(made.stderr + made.stdout).toContain("is not the leader; asking the leader");
  expect(made.code).toBe(0);
  const seen = await until(
    "m1 on every TOMA",
    async () => {
      const all = await Promise.all([0, 1, 2].map(volumes));
      return all.every((v) => v?.length === 1) ? (all as VolumeJson[][]) : null;
    },
    10_000,
  );
  const m1 = seen[0]![0]!;
  for (const v of seen) expect(v[0]!.columns).toEqual(m1.columns);
  for (const v of seen) expect([v[0]!.uuid, v[0]!.created_seq, v[0]!.legs]).toEqual([m1.uuid, m1.created_seq, m1.legs]);
  expect(m1.name).toBe("m1");
  expect(m1.raid_level).toBe("1");
  expect(m1.columns.length).toBe(2);
  const legServers = m1.columns.map((col) => server.get(col.drive_uuid));
  expect(new Set(legServers).size).toBe(2);
  expect(m1.state).toBe("online");
  console.log(`m1 legs on ${legServers.join(" and ")}`);

  // Bad input: the reason, and nothing changes.
  const taken = await run([NVMESH, "volume", "create", "--name", "m1", "--capacity", "16M", "-m", p.addrs[fi]!], { env: c.keyEnv });
  expect(taken.code).not.toBe(0);
  expect(taken.stderr + taken.stdout).toContain("already exists");
  const big = await run([NVMESH, "volume", "create", "--name", "big", "--capacity", "1G", "--raid-level", "1", "-m", p.addrs[li]!], { env: c.keyEnv });
  expect(big.code).not.toBe(0);
  expect(big.stderr + big.stdout).toMatch(/space|fit|free/i);
  const three = await run([NVMESH, "volume", "create", "--name", "m3", "--capacity", "8M", "--raid-level", "1", "--number-of-mirrors", "3", "-m", p.addrs[li]!], { env: c.keyEnv });
  expect(three.code).toBe(0);
  const m3 = (await volumes(li))!.find((v) => v.name === "m3")!;
  expect(new Set(m3.columns.map((col) => server.get(col.drive_uuid))).size).toBe(3);
  const gone = await run([NVMESH, "volume", "delete", "nope", "-y", "-m", p.addrs[fi]!], { env: c.keyEnv });
  expect(gone.code).not.toBe(0);
  expect(gone.stderr + gone.stdout).toContain("no volume named 'nope'");
  const { tomaClient } = await import("../../src/toma/api-client.ts");
  const admin = tomaClient(p.addrs[fi]!, { key: c.key });
  // Attach information comes from the leader (a follower names it); it locates every leg.
  const attach = await admin.call("GET", "/v1/volumes/m1/attach").catch((x: unknown) => x as { status: number; message: string; leader?: string });
  expect([(attach as { status: number }).status, (attach as { leader?: string }).leader]).toEqual([421, p.addrs[li]]);
  const info = (await tomaClient(p.addrs[li]!, { key: c.key }).attach("m1")) as { drives: { drive_uuid: string; target: string | null }[] };
  expect(info.drives.map((d) => d.drive_uuid)).toEqual(m1.columns.map((col) => col.drive_uuid));
  for (const d of info.drives) expect(c.target_addrs).toContain(d.target!);
  const bad = await admin.call("POST", "/v1/cluster/drives", { server: "s9", drives: [{ drive_uuid: "nope" }] }).catch((x: unknown) => x as { status: number; message: string });
  expect([400, 421]).toContain((bad as { status: number }).status);
  expect((await volumes(li))!.map((v) => v.name).sort()).toEqual(["m1", "m3"]);

  // The leader's whole TOMA dies: the new leader lists the volume, and a delete through the
  // remaining follower goes to it.
  const old = p.addrs[li]!;
  await p.tomas[li]!.stop("SIGKILL");
  const rest = [0, 1, 2].filter((i) => i !== li);
  const ni = await leaderOf(rest, (l) => l !== old, 15_000);
  const after = await volumes(ni);
  // The record as applied (its state and legs' reachability follow the killed server's reports).
  const record = ({ state: _s, leg_views: _l, ...rest }: VolumeJson) => rest;
  expect(record(after!.find((v) => v.name === "m1")!)).toEqual(record(m1));
  const other = rest.find((i) => i !== ni)!;
  const del = await run([NVMESH, "volume", "delete", "m1", "-y", "-m", p.addrs[other]!], { env: c.keyEnv });
  expect(del.stderr + del.stdout).toContain("volume m1 deleted");
  expect(del.code).toBe(0);
  // Applied on the leader before it answered; the follower applies it soon after.
  expect((await volumes(ni))!.map((v) => v.name)).toEqual(["m3"]);
  await until("m1 gone on the follower", async () => ((await volumes(other)) ?? []).every((v) => v.name !== "m1") && ((await volumes(other)) ?? []).length === 1, 5000);
  // The deleted volume's extents: retired, then zeroed and released by the leader's mirror
  // control once each drive confirmed a fence table without it (the killed server's target still
  // runs: the new leader reaches it too, so every drive is released).
  const released = await until(
    "m1's extents released on every drive",
    async () => {
      const p = await drives(ni);
      return p !== null && p.every((d) => d.extents_retired === 0) ? p : null;
    },
    15_000,
  );
  const m3now = (await volumes(ni))!.find((v) => v.name === "m3")!;
  for (const d of released) expect(d.extents_used).toBe(runsLength(m3now.columns.find((col) => col.drive_uuid === d.uuid)?.runs ?? []));
  const log = p.tomas.map((t) => t?.output ?? "").join("\n");
  expect(log).toContain("volume deleted");
}, 120_000);
