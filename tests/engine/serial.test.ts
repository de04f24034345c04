/** Serial: steps run one at a time in the order given; a failure stays with its caller. */
import { expect, test } from "bun:test";
import { Serial } from "../../src/engine/serial.ts";

test("steps run one at a time, in order, and a failing step does not stop the next", async () => {
  const q = new Serial();
  const log: string[] = [];
  let running = 0;
  const step = (name: string, ms: number, fail = false) => async () => {
    expect(running).toBe(0);
    running++;
    log.push(`start ${name}`);
    await Bun.sleep(ms);
    log.push(`end ${name}`);
    running--;
    if (fail) throw new Error(`${name} failed`);
    return name;
  };
  const a = q.run(step("a", 20));
  const b = q.run(step("b", 1, true));
  const c = q.run(step("c", 5));
  expect(await a).toBe("a");
  expect(await b.catch((e: Error) => e.message)).toBe("b failed");
  expect(await c).toBe("c");
  expect(log).toEqual(["start a", "end a", "start b", "end b", "start c", "end c"]);
});

test("idle settles once every step given so far has, and never rejects", async () => {
  const q = new Serial();
  let done = false;
  void q.run(async () => {
    await Bun.sleep(10);
    done = true;
    throw new Error("a failure");
  }).catch(() => {});
  await q.idle();
  expect(done).toBe(true);
  await q.idle();
});

test("a coalesced pass asked for while one waits its turn runs once for all who asked; one asked for while it runs runs again after", async () => {
  const q = new Serial();
  let runs = 0;
  const errors: unknown[] = [];
  const pass = q.coalesced(async () => {
    runs++;
    await Bun.sleep(5);
    if (runs === 3) throw new Error("third run failed");
  }, (e) => errors.push(e));
  // Something else holds the queue: three asks meanwhile make one run.
  const busy = q.run(() => Bun.sleep(10));
  pass();
  pass();
  pass();
  await busy;
  await q.idle();
  expect(runs).toBe(1);
  // Asked for while a run is under way: it runs once more, after it.
  pass();
  await Bun.sleep(1);
  pass();
  await q.idle();
  expect(runs).toBe(3);
  expect(errors.map((e) => (e as Error).message)).toEqual(["third run failed"]);
});
