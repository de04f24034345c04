/**
 * The clock that stands still while this process does not run (src/engine/listening-clock.ts),
 * driven by hand: a raw clock we move, read through the steady clock as every owner reads it, and
 * the owner's periodic tick.
 */
import { expect, test } from "bun:test";
import { ListeningClock } from "../../src/engine/listening-clock.ts";
import { type SteadyClock, steadyClock } from "../../src/engine/steady-clock.ts";

function raw(): { now: number; now_ms(): number } {
  return {
    now: 1000,
    now_ms() {
      return this.now;
    },
  };
}

function listening(r: { now_ms(): number }, period_ms: number, slack_ms: number): ListeningClock {
  return new ListeningClock(steadyClock(r), period_ms, slack_ms);
}

/** A raw clock and a ListeningClock on it (period and slack 1 s) after two ticks on time. */
function ticking(): { r: ReturnType<typeof raw>; c: ListeningClock; before: number } {
  const r = raw();
  const c = listening(r, 1000, 1000);
  c.tick();
  r.now += 1000;
  c.tick();
  return { r, c, before: c.now_ms() };
}

test("before ticking starts, and while ticks come on time, it reads the raw clock", () => {
  const r = raw();
  const c = listening(r, 1000, 1000);
  r.now += 50_000;
  expect(c.now_ms()).toBe(51_000);
  c.tick();
  for (let i = 0; i < 10; i++) {
    r.now += 1000 + (i % 3) * 400; // late within the slack: a busy loop, not a stall
    c.tick();
  }
  expect(c.now_ms()).toBe(r.now);
});

test("a stop of 10 s is taken off: readings stand still through it, before and after the late tick", () => {
  const { r, c, before } = ticking();
  r.now += 10_000; // the process (or its VM) did not run
  // Read before the late tick runs (another timer of the process came first): already discounted.
  const early = c.now_ms();
  expect(early - before).toBe(2000); // the period and the slack: what a running process may miss
  c.tick();
  expect(c.now_ms()).toBe(early);
  r.now += 500;
  expect(c.now_ms()).toBe(early + 500);
  r.now += 500;
  c.tick();
  expect(c.now_ms()).toBe(early + 1000);
});

test("never runs backward; stop() goes back to the raw pace without a step back", () => {
  const r = raw();
  const c = listening(r, 200, 1000);
  c.tick();
  let last = c.now_ms();
  for (const step of [100, 5000, 100, 100, 30_000, 200, 200]) {
    r.now += step;
    const mid = c.now_ms();
    expect(mid).toBeGreaterThanOrEqual(last);
    c.tick();
    expect(c.now_ms()).toBe(mid);
    last = mid;
  }
  c.stop();
  expect(c.now_ms()).toBeGreaterThanOrEqual(last);
  r.now += 100;
  expect(c.now_ms() - last).toBeGreaterThanOrEqual(100);
});

test("a raw clock is refused, by the compiler and when it starts", () => {
  const r = raw();
  // @ts-expect-error a raw clock is not a SteadyClock
  expect(() => new ListeningClock(r, 1000, 1000)).toThrow("invariant: a ListeningClock reads a steady clock");
  // A mark forged past the compiler without the property: still refused.
  expect(() => new ListeningClock(r as unknown as SteadyClock, 1000, 1000)).toThrow("steady clock");
});

test("a raw clock jumping back an hour: the readings stand still, then go on at the raw pace, nothing discounted", () => {
  const { r, c, before } = ticking();
  r.now -= 3_600_000;
  expect(c.now_ms()).toBe(before);
  c.tick();
  for (let i = 0; i < 5; i++) {
    r.now += 1000;
    c.tick();
  }
  expect(c.now_ms()).toBe(before + 5000);
});

test("a clock marked steady that runs backward all the same stops the ticks: an invariant, not a stall", () => {
  let now = 5000;
  const liar: SteadyClock = { steady: true, now_ms: () => now };
  const c = new ListeningClock(liar, 1000, 1000);
  c.tick();
  now -= 10;
  expect(() => c.tick()).toThrow("ran backward");
});
