/**
 * Membership of the TOMA cluster with real processes on 127.0.0.1: three TOMAs found a cluster
 * (each with its own target and file drive); a fourth, started with --peers naming them and
 * itself, finds the cluster and waits; `cluster server add` sent to a follower goes to the leader,
 * which adds it as a learner, lets it catch up and promotes it, and every TOMA's `cluster status`
 * shows it as a voter following the leader. Removing the current leader: it commits its removal,
 * stops saying why, and the three left elect a new leader. kill -9 of that leader: the two left
 * (a majority of the new configuration) elect another, and the configuration is still the new
 * one; the killed TOMA comes back from its drive with it. Removing down to two voters warns what
 * the cluster cannot survive; bad input is refused with a clear error.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { Cluster, freePort } from "../support/cluster.ts";
import { TomaPeers } from "../support/toma-peers.ts";
import { NVMESH, run } from "../support/proc.ts";

let c: Cluster;
let p: TomaPeers;
const name = (i: number) => `toma${i}`;
const status = (i: number) => p.consensus(i);

const cli = (args: string[], timeout_ms = 60_000) => run([NVMESH, "cluster", "server", ...args], { env: c.keyEnv, timeout_ms });
const voters = (v: { peers: { voter: boolean; node_id: string }[]; membership: string | null; node_id: string | null }) =>
  [...v.peers.filter((p) => p.voter).map((p) => p.node_id), ...(v.membership === "voter" ? [v.node_id!] : [])].sort();

beforeAll(async () => {
  c = new Cluster({ targets: 4, drive_size: "64M" });
  await c.formatDrives();
  for (let t = 0; t < 4; t++) await c.startTarget(t);
  // The founders name each other; the fourth names them and itself (it joins, it does not found).
  p = await TomaPeers.start(c, { count: 4, started: 3, name, peers: (i, addrs) => (i < 3 ? addrs.slice(0, 3) : [...addrs.slice(0, 3), addrs[i]!]) });
}, 60_000);

afterAll(async () => {
  await p?.stopAll();
  await c.destroy();
});

test("bad input is refused with a clear error and changes nothing", async () => {
  await p.agreed([0, 1, 2], () => true, 30_000);
  const noPort = await cli(["add", "somehost", "--name", "x", "-m", p.addrs[0]!]);
  expect(noPort.code).toBe(2);
  expect(noPort.stderr).toContain("expected HOST:PORT");
  const badName = await cli(["remove", "bad/name", "-m", p.addrs[0]!]);
  expect(badName.code).toBe(2);
  expect(badName.stderr).toContain("invalid server name");
  const unknown = await cli(["remove", "nosuch", "-m", p.addrs[0]!]);
  expect(unknown.code).not.toBe(0);
  expect(unknown.stderr).toContain("no member of the TOMA cluster is named 'nosuch'");
  // Nothing listens there: the leader says it cannot ask it.
  const nobody = await cli(["add", `127.0.0.1:${await freePort()}`, "--name", "ghost", "-m", p.addrs[0]!]);
  expect(nobody.code).not.toBe(0);
  expect(nobody.stderr).toContain("cannot ask the TOMA at");
  // The routes themselves: validated bodies, the server key only.
  const { tomaClient } = await import("../../src/toma/api-client.ts");
  const asServer = tomaClient(p.addrs[0]!, { key: c.key });
  const bad = await asServer.call("POST", "/v1/cluster/servers", { name: "a b", address: "h:1", extra: 1 }).catch((x: unknown) => x as { status: number; message: string });
  expect((bad as { status: number }).status).toBe(400);
  expect((bad as Error).message).toContain("invalid body");
  const asClient = tomaClient(p.addrs[0]!, { key: c.clientKey });
  const denied = await asClient.removeServer(name(1)).catch((x: unknown) => x as { status: number; message: string });
  expect((denied as { status: number }).status).toBe(403);
  const after = await p.agreed([0, 1, 2], () => true, 10_000);
  for (const v of after.views) expect(voters(v).length).toBe(3);
}, 60_000);

test("a fourth TOMA joins and votes; the leader removed, the rest elect another; kill -9 of it keeps the new configuration", async () => {
  const first = await p.agreed([0, 1, 2], () => true, 30_000);
  // The fourth finds the cluster and waits to be added.
  p.start(3);
  await p.tomas[3]!.waitFor(/waiting to be added/, 20_000);
  // The line is logged before the TOMA's start record is on its drive: status may still say
  // "bootstrap" for a moment on a loaded machine.
  let waiting = await run([NVMESH, "cluster", "status", "-m", p.addrs[3]!], { env: c.keyEnv });
  for (let i = 0; i < 25 && waiting.stdout.includes("bootstrap: reading own drives"); i++) {
    await Bun.sleep(200);
    waiting = await run([NVMESH, "cluster", "status", "-m", p.addrs[3]!], { env: c.keyEnv });
  }
  expect(waiting.stdout).toContain(`waiting to be added to the cluster: 'nvmesh cluster server add ${p.addrs[3]} --name ${name(3)}'`);
  expect(waiting.stdout).toMatch(/membership +none/);

  // Sent to a follower: it names the leader and the CLI asks there.
  const follower = [0, 1, 2].find((i) => p.addrs[i] !== first.leader)!;
  const add = await cli(["add", p.addrs[3]!, "--name", name(3), "-m", p.addrs[follower]!]);
  expect(add.stderr + add.stdout).toContain("is not the leader");
  expect(add.code).toBe(0);
  expect(add.stdout + add.stderr).toContain(`add_learner ${name(3)}#`);
  expect(add.stdout + add.stderr).toContain(`promote ${name(3)}#`);
  // Four voters: told that an odd number is enough.
  expect(add.stdout + add.stderr).toContain("4 voters survive as many server losses as 3");
  // Caught up: it applied what the others applied (the snapshot, then the log).
  const four = await p.agreed([0, 1, 2, 3], ({ views: vs }) => vs.every((v) => voters(v).length === 4 && v.applied === vs[0]!.applied && v.applied! > 1), 30_000);
  expect(four.views[3]!.membership).toBe("voter");
  expect(four.views[3]!.role).toBe("follower");
  expect(four.views[3]!.leader?.address).toBe(four.leader);

  // Remove the current leader (through any TOMA): it stops, the three others elect a new one.
  const li = p.addrs.indexOf(four.leader);
  const rm = await cli(["remove", name(li), "-m", p.addrs[(li + 1) % 4]!]);
  expect(rm.code).toBe(0);
  expect(rm.stdout + rm.stderr).toContain("the leader removed itself");
  const rest = [0, 1, 2, 3].filter((i) => i !== li);
  const three = await p.agreed(rest, ({ views: vs }) => vs.every((v) => voters(v).length === 3 && !voters(v).some((x) => x.startsWith(`${name(li)}#`))), 30_000);
  expect(three.term).toBeGreaterThan(four.term);
  const removed = await status(li);
  expect(removed?.phase).toBe("outside");
  expect(removed?.reason).toContain("removed from the TOMA cluster");

  // kill -9 the new leader: the two left are a majority of the new configuration.
  const ni = p.addrs.indexOf(three.leader);
  await p.tomas[ni]!.stop("SIGKILL");
  const two = rest.filter((i) => i !== ni);
  const after = await p.agreed(two, ({ views: vs }) => vs.every((v) => voters(v).length === 3), 30_000);
  expect(after.term).toBeGreaterThan(three.term);
  // Restarted, it comes back from its drive with the same configuration and follows.
  p.start(ni);
  const back = await p.agreed(rest, ({ views: vs }) => vs.every((v) => voters(v).length === 3), 30_000);
  expect(back.views.map((v) => voters(v).join(","))).toEqual(rest.map(() => voters(back.views[0]!).join(",")));
  expect(p.tomas[ni]!.output).toContain("hard state trusted");

  // Down to two voters: the CLI says what that cannot survive; the last voter is never removed.
  const drop = rest.find((i) => p.addrs[i] !== back.leader)!;
  const two_left = await cli(["remove", name(drop), "-m", back.leader]);
  expect(two_left.code).toBe(0);
  expect(two_left.stdout + two_left.stderr).toContain("with 2, both must be up");
  const st = await run([NVMESH, "cluster", "status", "-m", back.leader], { env: c.keyEnv });
  expect(st.stdout + st.stderr).toContain("with 2, both must be up");
}, 180_000);
