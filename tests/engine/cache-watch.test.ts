/** CacheWatch: a flush reports the writes it covers that a lost drive cache may have taken. */
import { expect, test } from "bun:test";
import { CacheWatch } from "../../src/engine/client/cache-watch.ts";

test("no epoch change: flushes succeed", () => {
  const w = new CacheWatch();
  w.acked(7);
  w.acked(7);
  expect(w.flushed(w.mark(1), 7)).toBe(false);
  w.acked(7);
  expect(w.flushed(w.mark(2), 7)).toBe(false);
});

test("writes acknowledged under an older epoch fail the flush that covers them; once reported, later flushes pass", () => {
  const w = new CacheWatch();
  w.acked(1);
  w.acked(2); // the cache was lost between the two writes
  expect(w.flushed(w.mark(1), 2)).toBe(true);
  w.reported(1);
  w.acked(2);
  expect(w.flushed(w.mark(2), 2)).toBe(false);
});

test("the flush itself landing in a new cache reports the writes before it", () => {
  const w = new CacheWatch();
  w.acked(1);
  expect(w.flushed(w.mark(1), 2)).toBe(true);
});

test("a flush covers only the writes completed before it was invoked", () => {
  const w = new CacheWatch();
  w.acked(1);
  const m = w.mark(1);
  w.acked(2); // completed after the flush was invoked: not this flush's business
  expect(w.flushed(m, 1)).toBe(false);
  expect(w.flushed(w.mark(2), 3)).toBe(true); // the next flush, under epoch 3, covers the epoch-2 write
  w.reported(2);
  expect(w.flushed(w.mark(3), 3)).toBe(false);
});

test("two flushes in flight over the same loss both fail; one invoked after the report passes", () => {
  const w = new CacheWatch();
  w.acked(1);
  const a = w.mark(1);
  const b = w.mark(2);
  expect(w.flushed(a, 2)).toBe(true);
  expect(w.flushed(b, 2)).toBe(true); // invoked before a's failure reached the caller
  w.reported(2);
  expect(w.flushed(w.mark(3), 2)).toBe(false);
});

test("an unreported loss keeps failing flushes that cover it", () => {
  const w = new CacheWatch();
  w.acked(1);
  expect(w.flushed(w.mark(1), 2)).toBe(true); // ...but that flush failed elsewhere, unreported
  expect(w.flushed(w.mark(2), 2)).toBe(true);
});

test("a part acknowledged under an epoch the drive has left since is outdated; the current epoch is not", () => {
  // VolumeDevice writes such a write again before it completes (simulator seed 1747 with --mirror).
  const w = new CacheWatch();
  expect(w.outdated(1)).toBe(false); // nothing seen yet: nothing to compare with
  w.seen(1);
  expect(w.outdated(1)).toBe(false);
  w.seen(3); // another part, or a flush, answered after the cache was lost
  expect(w.outdated(1)).toBe(true);
  expect(w.outdated(3)).toBe(false);
});
