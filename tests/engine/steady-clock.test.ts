import { expect, test } from "bun:test";
import { steadyClock } from "../../src/engine/steady-clock.ts";

test("a backward jump counts as no time passing; time goes on from there; a forward jump stays", () => {
  let raw = 1000;
  const c = steadyClock({ now_ms: () => raw });
  expect(c.now_ms()).toBe(1000);
  raw = 1500;
  expect(c.now_ms()).toBe(1500);
  raw = 1500 - 3_600_000; // an hour back
  expect(c.now_ms()).toBe(1500);
  raw += 200;
  expect(c.now_ms()).toBe(1700);
  raw += 60_000; // forward: suspicion comes sooner, which is allowed
  expect(c.now_ms()).toBe(61_700);
});
