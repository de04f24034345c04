/** The mirror's flush promise (client/mirror-watch.ts): a write survives through any leg that still holds it. */
import { expect, test } from "bun:test";
import { MirrorWatch } from "../../src/engine/client/mirror-watch.ts";

const epochs = (...pairs: [string, number][]) => new Map(pairs);

test("a write acknowledged by two legs survives the loss of one of them", () => {
  const w = new MirrorWatch();
  w.acked([["a", 1], ["b", 1]]);
  const m = w.mark(1);
  expect(w.staleDrives(m, epochs(["a", 2], ["b", 1]))).toEqual(["a"]);
  expect(w.flushed(m, epochs(["b", 1]))).toBe(false); // a taken out: b still holds it
});

test("a write whose every acknowledging leg lost it (or is gone) fails the flush once, and every flush invoked before the report", () => {
  const w = new MirrorWatch();
  w.acked([["a", 1]]); // degraded: one leg
  w.acked([["a", 1], ["b", 1]]);
  const m1 = w.mark(1);
  const m2 = w.mark(2);
  expect(w.flushed(m1, epochs(["b", 1]))).toBe(true); // a is dead now: the first write is gone
  expect(w.flushed(m2, epochs(["b", 1]))).toBe(true); // invoked before the report: fails too
  w.reported(2);
  w.acked([["b", 1]]);
  expect(w.flushed(w.mark(3), epochs(["b", 1]))).toBe(false);
});

test("runs of writes with the same acknowledgements are one run; a changed epoch starts another", () => {
  const w = new MirrorWatch();
  for (let i = 0; i < 100; i++) w.acked([["a", 1], ["b", 1]]);
  w.acked([["a", 1], ["b", 2]]);
  const m = w.mark(1);
  expect(w.staleDrives(m, epochs(["a", 1], ["b", 2])).sort()).toEqual(["b"]);
  expect(w.flushed(m, epochs(["a", 1], ["b", 2]))).toBe(false);
});

test("outdated: a drive that answered under another epoch since the acknowledgement", () => {
  const w = new MirrorWatch();
  w.seen("A", 1);
  w.seen("B", 4);
  expect(w.outdated([["A", 1], ["B", 4]])).toBe(false);
  expect(w.outdated([["C", 9]])).toBe(false); // never heard from since: nothing known against it
  w.seen("B", 5);
  expect(w.outdated([["A", 1], ["B", 4]])).toBe(true);
});
