/** The stale-generation rule of one writer's own records (src/debugfmt/order.ts). */
import { expect, test } from "bun:test";
import { GenerationOrder } from "../../src/debugfmt/order.ts";

const V = "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9";
const rec = (client_id: number, generation: number, seq: number, volume_uuid = V) => ({ client_id, generation, seq, volume_uuid });

test("seq and generation growing together: nothing is stale", () => {
  const o = new GenerationOrder();
  for (const [g, s] of [[3, 1], [3, 2], [4, 3], [4, 4], [7, 5]] as const) o.add(rec(1, g, s));
  expect(o.finish()).toEqual([]);
  expect(o.stale(rec(1, 3, 2))).toBeNull();
});

test("a lower generation after a higher one: the writes above the newer generation's first seq are stale", () => {
  const o = new GenerationOrder();
  for (const [g, s] of [[5, 1], [5, 2], [6, 3], [5, 4], [6, 5], [5, 6]] as const) o.add(rec(1, g, s));
  expect(o.finish()).toEqual([{ client_id: 1, volume_uuid: V, generation: 5, after_seq: 3, newer_generation: 6 }]);
  expect(o.stale(rec(1, 5, 2))).toBeNull(); // before generation 6 was first used: fine
  expect(o.stale(rec(1, 5, 4))).not.toBeNull();
  expect(o.stale(rec(1, 5, 6))).not.toBeNull();
  expect(o.stale(rec(1, 6, 5))).toBeNull();
});

test("the newer generation nearest in seq is named; three generations", () => {
  const o = new GenerationOrder();
  for (const [g, s] of [[1, 1], [3, 2], [2, 3], [1, 4]] as const) o.add(rec(9, g, s));
  const rules = o.finish();
  expect(rules).toContainEqual({ client_id: 9, volume_uuid: V, generation: 2, after_seq: 2, newer_generation: 3 });
  expect(rules).toContainEqual({ client_id: 9, volume_uuid: V, generation: 1, after_seq: 2, newer_generation: 3 });
});

test("other clients and other volumes are separate writers (their seqs are their own)", () => {
  const o = new GenerationOrder();
  o.add(rec(1, 5, 10));
  o.add(rec(2, 4, 20)); // another client with an older generation and a higher seq: not stale
  o.add(rec(1, 4, 30, "11111111-2222-4333-8444-555555555555")); // the same client on another volume
  expect(o.finish()).toEqual([]);
});
