/**
 * The connection-limits pieces on their own: the daemon-wide byte budget (fair, bounded, never
 * losing a byte) and the pre-authentication gate (a cap, a deadline by the daemon's own timer,
 * refusals logged without flooding the log). Then pause/resume on each kind of Conn.
 */
import { describe, expect, test } from "bun:test";
import { ByteBudget } from "../../src/engine/limits/byte-budget.ts";
import { PreAuthGate } from "../../src/engine/limits/preauth.ts";
import { testEnv } from "../../src/engine/nbd/test-kit.ts";
import { realEnv } from "../../src/engine/runtime/real-env.ts";
import { DEFAULT_SESSION_MAX_INFLIGHT_BYTES } from "../../src/engine/wire/session.ts";
import { DEFAULT_CONN_INFLIGHT_BYTES } from "../../src/engine/target/service.ts";

const tick = () => new Promise((r) => setImmediate(r));

describe("ByteBudget", () => {
  test("takes what fits, queues the rest in arrival order, and grants on a later microtask", async () => {
    const b = new ByteBudget(100);
    const order: string[] = [];
    expect(b.take(60, () => order.push("never"))).toBe(true);
    expect(b.take(50, () => order.push("a50"))).toBe(false);
    // Fits, but waits behind the older request: nothing overtakes the oldest waiter.
    expect(b.take(10, () => order.push("b10"))).toBe(false);
    b.give(60);
    expect(order).toEqual([]); // not from inside give()
    await tick();
    expect(order).toEqual(["a50", "b10"]);
    expect(b.used).toBe(60);
    b.give(60);
    expect(b.used).toBe(0);
  });

  test("a request larger than the budget is granted alone, once nothing is held", async () => {
    const b = new ByteBudget(100);
    const granted: number[] = [];
    expect(b.take(10, () => {})).toBe(true);
    expect(b.take(500, () => granted.push(500))).toBe(false);
    b.give(10);
    await tick();
    expect(granted).toEqual([500]);
    expect(b.take(1, () => granted.push(1))).toBe(false);
    b.give(500);
    await tick();
    expect(granted).toEqual([500, 1]);
  });

  test("a withdrawn request is never granted and does not block those behind it", async () => {
    const b = new ByteBudget(100);
    const granted: string[] = [];
    b.take(100, () => {});
    const big = () => granted.push("big");
    b.take(90, big);
    b.take(5, () => granted.push("small"));
    expect(b.cancel(big)).toBe(true);
    expect(b.cancel(big)).toBe(false);
    b.give(10);
    await tick();
    expect(granted).toEqual(["small"]);
  });

  test("force counts memory held already, even beyond the capacity; takes wait until it is given back", async () => {
    const b = new ByteBudget(100);
    b.take(100, () => {});
    b.force(50);
    expect(b.used).toBe(150);
    let got = false;
    b.take(1, () => (got = true));
    b.give(50);
    await tick();
    expect(got).toBe(false);
    b.give(100);
    await tick();
    expect(got).toBe(true);
  });

  test("round robin: a latecomer gets its turn among connections that flood", async () => {
    // Each connection wants 10 bytes, holds them a moment, gives them back and wants them again
    // at once; it has one request waiting at most (it pauses while it waits), as the target and
    // the NBD server use the budget. Three fill it; a fourth arrives later.
    const b = new ByteBudget(30);
    const served: string[] = [];
    const run = (name: string) => {
      const granted = () => {
        served.push(name);
        queueMicrotask(() => {
          b.give(10);
          if (served.length < 80) want();
        });
      };
      const want = () => {
        if (b.take(10, granted)) granted();
      };
      want();
    };
    for (const name of ["a", "b", "c"]) run(name);
    run("d");
    for (let i = 0; i < 100 && served.length < 80; i++) await tick();
    const counts = Object.fromEntries(["a", "b", "c", "d"].map((n) => [n, served.filter((x) => x === n).length]));
    // Fair shares: nobody gets less than half of an even share.
    for (const n of ["a", "b", "c", "d"]) expect({ n, fair: counts[n]! >= served.length / 8 }).toEqual({ n, fair: true });
  });

  test("giving back more than was taken is a broken invariant: it throws", () => {
    const b = new ByteBudget(10);
    expect(() => b.give(1)).toThrow(/invariant/);
  });
});

describe("PreAuthGate", () => {
  test("a cap on connections waiting to authenticate; places come back on authentication or close", () => {
    const env = testEnv();
    const g = new PreAuthGate(env, { max_unauthenticated: 2, auth_timeout_ms: 1000 }, "test port");
    const a = g.admit("p1", () => {});
    const b = g.admit("p2", () => {});
    expect(a && b).toBeTruthy();
    expect(g.admit("p3", () => {})).toBe(null);
    expect(env.logged.filter((l) => l.msg === "refusing connection: too many unauthenticated connections").length).toBe(1);
    a!.authenticated();
    a!.closed(); // idempotent: an authenticated connection that closes frees nothing twice
    expect(g.unauthenticated).toBe(1);
    expect(g.admit("p4", () => {})).not.toBe(null);
    b!.closed();
    expect(g.unauthenticated).toBe(1);
  });

  test("the deadline closes a connection that has not authenticated, and only that one", () => {
    const env = testEnv();
    const g = new PreAuthGate(env, { max_unauthenticated: 10, auth_timeout_ms: 1000 }, "test port");
    const expired: string[] = [];
    const slow = g.admit("slow", (why) => expired.push(`slow: ${why}`));
    const quick = g.admit("quick", (why) => expired.push(`quick: ${why}`));
    quick!.authenticated();
    env.fireTimers();
    expect(expired).toEqual(["slow: not authenticated within 1000 ms"]);
    expect(g.unauthenticated).toBe(0);
    slow!.closed(); // after the deadline fired: nothing more to free
    expect(g.unauthenticated).toBe(0);
  });

  test("refusals in a burst make one log line with their count", () => {
    let now = 0;
    const env = { ...testEnv(), clock: { now_ms: () => now } };
    const logged: unknown[] = [];
    env.log = { ...env.log, warn: (msg: string, fields?: Record<string, unknown>) => logged.push({ msg, ...fields }) };
    const g = new PreAuthGate(env, { max_unauthenticated: 1, auth_timeout_ms: 1000 }, "test port");
    g.admit("held", () => {});
    for (let i = 0; i < 500; i++) g.admit(`p${i}`, () => {});
    now = 1500;
    g.admit("later", () => {});
    expect(logged.length).toBe(2);
    expect((logged[1] as { refused: number }).refused).toBe(500);
  });

  test("a bad limit is refused at construction", () => {
    expect(() => new PreAuthGate(testEnv(), { max_unauthenticated: 0, auth_timeout_ms: 1 }, "x")).toThrow();
    expect(() => new PreAuthGate(testEnv(), { max_unauthenticated: 1, auth_timeout_ms: 0 }, "x")).toThrow();
  });
});

describe("the target's per-connection payload bound", () => {
  test("equals the session's own, so a well-behaved requester never meets it", () => {
    expect(DEFAULT_CONN_INFLIGHT_BYTES).toBe(DEFAULT_SESSION_MAX_INFLIGHT_BYTES);
  });
});

describe("Conn.pause / resume", () => {
  test("real sockets: a paused server reads nothing, the sender meets backpressure, resume delivers everything", async () => {
    const env = realEnv("test", { debug() {}, info() {}, warn() {}, error() {} });
    let server: import("../../src/engine/net/conn.ts").Conn | null = null;
    let received = 0;
    const listener = await env.net.listen("127.0.0.1:0", (c) => {
      server = c;
      c.pause();
      c.onData = (chunk) => (received += chunk.length);
    });
    const client = await env.net.connect(listener.address);
    // Written straight to the socket, so that what the kernel does not take is visible.
    const total = 64 * 1024 * 1024;
    const chunk = new Uint8Array(1024 * 1024);
    for (let sent = 0; sent < total; sent += chunk.length) client.send(chunk);
    for (let i = 0; i < 20; i++) await tick();
    expect(received).toBe(0);
    server!.resume();
    for (let i = 0; i < 2000 && received < total; i++) await Bun.sleep(5);
    expect(received).toBe(total);
    client.close();
    listener.close();
  });
});
