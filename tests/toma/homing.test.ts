/**
 * homedCall over a scripted set of TOMAs (the call function is its seam: the daemon's passes the
 * real management client, the simulator its own link): following a 421 to the leader, and
 * learning the other TOMAs from a home's cluster view only where the caller asks for it; going
 * back to the preferred home once it serves clients again (on a fake env whose timers fire on demand).
 */
import { expect, test } from "bun:test";
import { testEnv as fakeEnv } from "../../src/engine/nbd/test-kit.ts";
import { homedCall } from "../../src/toma/homing.ts";
import { testEnv } from "./harness.ts";

type Sent = { address: string; method: string; path: string };

/** `a` is a follower naming `b` the leader; `b` answers and lists `a`, `b` and `c` as peers. */
function cluster(sent: Sent[]) {
  return async (address: string, method: string, path: string): Promise<unknown> => {
    sent.push({ address, method, path });
    if (address === "a") throw Object.assign(new Error("not the leader"), { status: 421, leader: "b" });
    if (path === "/v1/cluster") return { consensus: { address: "b", peers: [{ address: "a" }, { address: "b" }, { address: "c" }] } };
    return { ok: address };
  };
}

test("a 421 is followed to the leader, which becomes the home; its cluster view names the other TOMAs", async () => {
  const sent: Sent[] = [];
  const h = homedCall(testEnv(), ["a"], cluster(sent));
  expect(await h.call("POST", "/v1/x", {})).toEqual({ ok: "b" });
  expect(h.home()).toBe("b");
  for (let i = 0; i < 100 && !h.known().includes("c"); i++) await Bun.sleep(2);
  expect(h.known().sort()).toEqual(["a", "b", "c"]);
  expect(sent.filter((s) => s.path === "/v1/cluster").map((s) => s.address)).toEqual(["b"]);
});

test("learn_peers off: only the calls themselves are sent (a caller whose call is one kind, whatever the path)", async () => {
  const sent: Sent[] = [];
  const h = homedCall(testEnv(), ["a"], cluster(sent), { who: "drive report", learn_peers: false });
  expect(await h.call("POST", "", {})).toEqual({ ok: "b" });
  expect(await h.call("POST", "", {})).toEqual({ ok: "b" });
  await Bun.sleep(20);
  expect(sent.map((s) => `${s.address} ${s.method} ${s.path}`)).toEqual(["a POST ", "b POST ", "b POST "]);
  expect(h.known()).toEqual(["a", "b"]);
});

/**
 * `a` is the preferred home (the daemon's own server's TOMA), `b` another member. What `a`
 * answers to GET /v1/cluster is scripted per probe; every other call to `a` or `b` answers its
 * address. Calls to `b` on a `/watch` path are held until released, as a TOMA holds a watch.
 */
function restartedHome(sent: Sent[]) {
  const s = {
    a: "dead" as "dead" | "starting" | "no-leader" | "leader-without-control" | "ready",
    held: [] as (() => void)[],
    /** GET /v1/cluster on `a` is held (until released from `held_probes`). */
    hold_probes: false,
    held_probes: [] as (() => void)[],
    /** `a` answers the client routes 421 naming `b` (it has not applied the registration yet). */
    lagging: false,
    /** How many of the next client calls `b` fails as unreachable. */
    b_fails: 0,
  };
  const view = (state: typeof s.a) => {
    const running = state !== "starting";
    const leader = state === "no-leader" ? null : { node_id: 1, address: state === "leader-without-control" ? "a" : "b" };
    return {
      ready: running && leader !== null,
      version: 0,
      consensus: { phase: running ? "running" : "starting", role: state === "leader-without-control" ? "leader" : "follower", leader, address: "a", peers: [{ address: "a" }, { address: "b" }] },
    };
  };
  const callAt = async (address: string, method: string, path: string): Promise<unknown> => {
    sent.push({ address, method, path });
    if (address === "a") {
      if (s.a === "dead") throw Object.assign(new Error("connection refused"), { status: 0 });
      if (path === "/v1/cluster") {
        if (s.hold_probes) await new Promise<void>((r) => s.held_probes.push(r));
        return view(s.a);
      }
      if (s.lagging) throw Object.assign(new Error("not applied here yet"), { status: 421, leader: "b" });
      return { ok: "a" };
    }
    if (path === "/v1/cluster") return { ready: true, version: 7, consensus: { phase: "running", role: "leader", leader: { node_id: 2, address: "b" }, address: "b", peers: [{ address: "a" }, { address: "b" }] } };
    if (s.b_fails > 0) {
      s.b_fails--;
      throw Object.assign(new Error("connection refused"), { status: 0 });
    }
    if (path.endsWith("/watch")) await new Promise<void>((r) => s.held.push(r));
    return { ok: "b" };
  };
  return { s, callAt };
}

const settle = () => new Promise<void>((r) => setImmediate(r));
/** The pending timers fire `times` times (each a probe's delay), each followed by what it set off. */
async function fire(env: ReturnType<typeof fakeEnv>, times = 1) {
  for (let i = 0; i < times; i++) {
    env.fireTimers();
    await settle();
  }
}
const probes = (sent: Sent[]) => sent.filter((x) => x.address === "a" && x.path === "/v1/cluster").length;

test("homed elsewhere, the daemon goes back to its own TOMA once it answered ready twice in a row, without cutting a watch short", async () => {
  const env = fakeEnv();
  const sent: Sent[] = [];
  const { s, callAt } = restartedHome(sent);
  const h = homedCall(env, ["a", "b"], callAt);
  expect(await h.call("POST", "/v1/clients", {})).toEqual({ ok: "b" });
  expect(h.home()).toBe("b");
  const back = () => env.logged.filter((l) => l.msg.includes("homed back"));

  // Dead, starting, running without a leader, the leader without its control yet: not ready.
  for (const state of ["dead", "starting", "no-leader", "leader-without-control"] as const) {
    s.a = state;
    await fire(env);
    expect(h.home()).toBe("b");
  }
  // Ready once, then not, then ready once: no move (it must answer ready twice in a row).
  for (const state of ["ready", "no-leader", "ready"] as const) {
    s.a = state;
    await fire(env);
    expect(h.home()).toBe("b");
  }
  expect(back()).toEqual([]);
  expect(probes(sent)).toBe(7);

  // A watch held by `b` while the home moves: it finishes there, the next call goes to `a`.
  const watch = h.call("GET", "/v1/clients/5/watch");
  await settle();
  await fire(env);
  expect(h.home()).toBe("a");
  expect(back().map((l) => l.msg)).toEqual(["client daemon homed back on a"]);
  s.held.shift()!();
  expect(await watch).toEqual({ ok: "b" });
  expect(await h.call("POST", "/v1/clients/5/ack", {})).toEqual({ ok: "a" });
  expect(h.home()).toBe("a");

  // Home again: no more probes (the one GET since is the home's view, learned once per home).
  await settle();
  const asked = probes(sent);
  await fire(env);
  expect(probes(sent)).toBe(asked);

  // Its own TOMA dies again: away, and back once it is ready twice.
  s.a = "dead";
  expect(await h.call("POST", "/v1/clients/5/ack", {})).toEqual({ ok: "b" });
  s.a = "ready";
  await fire(env);
  expect(h.home()).toBe("b");
  await fire(env);
  expect(h.home()).toBe("a");
  expect(back().length).toBe(2);
});

// The drive reporter (it asks no TOMA for its view), and a daemon shutting down (stop()).
for (const [what, opts, stop] of [
  ["a caller that does not ask TOMAs for their view never probes its first TOMA", { who: "drive report", learn_peers: false }, false],
  ["stop() ends the probing", {}, true],
] as const) {
  test(what, async () => {
    const env = fakeEnv();
    const sent: Sent[] = [];
    const { s, callAt } = restartedHome(sent);
    const h = homedCall(env, ["a", "b"], callAt, opts);
    expect(await h.call("POST", "/v1/clients", {})).toEqual({ ok: "b" });
    if (stop) h.stop();
    s.a = "ready";
    await fire(env, 4);
    expect(h.home()).toBe("b");
    expect(probes(sent)).toBe(0);
  });
}

test("a probe still in flight when its chain ended (home reached another way, and left again) is ignored: one probe at a time", async () => {
  const env = fakeEnv();
  const sent: Sent[] = [];
  const { s, callAt } = restartedHome(sent);
  const h = homedCall(env, ["a", "b"], callAt);
  await h.call("POST", "/v1/clients", {});
  s.a = "ready";
  s.hold_probes = true;
  await fire(env);
  expect(s.held_probes.length).toBe(1);
  s.hold_probes = false;
  // `b` fails one call: the daemon moves to `a`, which answers (ending the chain); then `a` dies
  // again and the daemon is back on `b` (a new chain).
  s.b_fails = 1;
  expect(await h.call("POST", "/v1/clients/5/ack", {})).toEqual({ ok: "a" });
  expect(h.home()).toBe("a");
  s.a = "dead";
  expect(await h.call("POST", "/v1/clients/5/ack", {})).toEqual({ ok: "b" });
  expect(h.home()).toBe("b");
  s.a = "ready";
  s.lagging = true;
  // The old chain's answer arrives: ignored, it counts nothing and arms nothing.
  s.held_probes.shift()!();
  await settle();
  const asked = probes(sent);
  await fire(env);
  expect(probes(sent)).toBe(asked + 1); // the new chain's first probe only
  expect(h.home()).toBe("b");
  s.lagging = false;
  await fire(env);
  expect(probes(sent)).toBe(asked + 2);
  expect(h.home()).toBe("a");
  expect(env.logged.filter((l) => l.msg.includes("homed back")).length).toBe(1);
});

test("a TOMA tried after the home failed becomes the home only once it answered: calls meanwhile stay home, an unreachable TOMA is never the home", async () => {
  const env = fakeEnv();
  const sent: Sent[] = [];
  // `a` (the home) cannot reach a leader for the first call only (503); `b` was cut off: a call
  // there hangs until released, then fails as unreachable; `c` answers.
  let a_refuses = 1;
  const b_hung: (() => void)[] = [];
  const callAt = async (address: string, method: string, path: string): Promise<unknown> => {
    sent.push({ address, method, path });
    if (address === "a" && a_refuses > 0) {
      a_refuses--;
      throw Object.assign(new Error("the leader does not answer"), { status: 503 });
    }
    if (address === "b") {
      await new Promise<void>((r) => b_hung.push(r));
      throw Object.assign(new Error("no answer within 10 s"), { status: 0 });
    }
    return { ok: address };
  };
  const h = homedCall(env, ["a", "b", "c"], callAt, { learn_peers: false });
  const first = h.call("POST", "/v1/clients/5/report", {});
  await settle();
  expect(b_hung.length).toBe(1);
  // While the first call waits on `b`, the home is still `a`: the next call is answered there.
  expect(h.home()).toBe("a");
  expect(await h.call("POST", "/v1/clients/5/ack", {})).toEqual({ ok: "a" });
  b_hung.shift()!();
  expect(await first).toEqual({ ok: "c" });
  // `c` answered where `a` and `b` did not: the home now; `b` never was.
  expect(h.home()).toBe("c");
  const moves = env.logged.filter((l) => l.msg.includes("homed on another TOMA")).map((l) => JSON.stringify(l));
  expect(moves.length).toBe(1);
  expect(moves.some((m) => m.includes('"to":"b"'))).toBe(false);
  expect(sent.map((x) => x.address)).toEqual(["a", "b", "a", "c"]);
  h.stop();
});
