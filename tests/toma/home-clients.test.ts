/**
 * A home TOMA's clients (src/toma/cluster/home-clients.ts) and the leader's side of the switched
 * report (switched.ts), over the simulator's Env with the real consensus members
 * (cluster-fixture.ts), the leader's real control for one term (leader-control.ts ControlTerm:
 * its client registry restored from the replicated state), and the reports through JSON and the
 * route's schema, as over HTTP. No target runs here: the volume is a concatenated one, whose
 * clients still hold the switch rounds back.
 *
 * Checked: a follower answers its client's watch from its applied state and holds it while
 * nothing is new; an acknowledgement made there is answered once the leader took it, and the
 * leader's stable generation reaches the home's next watch; a report of an older term, or about an
 * older generation, changes nothing; the same acknowledgement reported by two TOMAs (the client
 * re-homed) counts once; a home cut off from the leader answers an acknowledgement 503 and hands
 * the client's watches on (null: relayed), and its periodic report delivers the acknowledgement
 * once the leader is back; a home behind what the client holds never answers from its state.
 */
import { expect, test } from "bun:test";
import * as v from "valibot";
import type { ApiResponse } from "../../src/toma/api-auth.ts";
import type { WatchJson } from "../../src/toma/api-types.ts";
import type { Relay } from "../../src/toma/cluster/client-relay.ts";
import { DrivePool } from "../../src/toma/cluster/drive-pool.ts";
import { HomeClients } from "../../src/toma/cluster/home-clients.ts";
import { ControlTerm } from "../../src/toma/cluster/leader-control.ts";
import { receiveSwitched, SWITCHED_PATH, SwitchedReportSchema } from "../../src/toma/cluster/switched.ts";
import { VolumeOps } from "../../src/toma/cluster/volume-ops.ts";
import { steadyClock } from "../../src/engine/steady-clock.ts";
import { agreedLeader, type Cluster, cluster, driveReport, running, type Server, settle } from "./cluster-fixture.ts";

const MiB = 1 << 20;
const ID = 77;
const INSECURE = { kind: "insecure" } as const;

async function ok<T>(c: Cluster, p: Promise<T>, ms = 15_000): Promise<T> {
  const r = await settle(c, p, ms);
  if (!r.ok) throw r.error;
  return r.value;
}

/** A cluster of three, a concatenated volume, client ID registered and attached, the leader's control for the term. */
async function setup(seed: number) {
  const c = await cluster(seed, 3, 3);
  for (const s of c.servers) c.boot(s);
  expect(await c.world.run(() => running(c).length === 3 && agreedLeader(c) !== null, 30_000)).toBe("done");
  const leader = c.servers.find((s) => s.name === agreedLeader(c)!.toma)!;
  const followers = c.servers.filter((s) => s !== leader);
  const clock = steadyClock(leader.env!.clock);
  const pool = new DrivePool(() => clock.now_ms());
  const ops = new VolumeOps(leader.env!, leader.toma!, pool);
  const cluster_uuid = leader.toma!.view().cluster_uuid!;
  for (const s of c.servers) pool.report(driveReport(s, cluster_uuid));
  ops.addReported();
  expect(await c.world.run(() => (leader.toma!.appliedState()?.drives.length ?? 0) === 6, c.world.now + 20_000)).toBe("done");
  const vol = await ok(c, ops.create({ name: "v", capacity_bytes: MiB, raid_level: "concatenated" }));
  await ok(c, ops.command("register", () => ({ kind: "register_client", id: ID, name: "c1" })));
  await ok(c, ops.command("attach", () => ({ kind: "attach_client", id: ID, volume_uuid: vol.uuid })));
  const term = agreedLeader(c)!.term;
  const ctl = new ControlTerm(leader.env!, leader.toma!, pool, ops, term, { connect: () => Promise.reject(new Error("no target runs in this test")), server_key: null, name: leader.name });
  ctl.start();
  const gen = leader.toma!.appliedState()!.generation;
  expect(await c.world.run(() => followers.every((f) => f.toma!.appliedState()?.generation === gen), c.world.now + 5000)).toBe("done");
  /** Requests from a home to the leader are refused while set. */
  const cut = { on: false };
  /** The leader's control by its address (a new leader's is added by the test); silent: never answers. */
  const ctls = new Map<string, ControlTerm>([[leader.address, ctl]]);
  const silent = new Set<string>();
  /** Every report the leader answered. */
  const answered: ApiResponse[] = [];
  const relay: Relay = async (address, method, path, body) => {
    await new Promise<void>((r) => c.world.after(1, r));
    if (silent.has(address)) return await new Promise<never>(() => {});
    const to = ctls.get(address);
    if (cut.on || !to) throw Object.assign(new Error(`${address}: connection refused`), { status: 0 });
    expect(method).toBe("POST");
    expect(path).toBe(SWITCHED_PATH);
    const r = v.safeParse(SwitchedReportSchema, JSON.parse(JSON.stringify(body)));
    if (!r.success) throw Object.assign(new Error(r.issues[0]!.message), { status: 400 });
    const ans = await receiveSwitched(to, r.output, () => clock.now_ms());
    answered.push(ans);
    await new Promise<void>((res) => c.world.after(1, res));
    if (ans.status !== 200) throw Object.assign(new Error(String((ans.body as { error: string }).error)), { status: ans.status });
    return JSON.parse(JSON.stringify(ans.body));
  };
  const homeOn = (s: Server) => {
    const sclock = steadyClock(s.env!.clock);
    const h = new HomeClients(s.env!, s.toma!, new DrivePool(() => sclock.now_ms()), { name: s.name, relay });
    h.start();
    return h;
  };
  return { c, leader, followers, ctl, vol, cut, answered, homeOn, clock, ctls, silent };
}

const watch = (h: HomeClients, known: number, stable: number) => h.serve("GET", `/v1/clients/${ID}/watch?known=${known}&stable=${stable}`, [String(ID), "watch"], undefined, INSECURE);
const ack = (h: HomeClients, generation: number) => h.serve("POST", `/v1/clients/${ID}/ack`, [String(ID), "ack"], { generation }, INSECURE);

test("a home TOMA answers its client's watch, takes its acknowledgement to the leader, and brings back the stable generation", async () => {
  const { c, followers, ctl, vol, homeOn } = await setup(401);
  const f = followers[0]!;
  const home = homeOn(f);
  // In touch with the leader once its first report was answered.
  expect(await c.world.run(() => home.serving(), c.world.now + 5000)).toBe("done");
  const gen = f.toma!.appliedState()!.generation;
  const rec = () => ctl.mirror.clients.get(ID)!;
  expect(rec().acked).toBeLessThan(gen);
  expect(ctl.mirror.stable()).toBeLessThan(gen);

  // The first watch is answered at once: the acknowledgement held here is below the generation.
  const w1 = (await ok(c, watch(home, -1, -1)))!;
  expect(w1.status).toBe(200);
  const b1 = w1.body as WatchJson;
  expect(b1.generation).toBe(gen);
  expect(b1.acked).toBeLessThan(gen);
  expect(b1.stable_generation).toBeLessThanOrEqual(b1.generation);
  expect(b1.volumes.map((x) => x.layout.volume_uuid)).toEqual([vol.uuid]);
  expect(b1.volumes[0]!.generation).toBe(gen);

  // The acknowledgement is answered once the leader took it; the leader's registry has it, and
  // (the only client) the stable generation is the current one.
  const heard = rec().heard_ms;
  const a = (await ok(c, ack(home, gen)))!;
  expect(a.status).toBe(200);
  expect(rec().acked).toBe(gen);
  expect(ctl.mirror.stable()).toBe(gen);
  // A report never counts as hearing the client (it repeats acknowledgements made long ago):
  // only the drive reports' ages do.
  expect(rec().heard_ms).toBe(heard);

  // The held exchange brings the leader's stable generation home: the next watch says so.
  expect(await c.world.run(() => home.stableFor(f.toma!.appliedState()!) === gen, c.world.now + 5000)).toBe("done");
  const w2 = (await ok(c, watch(home, gen, b1.stable_generation)))!;
  expect((w2.body as WatchJson).stable_generation).toBe(gen);
  expect((w2.body as WatchJson).acked).toBe(gen);

  // Nothing new: held for a watch hold (3 s), then answered the same.
  const t0 = c.world.now;
  const w3 = (await ok(c, watch(home, gen, gen)))!;
  expect(c.world.now - t0).toBeGreaterThanOrEqual(2900);
  expect((w3.body as WatchJson).generation).toBe(gen);
  home.stop();
  ctl.stop();
  expect(c.world.failure).toBeNull();
});

test("the leader takes the highest acknowledgement it heard: older terms, older generations and repeats change nothing", async () => {
  const { c, leader, ctl, clock } = await setup(402);
  const st = leader.toma!.appliedState()!;
  const term = ctl.term;
  expect(await c.world.run(() => ctl.mirror.clients.get(ID) !== undefined, c.world.now + 5000)).toBe("done");
  const rec = ctl.mirror.clients.get(ID)!;
  const report = (t: number, acked: number) => receiveSwitched(ctl, { server: "s9", term: t, clients: [{ id: ID, acked }] }, () => clock.now_ms());

  const old = await ok(c, report(term - 1, st.generation));
  expect(old.status).toBe(409);
  expect(rec.acked).toBeLessThan(st.generation);
  const later = await ok(c, report(term + 1, st.generation));
  expect(later.status).toBe(503);
  expect(rec.acked).toBeLessThan(st.generation);

  // Taken; above the leader's generation it counts as the leader's generation.
  expect((await ok(c, report(term, st.generation + 5))).status).toBe(200);
  expect(rec.acked).toBe(st.generation);
  // An older generation (a late report, or the TOMA the client left) changes nothing.
  expect((await ok(c, report(term, st.generation - 1))).status).toBe(200);
  expect(rec.acked).toBe(st.generation);
  // The same acknowledgement from two TOMAs (the client re-homed): one client, acknowledged once.
  await ok(c, receiveSwitched(ctl, { server: "s1", term, clients: [{ id: ID, acked: st.generation }] }, () => clock.now_ms()));
  await ok(c, receiveSwitched(ctl, { server: "s2", term, clients: [{ id: ID, acked: st.generation }] }, () => clock.now_ms()));
  expect(ctl.mirror.clients.all().filter((x) => x.id === ID).length).toBe(1);
  expect(ctl.mirror.stable()).toBe(st.generation);
  // A client the leader does not know (or expired) is not taken.
  const unknown = await ok(c, receiveSwitched(ctl, { server: "s1", term, clients: [{ id: 12345, acked: st.generation }] }, () => clock.now_ms()));
  expect(unknown.status).toBe(200);
  expect(ctl.mirror.clients.get(12345)).toBeUndefined();
  // The route's schema refuses what is not a report.
  for (const bad of [{ server: "s1", term, clients: [{ id: 0, acked: 1 }] }, { server: "s 1", term, clients: [] }, { server: "s1", term: -1, clients: [] }, { server: "s1", term, clients: [], extra: 1 }]) {
    expect(v.safeParse(SwitchedReportSchema, bad).success).toBe(false);
  }
  ctl.stop();
  expect(c.world.failure).toBeNull();
});

test("a home cut off from the leader: its acknowledgement is answered 503, its watches go to the leader, and its next report delivers it", async () => {
  const { c, followers, ctl, cut, homeOn } = await setup(403);
  const f = followers[0]!;
  const home = homeOn(f);
  expect(await c.world.run(() => home.serving(), c.world.now + 5000)).toBe("done");
  const gen = f.toma!.appliedState()!.generation;
  cut.on = true;
  const a = (await ok(c, ack(home, gen)))!;
  expect(a.status).toBe(503);
  expect(ctl.mirror.clients.get(ID)!.acked).toBeLessThan(gen);
  // Out of touch after two watch holds: the watch is not answered here (relayed by the caller).
  expect(await c.world.run(() => !home.serving(), c.world.now + 10_000)).toBe("done");
  expect(await ok(c, watch(home, -1, -1))).toBeNull();
  // Back: the periodic report carries the acknowledgement taken while cut off.
  cut.on = false;
  expect(await c.world.run(() => ctl.mirror.clients.get(ID)!.acked === gen, c.world.now + 5000)).toBe("done");
  expect(await c.world.run(() => home.serving(), c.world.now + 5000)).toBe("done");
  home.stop();
  ctl.stop();
  expect(c.world.failure).toBeNull();
});

test("a home never answers a watch from a state older than the client holds, nor takes an acknowledgement of a generation it has not applied", async () => {
  const { c, followers, ctl, homeOn } = await setup(404);
  const f = followers[0]!;
  const home = homeOn(f);
  expect(await c.world.run(() => home.serving(), c.world.now + 5000)).toBe("done");
  const gen = f.toma!.appliedState()!.generation;
  const t0 = c.world.now;
  // The client holds a generation this TOMA has not applied (it was served elsewhere): not here.
  expect(await ok(c, watch(home, gen + 3, -1))).toBeNull();
  expect(c.world.now - t0).toBeGreaterThanOrEqual(2900); // it waited a watch hold for its apply first
  expect(await ok(c, ack(home, gen + 3))).toBeNull();
  expect(ctl.mirror.clients.get(ID)!.acked).toBeLessThan(gen);
  // Not a client route this TOMA serves (register, attach, report, leave): relayed.
  expect(await ok(c, home.serve("POST", `/v1/clients/${ID}/attach/v`, [String(ID), "attach", "v"], {}, INSECURE))).toBeNull();
  // Another client's secret may not act for this one.
  const other = (await ok(c, home.serve("POST", `/v1/clients/${ID}/ack`, [String(ID), "ack"], { generation: gen }, { kind: "client-id", id: ID + 1 } as never)))!;
  expect(other.status).toBe(403);
  const bad = (await ok(c, home.serve("GET", `/v1/clients/${ID}/watch?known=x`, [String(ID), "watch"], undefined, INSECURE)))!;
  expect(bad.status).toBe(400);
  home.stop();
  ctl.stop();
  expect(c.world.failure).toBeNull();
});

test("the leader's server goes silent: the home's held report leaves it for the new leader, and an acknowledgement is taken there", async () => {
  const { c, leader, followers, ctl, homeOn, ctls, silent } = await setup(405);
  const homes = followers.map((x) => homeOn(x));
  expect(await c.world.run(() => homes.every((h) => h.serving()), c.world.now + 5000)).toBe("done");
  // Its requests to the old leader are never answered (the server cut off, not refused).
  silent.add(leader.address);
  ctl.stop();
  leader.machine.crash("process");
  expect(await c.world.run(() => agreedLeader(c) !== null && agreedLeader(c)!.toma !== leader.name, c.world.now + 20_000)).toBe("done");
  const next = c.servers.find((s) => s.name === agreedLeader(c)!.toma)!;
  const clock = steadyClock(next.env!.clock);
  const pool = new DrivePool(() => clock.now_ms());
  const ctl2 = new ControlTerm(next.env!, next.toma!, pool, new VolumeOps(next.env!, next.toma!, pool), agreedLeader(c)!.term, {
    connect: () => Promise.reject(new Error("no target runs in this test")),
    server_key: null,
    name: next.name,
  });
  ctl2.start();
  ctls.set(next.address, ctl2);
  // The follower that is still one: in touch with the new leader within moments, not stuck on
  // the held report nobody answers (without leaving it, it would wait for good here).
  const f = followers.find((x) => x !== next)!;
  const home = homes[followers.indexOf(f)]!;
  expect(await c.world.run(() => home.serving(), c.world.now + 3000)).toBe("done");
  const gen = f.toma!.appliedState()!.generation;
  const a = (await ok(c, ack(home, gen)))!;
  expect(a.status).toBe(200);
  expect(ctl2.mirror.clients.get(ID)!.acked).toBe(gen);
  for (const h of homes) h.stop();
  ctl2.stop();
  expect(c.world.failure).toBeNull();
});
