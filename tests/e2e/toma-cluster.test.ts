/**
 * Three TOMAs as real processes (`toma run --peers`), each with its own target and file drive on
 * 127.0.0.1: they found a cluster and elect a leader that `cluster status -o json` names the same
 * from every TOMA; kill -9 of the leader gives a new leader in a higher term within seconds; the
 * killed TOMA, restarted, takes its hard state back from its drive (same node id) and follows;
 * all three killed at once come back from their drives alone; a follower relays a client daemon's
 * calls to the leader, and both check the secret the follower sealed for it.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { Cluster } from "../support/cluster.ts";
import { TomaPeers } from "../support/toma-peers.ts";
import { NVMESH, run } from "../support/proc.ts";

let c: Cluster;
let p: TomaPeers;

beforeAll(async () => {
  c = new Cluster({ targets: 3, drive_size: "64M" });
  await c.formatDrives();
  for (let t = 0; t < 3; t++) await c.startTarget(t);
  p = await TomaPeers.start(c, { count: 3 });
}, 60_000);

afterAll(async () => {
  await p?.stopAll();
  await c.destroy();
});

test("three TOMAs elect one leader; kill -9 of it elects another in a higher term; restarted, it follows with its hard state", async () => {
  const first = await p.agreed([0, 1, 2], () => true, 30_000);
  // Every TOMA shows the same cluster, and sees the two others as reachable members.
  expect(new Set(first.views.map((v) => v.cluster_uuid)).size).toBe(1);
  for (const v of first.views) {
    expect(v.peers.map((p) => p.address).sort()).toEqual(p.addrs.filter((a) => a !== v.address).sort());
    expect(v.peers.every((p) => p.voter)).toBe(true);
    expect(v.hard_state?.drives.length).toBe(1);
  }
  // Each TOMA's view of the others: every peer, asked by every TOMA, names the same leader and term.
  const settle_by = performance.now() + 10_000;
  let seen = first;
  while (!seen.views.every((v) => v.peers.every((p) => p.says !== null && p.says.term === seen.term && p.answered_ms_ago !== null))) {
    if (performance.now() > settle_by) throw new Error(`peers' answers never settled: ${JSON.stringify(seen.views.map((v) => v.peers))}`);
    await Bun.sleep(300);
    seen = await p.agreed([0, 1, 2], () => true, 10_000);
  }
  expect(seen.leader).toBe(first.leader);
  const leaderNode = seen.views.find((v) => v.address === seen.leader)!.node_id;
  for (const v of seen.views) for (const p of v.peers) expect(p.says!.leader).toBe(leaderNode);
  const li = p.addrs.indexOf(first.leader);
  expect(li).toBeGreaterThanOrEqual(0);
  const node_id = first.views[li]!.node_id;

  // The leader's whole process dies.
  const killed_at = performance.now();
  await p.tomas[li]!.stop("SIGKILL");
  const rest = [0, 1, 2].filter((i) => i !== li);
  const second = await p.agreed(rest, (a) => a.leader !== first.leader && a.term > first.term, 15_000);
  const took = performance.now() - killed_at;
  console.log(`leader ${first.leader} (term ${first.term}) killed; ${second.leader} leads in term ${second.term} after ${Math.round(took)} ms`);
  expect(took).toBeLessThan(10_000);

  // Back from its drive: the same node id, a follower of the new leader.
  p.start(li);
  const third = await p.agreed([0, 1, 2], (a) => a.term >= second.term, 30_000);
  const back = third.views[li]!;
  expect(back.node_id).toBe(node_id);
  expect(back.role).toBe("follower");
  expect(back.term).toBeGreaterThanOrEqual(second.term);
  expect(p.tomas[li]!.output).toContain("hard state trusted");
}, 120_000);

test("a follower relays a client daemon's calls to the leader, signed with the secret it sealed for it; raft messages need the server key", async () => {
  const a = await p.agreed([0, 1, 2], () => true, 30_000);
  const fi = [0, 1, 2].find((i) => i !== a.index)!;
  const { tomaClient: admin } = await import("../../src/toma/api-client.ts");
  const { ManagementSigner } = await import("../../src/toma/api-auth.ts");
  // One daemon's signer, as homing.ts shares it between the TOMAs it calls.
  const signer = new ManagementSigner(c.clientKey);
  const viaFollower = admin(p.addrs[fi]!, { signer });
  const viaLeader = admin(a.leader, { signer });
  // Registered through a follower (which relays it to the leader and seals the secret for us)...
  const reg = (await viaFollower.call("POST", "/v1/clients", { name: "c1" })) as { client_id: number };
  expect(reg.client_id).toBeGreaterThan(0);
  // ...known by the leader, which checks the same secret (derived from the server key and the id)...
  const acked = (await viaLeader.call("POST", `/v1/clients/${reg.client_id}/ack`, { generation: 0 })) as { acked: number };
  expect(acked.acked).toBeGreaterThanOrEqual(0);
  // ...and its own calls through the follower are relayed: it leaves, and is gone for both.
  expect(((await viaFollower.call("DELETE", `/v1/clients/${reg.client_id}`)) as { left: number }).left).toBe(reg.client_id);
  const gone = await viaLeader.call("POST", `/v1/clients/${reg.client_id}/ack`, { generation: 0 }).catch((x: unknown) => x as { status: number });
  expect((gone as { status: number }).status).toBe(410);
  // The client key alone cannot act for that client, on any TOMA.
  const other = await admin(p.addrs[fi]!, { key: c.clientKey }).call("POST", `/v1/clients/${reg.client_id}/ack`, { generation: 0 }).catch((x: unknown) => x as { status: number });
  expect((other as { status: number }).status).toBe(403);
  // A client key's signature cannot post Raft messages.
  const client = await run([NVMESH, "cluster", "status", "-m", p.addrs[0]!, "-o", "json"], { env: c.clientKeyEnv });
  expect(client.code).toBe(0);
  const { tomaClient } = await import("../../src/toma/api-client.ts");
  const asClient = tomaClient(p.addrs[0]!, { key: c.clientKey });
  const e = await asClient.call("POST", "/v1/raft", { envelope: "" }).catch((x: unknown) => x as { status: number; message: string });
  expect((e as { status: number }).status).toBe(403);
  expect((e as Error).message).toContain("server key");
}, 30_000);

test("every TOMA killed at once: restarted, they come back from their drives alone, same node ids", async () => {
  const before = await p.agreed([0, 1, 2], () => true, 30_000);
  await p.stopAll();
  for (let i = 0; i < 3; i++) p.start(i);
  const after = await p.agreed([0, 1, 2], (a) => a.term > before.term, 30_000);
  expect(after.views.map((v) => v.node_id)).toEqual(before.views.map((v) => v.node_id));
  expect(new Set(after.views.map((v) => v.cluster_uuid))).toEqual(new Set([before.views[0]!.cluster_uuid]));
}, 90_000);
