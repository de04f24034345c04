/**
 * The simulated network shows protocol code what TCP shows it: ordered bytes under loss and
 * splitting, refusals vs timeouts, held data across partitions, one-way links, resets from killed
 * processes, silence from dead machines, and the same trace for the same seed.
 */
import { describe, expect, test } from "bun:test";
import type { Conn, Listener, Network } from "../../src/engine/net/conn.ts";
import { type NetProfile, SimNetwork, quietProfile, randomProfile } from "../../sim/net.ts";
import { SimNode } from "../../sim/node.ts";
import { Prng } from "../../sim/prng.ts";
import { World } from "../../sim/world.ts";

function cluster(seed: number, profile: NetProfile = quietProfile()) {
  const world = new World(seed);
  const net = new SimNetwork(world, profile);
  const s1 = new SimNode(world, "s1", net, { offset_ms: 1000, rate: 1 });
  const c1 = new SimNode(world, "c1", net, { offset_ms: -50, rate: 1.0002 });
  return { world, net, s1, c1, sEnv: s1.boot().env, cEnv: c1.boot().env };
}

/** Runs the world until `p` settles (or the deadline), returning how it settled. */
async function settle<T>(world: World, p: Promise<T>, deadline: number): Promise<{ ok: true; value: T } | { ok: false; error: Error } | null> {
  let r: { ok: true; value: T } | { ok: false; error: Error } | null = null;
  p.then(
    (value) => (r = { ok: true, value }),
    (error: Error) => (r = { ok: false, error }),
  );
  await world.run(() => r !== null, deadline);
  return r;
}

/** Records everything one endpoint hears. */
class Recorder {
  chunks: Uint8Array[] = [];
  closed: string | null = null;
  closes = 0;
  events: string[] = [];

  constructor(readonly conn: Conn) {
    conn.onData = (c) => {
      this.chunks.push(c.slice());
      this.events.push(`data ${c.length}`);
    };
    conn.onClose = (r) => {
      this.closed = r;
      this.closes++;
      this.events.push(`close ${r}`);
    };
  }

  get bytes(): Uint8Array {
    return Buffer.concat(this.chunks);
  }
}

/** s1 listens; c1 connects. Returns both ends, recorded. */
async function pair(world: World, sNet: Network, cNet: Network, port = 7000) {
  let server: Recorder | null = null;
  const listener = await sNet.listen(`s1:${port}`, (c) => (server = new Recorder(c)));
  const r = await settle(world, cNet.connect(listener.address), world.now + 10_000);
  if (!r?.ok) throw new Error(`connect failed: ${r ? r.error.message : "no answer"}`);
  const client = new Recorder(r.value);
  await world.run(() => server !== null, world.now + 1);
  if (!server) throw new Error("not accepted");
  return { client, server: server as Recorder, listener };
}

/**
 * Lets `ms` of virtual time pass. (world.advance stops early when the queue runs dry, and
 * timeouts tested here are exactly that: nothing happening for a while.)
 */
async function wait(world: World, ms: number): Promise<void> {
  const until = world.now + ms;
  world.at(until, () => {});
  await world.run(() => false, until);
}

function randomBytes(prng: Prng, n: number): Uint8Array {
  const b = new Uint8Array(n);
  prng.fill(b);
  return b;
}

describe("SimNetwork", () => {
  test("bytes arrive in order, split and coalesced, under loss, duplication and reordering", async () => {
    const profile: NetProfile = { ...quietProfile(), latency_ms: [0.02, 2], loss: 0.05, dup: 0.02, reorder: 0.05, split: 0.5, rto_ms: 5 };
    const { world, sEnv, cEnv } = cluster(11, profile);
    const { client, server } = await pair(world, sEnv.net, cEnv.net);
    const prng = new Prng(99);
    const sent: Uint8Array[] = [];
    const sends = 300;
    // Sends spread over time, some bursts in the same instant, in both directions.
    for (let i = 0; i < sends; i++) {
      const b = randomBytes(prng, prng.int(1, 5000));
      sent.push(b);
      expect(client.conn.send(b)).toBe(true);
      if (prng.chance(0.5)) await wait(world, prng.range(0, 3));
    }
    const echo = randomBytes(prng, 100_000);
    server.conn.send(echo);
    const want = Buffer.concat(sent);
    await world.run(() => server.bytes.length >= want.length && client.bytes.length >= echo.length, world.now + 60_000);
    expect(Buffer.compare(server.bytes, want)).toBe(0);
    expect(Buffer.compare(client.bytes, echo)).toBe(0);
    // The faults did happen: chunk boundaries are not the send boundaries.
    expect(server.chunks.length).not.toBe(sends);
    expect(server.chunks.map((c) => c.length)).not.toEqual(sent.map((c) => c.length));
    expect(world.lastTrace(200).some((l) => l.includes("coalesced"))).toBe(true);
    expect(server.closed).toBeNull();
  });

  test("no listener is refused after one round trip; an unreachable host times out", async () => {
    const { world, net, sEnv, cEnv } = cluster(1);
    const refused = await settle(world, cEnv.net.connect("s1:7000"), 10_000);
    expect(refused?.ok).toBe(false);
    expect(refused && !refused.ok && refused.error.message).toMatch(/connection refused/);
    expect(world.now).toBeCloseTo(0.2, 6); // one round trip of 0.1 ms each way

    await sEnv.net.listen("s1:7000", () => {});
    net.partition(["c1"], ["s1"]);
    const start = world.now;
    const timedOut = await settle(world, cEnv.net.connect("s1:7000"), start + 60_000);
    expect(timedOut?.ok).toBe(false);
    expect(timedOut && !timedOut.ok && timedOut.error.message).toMatch(/timed out/);
    expect(world.now - start).toBeCloseTo(quietProfile().connect_timeout_ms, 6);

    // Only the reply direction down: the SYN lands (and is accepted), the connect still times out.
    net.heal();
    net.partition(["c1"], ["s1"], { oneWay: "BtoA" });
    const oneWay = await settle(world, cEnv.net.connect("s1:7000"), world.now + 60_000);
    expect(oneWay && !oneWay.ok && oneWay.error.message).toMatch(/timed out/);
  });

  test("a dead listener's node refuses; a listener dies with its incarnation", async () => {
    const { world, s1, sEnv, cEnv } = cluster(2);
    const l = await sEnv.net.listen("s1:0", () => {});
    expect(l.address).toMatch(/^s1:\d+$/);
    expect(l.address).not.toBe("s1:0");
    s1.crash("power");
    const r = await settle(world, cEnv.net.connect(l.address), 10_000);
    expect(r && !r.ok && r.error.message).toMatch(/connection refused/);
    // After a reboot the port is free again.
    const env2 = s1.boot().env;
    const l2 = await env2.net.listen(l.address, () => {});
    expect(l2.address).toBe(l.address);
  });

  test("listen checks the host; unix sockets are per node", async () => {
    const { world, sEnv, cEnv } = cluster(3);
    await expect(sEnv.net.listen("c1:7000", () => {})).rejects.toThrow(/not this node/);
    await sEnv.net.listen("s1:7000", () => {});
    await expect(sEnv.net.listen("s1:7000", () => {})).rejects.toThrow(/in use/);

    let accepted: Recorder | null = null;
    await sEnv.net.listen("unix:/run/nvmesh.sock", (c) => (accepted = new Recorder(c)));
    const other = await settle(world, cEnv.net.connect("unix:/run/nvmesh.sock"), 1000);
    expect(other && !other.ok && other.error.message).toMatch(/connection refused/);
    const local = await settle(world, sEnv.net.connect("unix:/run/nvmesh.sock"), world.now + 1000);
    expect(local?.ok).toBe(true);
    if (!local?.ok) return;
    expect(local.value.remote).toBe("unix");
    local.value.send(new Uint8Array([1, 2, 3]));
    await world.run(() => (accepted as Recorder | null)?.bytes.length === 3, world.now + 1);
    expect([...(accepted as unknown as Recorder).bytes]).toEqual([1, 2, 3]);
  });

  test("a partition holds data; it arrives in order after heal", async () => {
    const { world, net, sEnv, cEnv } = cluster(4);
    const { client, server } = await pair(world, sEnv.net, cEnv.net);
    net.partition(["c1"], ["s1"]);
    client.conn.send(new Uint8Array([1, 2]));
    client.conn.send(new Uint8Array([3]));
    await wait(world, 2000);
    expect(server.chunks.length).toBe(0);
    net.heal();
    await world.run(() => server.bytes.length === 3, world.now + 1000);
    expect([...server.bytes]).toEqual([1, 2, 3]);
    expect(client.closed).toBeNull();
    expect(server.closed).toBeNull();
  });

  test("a clog holds traffic until unclogged, without timing anything out early", async () => {
    const { world, net, sEnv, cEnv } = cluster(5);
    const { client, server } = await pair(world, sEnv.net, cEnv.net);
    net.clog([["c1", "s1"]]);
    client.conn.send(new Uint8Array([7]));
    await wait(world, 1000);
    expect(server.chunks.length).toBe(0);
    net.heal(); // heal leaves clogs alone
    await wait(world, 1000);
    expect(server.chunks.length).toBe(0);
    net.unclog("c1", "s1");
    await world.run(() => server.bytes.length === 1, world.now + 1000);
    expect(client.closed).toBeNull();
  });

  test("one-way link: the receiver gets the data, the sender times out", async () => {
    const { world, net, sEnv, cEnv } = cluster(6);
    const { client, server } = await pair(world, sEnv.net, cEnv.net);
    net.partition(["c1"], ["s1"], { oneWay: "BtoA" }); // s1→c1 down: acks never come back
    const start = world.now;
    client.conn.send(new Uint8Array([1, 2, 3, 4]));
    await world.run(() => client.closed !== null, start + 60_000);
    expect([...server.bytes]).toEqual([1, 2, 3, 4]);
    expect(client.closed).toBe("timed out");
    expect(world.now - start).toBeCloseTo(quietProfile().user_timeout_ms, 3);
    expect(server.closed).toBeNull(); // the receiver has no idea
    expect(client.conn.send(new Uint8Array([5]))).toBe(false);

    // When the link heals, the receiver's next send finds a socket that is gone: reset.
    net.heal();
    server.conn.send(new Uint8Array([9]));
    await world.run(() => server.closed !== null, world.now + 1000);
    expect(server.closed).toBe("connection reset");
    expect(client.closes).toBe(1);
  });

  test("held data outlives its sender's timeout until the maximum segment lifetime", async () => {
    const q = quietProfile();
    for (const healAfter of [q.user_timeout_ms + 2000, q.msl_ms + 2000]) {
      const { world, net, sEnv, cEnv } = cluster(12);
      const { client, server } = await pair(world, sEnv.net, cEnv.net);
      net.partition(["c1"], ["s1"]);
      client.conn.send(new Uint8Array([1, 2, 3]));
      await wait(world, healAfter);
      expect(client.closed).toBe("timed out");
      net.heal();
      await wait(world, 1000);
      // Within the lifetime a zombie segment still lands; past it, it is gone.
      expect(server.bytes.length).toBe(healAfter < q.msl_ms ? 3 : 0);
      expect(server.closed).toBeNull();
    }
  });

  test("a killed process resets its connections", async () => {
    const { world, s1, sEnv, cEnv } = cluster(7);
    const { client } = await pair(world, sEnv.net, cEnv.net);
    s1.crash("process");
    await world.run(() => client.closed !== null, world.now + 100);
    expect(client.closed).toBe("connection reset");
    expect(world.now).toBeLessThan(1); // one latency after the crash, not a timeout
  });

  test("after a power loss the peer learns only when it sends, or by timeout", async () => {
    const { world, net, s1, c1, sEnv, cEnv } = cluster(8);
    const a = await pair(world, sEnv.net, cEnv.net, 7000);
    const b = await pair(world, sEnv.net, cEnv.net, 7001);
    s1.crash("power");
    await wait(world, 60_000);
    expect(a.client.closed).toBeNull();
    expect(b.client.closed).toBeNull();
    // Sending with the link up: the reply is a RST.
    a.client.conn.send(new Uint8Array([1]));
    await world.run(() => a.client.closed !== null, world.now + 100);
    expect(a.client.closed).toBe("connection reset");
    // Sending into a dead link: nothing answers, the user timeout does.
    net.partition(["s1"], ["c1"]);
    const start = world.now;
    b.client.conn.send(new Uint8Array([1]));
    await world.run(() => b.client.closed !== null, world.now + 60_000);
    expect(b.client.closed).toBe("timed out");
    expect(world.now - start).toBeCloseTo(quietProfile().user_timeout_ms, 3);
    // A dead incarnation's code hears nothing.
    expect(a.server.closes + b.server.closes).toBe(0);
    expect(c1.alive).toBe(true);
  });

  test("close delivers pending data first, then the peer hears the FIN", async () => {
    const profile: NetProfile = { ...quietProfile(), latency_ms: [0.05, 1], split: 0.5, reorder: 0.2 };
    const { world, sEnv, cEnv } = cluster(9, profile);
    const { client, server } = await pair(world, sEnv.net, cEnv.net);
    const prng = new Prng(5);
    const want = randomBytes(prng, 50_000);
    for (let at = 0; at < want.length; at += 7000) client.conn.send(want.subarray(at, at + 7000));
    client.conn.close();
    expect(client.conn.send(new Uint8Array([1]))).toBe(false);
    await world.run(() => server.closed !== null && client.closed !== null, world.now + 1000);
    expect(Buffer.compare(server.bytes, want)).toBe(0);
    expect(server.events.at(-1)).toBe("close closed by peer");
    expect(server.events.filter((e) => e.startsWith("close")).length).toBe(1);
    expect(client.closed).toBe("closed"); // like Bun, the closing side hears its own close
    await wait(world, 20_000);
    expect(client.closes).toBe(1);
    expect(server.closes).toBe(1);
  });

  test("data sent on accept reaches a connector that sets onData after connect resolves", async () => {
    const { world, sEnv, cEnv } = cluster(10);
    const l: Listener = await sEnv.net.listen("s1:7000", (c) => {
      c.send(new Uint8Array([42]));
      c.close();
    });
    const r = await settle(world, cEnv.net.connect(l.address), 1000);
    if (!r?.ok) throw new Error("connect failed");
    const rec = new Recorder(r.value);
    await world.run(() => rec.closed !== null, world.now + 1000);
    expect(rec.events).toEqual(["data 1", "close closed by peer"]);
  });

  test("the same seed gives the same trace; another seed another", async () => {
    async function scenario(seed: number): Promise<string> {
      const world = new World(seed);
      const net = new SimNetwork(world, randomProfile(world.prng.fork("profile")));
      const s1 = new SimNode(world, "s1", net, { offset_ms: 0, rate: 1 });
      const c1 = new SimNode(world, "c1", net, { offset_ms: 0, rate: 1 });
      const sEnv = s1.boot().env;
      const cEnv = c1.boot().env;
      const { client, server } = await pair(world, sEnv.net, cEnv.net);
      const prng = world.prng.fork("workload");
      let received = 0;
      server.conn.onData = (c) => {
        received += c.length;
        server.conn.send(c.slice(0, 1));
      };
      let total = 0;
      for (let i = 0; i < 50; i++) {
        const b = randomBytes(prng, prng.int(1, 3000));
        total += b.length;
        client.conn.send(b);
        if (i === 20) net.partition(["c1"], ["s1"], { oneWay: "AtoB" });
        if (i === 30) net.heal();
        await wait(world, prng.range(0, 5));
      }
      await world.run(() => received === total, world.now + 120_000);
      expect(received).toBe(total);
      s1.crash("process");
      await world.run(() => client.closed !== null, world.now + 120_000);
      return world.traceHash;
    }
    const a = await scenario(1234);
    const b = await scenario(1234);
    const c = await scenario(4321);
    expect(b).toBe(a);
    expect(c).not.toBe(a);
  });
});
