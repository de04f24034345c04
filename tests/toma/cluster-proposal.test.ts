/**
 * The member's proposal path (src/toma/cluster/node.ts, `propose`) and the membership changes
 * built on it (membership-ops.ts), over the simulator's Env with real formatted drives, the real
 * envelope codec and the real peer senders (cluster-fixture.ts). Checked: a proposal on the leader
 * is answered once committed and applied on the leader, and every member applies the same state;
 * a follower refuses and names the leader; a leader cut off from its peers mid-proposal fails the
 * proposal as leadership lost, and the entry never takes effect once the new leader overwrites it;
 * a proposal that cannot commit times out; a fourth server joins as a learner, catches up by
 * snapshot and becomes a voter; removing a follower and then the leader itself leaves a cluster
 * that elects a new leader and goes on, and the removed TOMAs stop saying why; a server whose
 * drives were replaced joins as a new identity and takes the old one's place.
 */
import { expect, test } from "bun:test";
import { formatDrive } from "../../src/engine/drive/format.ts";
import { openDrive } from "../../src/engine/drive/formatted-drive.ts";
import { MemoryStore } from "../../src/engine/drive/memory-store.ts";
import { encodeProposal } from "../../src/toma/consensus/proposal.ts";
import { MembershipError, MembershipOps } from "../../src/toma/cluster/membership-ops.ts";
import { type Committed, ProposalError, type TomaNode } from "../../src/toma/cluster/node.ts";
import { parseIdentity } from "../../src/toma/cluster/identity.ts";
import { agreedLeader, type Cluster, cluster, running, type Server } from "./cluster-fixture.ts";

const DRIVE = (n: number) => `00000000-0000-4000-8000-${n.toString(16).padStart(12, "0")}`;

/** A real cluster-state command, computed from the leader's applied state. */
function addDrive(node: TomaNode, n: number): Uint8Array {
  const st = node.appliedState()!;
  return encodeProposal({ computed_at: st.generation, cmd: { kind: "add_drive", drive: { drive_uuid: DRIVE(n), extent_size_bytes: 1 << 20, extent_count: 8 } } });
}

async function settle<T>(c: Cluster, p: Promise<T>, ms: number): Promise<{ ok: true; value: T } | { ok: false; error: unknown }> {
  let out: { ok: true; value: T } | { ok: false; error: unknown } | null = null;
  p.then((value) => (out = { ok: true, value }), (error) => (out = { ok: false, error }));
  await c.world.run(() => out !== null, c.world.now + ms);
  if (out === null) throw new Error(`not settled within ${ms} virtual ms`);
  return out;
}

async function started(seed: number, n = 3) {
  const c = await cluster(seed, n, 3);
  for (const s of c.servers.slice(0, 3)) c.boot(s);
  expect(await c.world.run(() => running(c).length === 3 && agreedLeader(c) !== null, 30_000)).toBe("done");
  const leader = c.servers.find((s) => s.name === agreedLeader(c)!.toma)!;
  return { c, leader, followers: c.servers.slice(0, 3).filter((s) => s !== leader) };
}

test("a proposal on the leader is answered once committed and applied; every member applies it; a follower names the leader", async () => {
  for (let seed = 101; seed <= 105; seed++) {
    const { c, leader, followers } = await started(seed);
    const r = await settle(c, leader.toma!.propose({ kind: "normal", data: addDrive(leader.toma!, 1) }), 5000);
    if (!r.ok) throw r.error;
    const done = r.value as Committed;
    expect(done.applied?.kind).toBe("applied");
    // Applied on the leader before the answer.
    expect(leader.toma!.appliedState()!.drives.map((d) => d.drive_uuid)).toEqual([DRIVE(1)]);
    expect(leader.toma!.view().applied).toBeGreaterThanOrEqual(done.index);
    // The followers apply the same entry.
    expect(await c.world.run(() => followers.every((f) => f.toma!.appliedState()?.generation === done.index), c.world.now + 5000)).toBe("done");
    // A second command computed from the same (now old) view is committed but refused by the
    // state machine, the same way everywhere: the caller learns it.
    const stale = await settle(c, leader.toma!.propose({ kind: "normal", data: encodeProposal({ computed_at: done.index - 1, cmd: { kind: "add_drive", drive: { drive_uuid: DRIVE(2), extent_size_bytes: 1 << 20, extent_count: 8 } } }) }), 5000);
    if (!stale.ok) throw stale.error;
    expect((stale.value as Committed).applied?.kind).toBe("refused");
    // A follower refuses at once and names the leader.
    const f = await settle(c, followers[0]!.toma!.propose({ kind: "normal", data: addDrive(followers[0]!.toma!, 3) }), 1000);
    expect(f.ok).toBe(false);
    const e = (f as { error: ProposalError }).error;
    expect(e).toBeInstanceOf(ProposalError);
    expect(e.code).toBe("not_leader");
    expect(e.leader?.address).toBe(leader.address);
    expect(leader.toma!.view().proposals_waiting).toBe(0);
    expect(c.world.failure).toBeNull();
  }
});

test("leadership lost mid-proposal: the proposal fails saying so, and the new leader's log overwrites the entry", async () => {
  for (let seed = 111; seed <= 115; seed++) {
    const { c, leader, followers } = await started(seed);
    const gen = leader.toma!.appliedState()!.generation;
    // Cut the leader off both ways before it can replicate: its entry cannot commit.
    for (const f of followers) {
      c.cuts.add(`${leader.address}>${f.address}`);
      c.cuts.add(`${f.address}>${leader.address}`);
    }
    const p = settle(c, leader.toma!.propose({ kind: "normal", data: addDrive(leader.toma!, 7) }, 60_000), 20_000);
    const r = await p;
    expect(r.ok).toBe(false);
    const e = (r as { error: ProposalError }).error;
    expect(e).toBeInstanceOf(ProposalError);
    // CheckQuorum deposes it; the answer says the outcome is unknown.
    expect(e.code).toBe("leadership_lost");
    expect(e.message).toContain("outcome is unknown");
    // The others elected a leader meanwhile; after the heal, the old leader's entry is gone.
    c.cuts.clear();
    const caughtUp = () => {
      const l = agreedLeader(c);
      const commit = l ? c.servers.find((x) => x.name === l.toma)!.toma!.view().commit! : Infinity;
      return running(c).length === 3 && running(c).every((s) => (s.toma!.view().applied ?? 0) >= commit);
    };
    expect(await c.world.run(caughtUp, c.world.now + 20_000)).toBe("done");
    for (const s of running(c)) expect(s.toma!.appliedState()!.drives.map((d) => d.drive_uuid)).not.toContain(DRIVE(7));
    expect(leader.toma!.appliedState()!.generation).toBeGreaterThanOrEqual(gen);
    expect(c.world.failure).toBeNull();
  }
});

test("a proposal that cannot commit times out, saying its outcome is unknown; a bad configuration change is refused at once", async () => {
  const { c, leader, followers } = await started(121);
  // Both followers gone: the leader keeps leading until CheckQuorum, its entry cannot commit.
  for (const f of followers) f.machine.crash("process");
  const r = await settle(c, leader.toma!.propose({ kind: "normal", data: addDrive(leader.toma!, 9) }, 300), 5000);
  expect(r.ok).toBe(false);
  const e = (r as { error: ProposalError }).error;
  expect(["timeout", "leadership_lost"]).toContain(e.code);
  expect(e.message).toContain("outcome is unknown");

  const { c: c2, leader: l2 } = await started(122);
  const bad = await settle(c2, l2.toma!.propose({ kind: "conf", change: { op: "promote", node: "nobody#0000000000000000" } }), 1000);
  expect(bad.ok).toBe(false);
  expect((bad as { error: ProposalError }).error.code).toBe("refused");
  expect((bad as { error: ProposalError }).error.message).toContain("is not a member");
});

function ops(c: Cluster, s: Server): MembershipOps {
  const ask = (address: string) =>
    new Promise<ReturnType<typeof parseIdentity>>((resolve, reject) =>
      c.world.after(1, () => {
        const peer = c.servers.find((x) => x.address === address);
        if (!peer?.toma || !peer.machine.alive) return reject(new Error(`${address}: connection refused`));
        resolve(parseIdentity(JSON.parse(JSON.stringify(peer.toma.identity())), address));
      }),
    );
  return new MembershipOps(s.env!, s.toma!, ask);
}

test("membership: a fourth server joins, catches up and votes; removing a follower then the leader itself leaves a cluster that goes on", async () => {
  for (let seed = 131; seed <= 133; seed++) {
    const { c, leader } = await started(seed, 4);
    const s4 = c.servers[3]!;
    // Its --peers name the members: it finds the cluster and waits to be added, as a non-member.
    c.boot(s4);
    expect(await c.world.run(() => s4.toma!.phase === "running", c.world.now + 10_000)).toBe("done");
    expect(s4.toma!.view().membership).toBe("none");
    expect(s4.toma!.view().role).toBe("outside");
    // A follower refuses with the leader's address.
    const follower = c.servers.slice(0, 3).find((s) => s !== leader)!;
    const nf = await settle(c, ops(c, follower).add(s4.name, s4.address), 1000);
    expect((nf as { error: MembershipError }).error.status).toBe(421);
    expect((nf as { error: MembershipError }).error.leader).toBe(leader.address);
    // Some state first, so the snapshot it catches up with is not empty.
    await settle(c, leader.toma!.propose({ kind: "normal", data: addDrive(leader.toma!, 1) }), 5000);
    const added = await settle(c, ops(c, leader).add(s4.name, s4.address), 40_000);
    if (!added.ok) throw added.error;
    const res = added.value as Awaited<ReturnType<MembershipOps["add"]>>;
    expect(res.changes.map((x) => x.split(" ")[0])).toEqual(["add_learner", "promote"]);
    expect(res.warnings).toEqual(["4 voters survive as many server losses as 3; an odd number is enough"]);
    expect(await c.world.run(() => s4.toma!.view().membership === "voter" && s4.toma!.appliedState()?.drives.length === 1, c.world.now + 5000)).toBe("done");
    expect(s4.toma!.view().leader?.address).toBe(leader.address);
    // Adding it again changes nothing.
    const again = await settle(c, ops(c, leader).add(s4.name, s4.address), 5000);
    expect(again.ok && (again.value as { changes: string[] }).changes).toEqual([]);

    // Remove a follower: it learns it from the leader's answers and stops, saying why.
    const gone = await settle(c, ops(c, leader).remove(follower.name), 10_000);
    if (!gone.ok) throw gone.error;
    expect(await c.world.run(() => follower.toma!.phase === "outside", c.world.now + 5000)).toBe("done");
    expect(follower.toma!.reason).toContain("removed from the TOMA cluster");
    // Remove the leader itself: it commits its removal, stops; the others elect a new leader.
    const term = agreedLeader(c)!.term;
    const self = await settle(c, ops(c, leader).remove(leader.name), 10_000);
    if (!self.ok) throw self.error;
    expect((self.value as { leader_removed: boolean }).leader_removed).toBe(true);
    expect(leader.toma!.phase).toBe("outside");
    expect(await c.world.run(() => agreedLeader(c) !== null && agreedLeader(c)!.term > term && running(c).length === 2, c.world.now + 10_000)).toBe("done");
    const now = c.servers.find((s) => s.name === agreedLeader(c)!.toma)!;
    expect(now.toma!.config().members.filter((m) => m.voter).length).toBe(2);
    // Two voters: the warning says what it cannot survive; the last voter cannot be removed.
    expect(now.toma!.view().warnings[0]).toContain("with 2, both must be up");
    // And it goes on: a proposal commits with the two voters left.
    const p = await settle(c, now.toma!.propose({ kind: "normal", data: addDrive(now.toma!, 2) }), 5000);
    if (!p.ok) throw p.error;
    expect(c.world.failure).toBeNull();
  }
});

test("removing the last voter is refused and changes nothing", async () => {
  const { c, leader, followers } = await started(141);
  for (const f of followers) {
    const r = await settle(c, ops(c, leader).remove(f.name), 10_000);
    if (!r.ok) throw r.error;
  }
  const before = leader.toma!.config();
  expect(before.members.length).toBe(1);
  expect(leader.toma!.view().warnings[0]).toContain("single point of failure");
  const r = await settle(c, ops(c, leader).remove(leader.name), 1000);
  expect(r.ok).toBe(false);
  expect((r as { error: MembershipError }).error.status).toBe(409);
  expect((r as { error: MembershipError }).error.message).toContain("last voter");
  expect(leader.toma!.config()).toEqual(before);
  const none = await settle(c, ops(c, leader).remove("nosuch"), 1000);
  expect((none as { error: MembershipError }).error.status).toBe(404);
});

test("a server whose drives were replaced (blank, a new incarnation) joins and takes its old identity's place", async () => {
  const { c, leader, followers } = await started(151);
  const f = followers[0]!;
  const old = f.toma!.view().node_id!;
  f.machine.crash("process");
  // New blank drives: the TOMA cannot be its old node id any more.
  f.drives = [];
  for (let k = 0; k < 2; k++) {
    const store = new MemoryStore(8 * 1024 * 1024);
    await formatDrive(store, { drive_uuid: `0000000e-0000-4000-8000-00000000000${k}`, extent_size_bytes: 1024 * 1024 });
    f.drives.push(await openDrive(store, `new${k}`));
  }
  c.boot(f);
  expect(await c.world.run(() => f.toma!.phase === "running", c.world.now + 10_000)).toBe("done");
  const fresh = f.toma!.view().node_id!;
  expect(fresh).not.toBe(old);
  expect(f.toma!.view().membership).toBe("none");
  const r = await settle(c, ops(c, leader).add(f.name, f.address), 40_000);
  if (!r.ok) throw r.error;
  // The old identity leaves before the new one votes: never 4 voters for 3 servers.
  expect((r.value as { changes: string[] }).changes).toEqual([`add_learner ${fresh}`, `remove ${old}`, `promote ${fresh}`]);
  expect(leader.toma!.config().members.map((m) => m.id).sort()).toEqual([leader.toma!.view().node_id!, followers[1]!.toma!.view().node_id!, fresh].sort());
  expect(await c.world.run(() => f.toma!.view().membership === "voter" && f.toma!.view().leader?.address === leader.address, c.world.now + 5000)).toBe("done");
  expect(c.world.failure).toBeNull();
});
