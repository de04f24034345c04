/** The checker on hand-written histories: what it must accept and what it must flag. */
import { describe, expect, test } from "bun:test";
import { Checker } from "../../sim/checker.ts";
import { encodeSectors, SECTOR } from "../../sim/sector-value.ts";

function setup() {
  const clock = { now: 0, failures: [] as string[], fail(w: string) { this.failures.push(w); } };
  const checker = new Checker(clock, () => ["d1"], 100);
  const at = (t: number) => (clock.now = t);
  const data = (id: number, first = 0, n = 1) => {
    const b = new Uint8Array(n * SECTOR);
    if (id !== 0) encodeSectors(b, id, 0, first);
    return b;
  };
  return { clock, checker, at, data };
}

describe("checker", () => {
  test("accepts the last acknowledged write and the initial zeroes before any write", () => {
    const { clock, checker, at, data } = setup();
    at(1);
    expect(checker.readEnd("a", 0, 0, data(0), 0)).toBeNull();
    const w = checker.writeStart("a", 0, 0, 1, false);
    at(2);
    checker.writeEnd(w, true);
    at(3);
    expect(checker.readEnd("a", 0, 0, data(w.id), 3)).toBeNull();
    expect(clock.failures).toEqual([]);
  });

  test("flags a stale value once a newer write was acknowledged before the read began", () => {
    const { clock, checker, at, data } = setup();
    const w1 = checker.writeStart("a", 0, 0, 1, false);
    at(1);
    checker.writeEnd(w1, true);
    at(1.5);
    const w2 = checker.writeStart("b", 0, 0, 1, false);
    at(2);
    checker.writeEnd(w2, true);
    at(3);
    expect(checker.readEnd("a", 0, 0, data(w1.id), 3)).toContain("lost or stale");
    expect(clock.failures.length).toBe(1);
  });

  test("accepts either value of writes concurrent with the read or with each other", () => {
    const { clock, checker, at, data } = setup();
    const w1 = checker.writeStart("a", 0, 0, 1, false);
    at(1);
    const w2 = checker.writeStart("b", 0, 0, 1, false);
    at(2);
    checker.writeEnd(w1, true);
    at(3);
    checker.writeEnd(w2, true);
    at(4);
    // w1 and w2 overlapped: either may have been linearised last.
    expect(checker.readEnd("a", 0, 0, data(w1.id), 4)).toBeNull();
    expect(checker.readEnd("a", 0, 0, data(w2.id), 4)).toBeNull();
    // A write still in flight may be returned by a read that overlaps it.
    const w3 = checker.writeStart("a", 0, 0, 1, false);
    at(5);
    expect(checker.readEnd("b", 0, 0, data(w3.id), 4.5)).toBeNull();
    expect(clock.failures).toEqual([]);
  });

  test("an unflushed write may be lost by a power loss, a flushed or FUA one may not", () => {
    const { checker, at, data } = setup();
    const w1 = checker.writeStart("a", 0, 0, 1, true); // FUA
    at(1);
    checker.writeEnd(w1, true);
    const w2 = checker.writeStart("a", 0, 0, 1, false);
    at(2);
    checker.writeEnd(w2, true);
    at(3);
    checker.powerLoss("d1");
    at(4);
    expect(checker.readEnd("a", 0, 0, data(w1.id), 4)).toBeNull(); // w2 may be gone
    expect(checker.readEnd("a", 0, 0, data(w2.id), 4)).toBeNull(); // or it may have survived
    // The initial zeroes were superseded by w1, which was durable: never again.
    expect(checker.readEnd("a", 0, 0, data(0), 4)).toContain("initial zeroes");
  });

  test("a flush makes the writes acknowledged before it durable", () => {
    const { checker, at, data } = setup();
    const w1 = checker.writeStart("a", 0, 0, 1, false);
    at(1);
    checker.writeEnd(w1, true);
    at(1.5);
    const f = checker.flushStart("a", 0);
    at(2);
    checker.flushEnd(f, true);
    at(3);
    checker.powerLoss("d1");
    at(4);
    expect(checker.readEnd("a", 0, 0, data(0), 4)).toContain("durable at 2.000");
  });

  test("a successful flush vouches for writes whose drive lost power before it; a failed one makes them doubtful", () => {
    const { checker, at, data } = setup();
    const w1 = checker.writeStart("a", 0, 0, 1, false);
    at(1);
    checker.powerLoss("d1"); // while w1 was in flight: its data may be gone
    at(2);
    checker.writeEnd(w1, true);
    at(3);
    expect(checker.readEnd("a", 0, 0, data(0), 3)).toBeNull();
    const f = checker.flushStart("a", 0);
    at(4);
    checker.flushEnd(f, true); // ...but this flush says it is there
    at(5);
    expect(checker.readEnd("a", 0, 0, data(0), 5)).toContain("lost or stale");
    // Another client's flush promises nothing about a's writes; a failed flush of a's makes them doubtful.
    const w2 = checker.writeStart("a", 0, 1, 1, false);
    at(6);
    checker.writeEnd(w2, true);
    at(7);
    checker.flushEnd(checker.flushStart("b", 0), true);
    at(8);
    checker.powerLoss("d1");
    at(9);
    expect(checker.readEnd("a", 0, 1, data(0, 1), 9)).toBeNull();
    const f2 = checker.flushStart("a", 0);
    at(10);
    checker.flushEnd(f2, false);
    at(11);
    expect(checker.readEnd("a", 0, 1, data(0, 1), 11)).toBeNull();
  });

  test("a write that failed may or may not have landed, but no later than its settle window", () => {
    const { checker, at, data } = setup();
    const w1 = checker.writeStart("a", 0, 0, 1, false);
    at(1);
    checker.writeEnd(w1, false); // may land until 101
    const w2 = checker.writeStart("b", 0, 0, 1, false);
    at(50);
    checker.writeEnd(w2, true);
    at(60);
    expect(checker.readEnd("a", 0, 0, data(w1.id), 60)).toBeNull(); // landed late, over w2
    expect(checker.readEnd("a", 0, 0, data(0), 60)).toContain("initial zeroes");
    at(150);
    const w3 = checker.writeStart("b", 0, 0, 1, false);
    at(200);
    checker.writeEnd(w3, true);
    at(210);
    expect(checker.readEnd("a", 0, 0, data(w1.id), 210)).toContain("lost or stale");
  });

  test("flags torn, misplaced and never-written sectors", () => {
    const { checker, at, data } = setup();
    const w = checker.writeStart("a", 0, 0, 2, false);
    at(1);
    checker.writeEnd(w, true);
    const torn = data(w.id, 0, 1);
    torn[100]! ^= 1;
    expect(checker.readEnd("a", 0, 0, torn, 1)).toContain("torn");
    expect(checker.readEnd("a", 0, 5, data(w.id, 0, 1), 1)).toContain("meant for volume 0 sector 0");
    expect(checker.readEnd("a", 0, 0, data(999), 1)).toContain("never issued");
  });
});
