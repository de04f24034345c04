/**
 * Liveness (src/engine/wire/liveness.ts) across a stop of the requester itself, driven by hand: a
 * clock we move and the check timer we fire. A requester stopped for 10 s with a PING out finds,
 * on waking, its check due before the answer waiting in its socket: it must not give the target up
 * for time it was not listening, and must still give up a target that stays silent afterwards.
 */
import { expect, test } from "bun:test";
import type { Env } from "../../src/engine/env.ts";
import { Liveness } from "../../src/engine/wire/liveness.ts";

const OPTS = { quiet_ms: 2000, idle_ms: 10_000, deadline_ms: 3000, handshake_ms: 10_000 };

function harness() {
  let now = 0;
  let tick: (() => void) | null = null;
  let period = 0;
  const env = {
    clock: { now_ms: () => now },
    timers: {
      after: () => ({ cancel() {} }),
      every: (ms: number, fn: () => void) => {
        period = ms;
        tick = fn;
        return { cancel() {} };
      },
    },
  } as unknown as Env;
  const dead: string[] = [];
  let probes = 0;
  const lv: Liveness = new Liveness(env, OPTS, {
    busy: () => true,
    ready: () => true,
    probe: () => probes++,
    dead: (w) => {
      dead.push(w);
      lv.stop(); // as the session does: closed
    },
  });
  /** Time passes while the process runs: the check fires every period. */
  const run = (ms: number) => {
    for (let t = 0; t < ms; t += period) {
      now += period;
      tick!();
    }
  };
  /** The process does not run for `ms`, then its check fires once, late. */
  const stopped = (ms: number) => {
    now += ms;
    tick!();
  };
  return { lv, run, stopped, dead, probes: () => probes };
}

test("a PING out, the requester stopped 10 s: on waking it does not give the target up; the answer read next keeps it", () => {
  const h = harness();
  h.run(2500); // quiet with requests out: a PING goes
  expect(h.probes()).toBe(1);
  h.stopped(10_000);
  expect(h.dead).toEqual([]);
  h.lv.heard(); // the answer that waited in the socket
  h.run(1000);
  expect(h.dead).toEqual([]);
});

test("a target that stays silent after the requester's stop is still given up, by listening time", () => {
  const h = harness();
  h.run(2500);
  h.stopped(10_000);
  expect(h.dead).toEqual([]);
  h.run(4000);
  expect(h.dead.length).toBe(1);
  expect(h.dead[0]).toContain("a PING included");
});

test("while the requester runs, a silent target is given up within quiet + deadline", () => {
  const h = harness();
  h.run(5600);
  expect(h.dead.length).toBe(1);
});
