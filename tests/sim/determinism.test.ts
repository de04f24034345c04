/** One seed is one run: the same seed twice gives a byte-identical trace, another seed another. */
import { expect, test } from "bun:test";
import { Glob } from "bun";
import { defaultRunOptions, runSeed } from "../../sim/run.ts";

test("the same seed gives a byte-identical trace twice; another seed gives another", async () => {
  const opts = { ...defaultRunOptions(), full_trace: true };
  const a = await runSeed(42, opts);
  const b = await runSeed(42, opts);
  const c = await runSeed(43, opts);
  if (!a.ok) console.log(a.failure, a.last_trace.join("\n"));
  expect(a.ok).toBe(true);
  expect(a.trace_lines).toBeGreaterThan(1000);
  expect(b.trace_hash).toBe(a.trace_hash);
  expect(b.full_trace.join("\n")).toBe(a.full_trace.join("\n"));
  expect(b.events).toBe(a.events);
  expect(c.trace_hash).not.toBe(a.trace_hash);
}, 60_000);

test("the simulator itself uses no wall clock, real timers or unseeded randomness", async () => {
  const offenders: string[] = [];
  const forbidden = [/\bDate\.now\(/, /\bperformance\.now\(/, /\bsetTimeout\(/, /\bsetInterval\(/, /\bMath\.random\(/, /crypto\./];
  for await (const path of new Glob("sim/**/*.ts").scan(".")) {
    if (path === "sim/main.ts") continue; // prints wall-clock progress of a sweep, nothing else
    (await Bun.file(path).text()).split("\n").forEach((line, i) => {
      if (/^\s*(\/\/|\*)/.test(line)) return;
      for (const re of forbidden) if (re.test(line)) offenders.push(`${path}:${i + 1}: ${line.trim()}`);
    });
  }
  expect(offenders).toEqual([]);
});
