/** CacheWatch: a flush reports the writes it covers that a lost drive cache may have taken. */
import { expect, test } from "bun:test";
import { CacheWatch } from "../../src/engine/client/cache-watch.ts";

test("no epoch change: flushes succeed", () => {
  const w = new CacheWatch();
  w.acked(7);
  w.acked(7);
  expect(w.flushed(w.mark(), 7)).toBeNull();
  w.acked(7);
  expect(w.flushed(w.mark(), 7)).toBeNull();
});

test("writes acknowledged under an older epoch make the flush that covers them fail, once", () => {
  const w = new CacheWatch();
  w.acked(1);
  w.acked(2); // the cache was lost between the two writes
  const m = w.mark();
  expect(w.flushed(m, 2)).toContain("may be gone");
  w.acked(2);
  expect(w.flushed(w.mark(), 2)).toBeNull();
});

test("the flush itself landing in a new cache reports the writes before it", () => {
  const w = new CacheWatch();
  w.acked(1);
  expect(w.flushed(w.mark(), 2)).toContain("may be gone");
});

test("a flush covers only the writes completed before it was invoked", () => {
  const w = new CacheWatch();
  w.acked(1);
  const m = w.mark();
  w.acked(2); // completed after the flush was invoked: not this flush's business
  expect(w.flushed(m, 1)).toBeNull();
  // ...but the next flush, under epoch 3, covers the epoch-2 write.
  expect(w.flushed(w.mark(), 3)).toContain("may be gone");
  // Everything reported: a flush with nothing new to cover succeeds.
  expect(w.flushed(w.mark(), 3)).toBeNull();
});

test("a flush invoked before a loss and an older mark completing late changes nothing twice", () => {
  const w = new CacheWatch();
  w.acked(1);
  const early = w.mark();
  w.acked(1);
  const late = w.mark();
  expect(w.flushed(late, 1)).toBeNull();
  expect(w.flushed(early, 9)).toBeNull(); // already covered by the later flush
});
