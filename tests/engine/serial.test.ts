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
