/**
 * awaitQuorum (consensus/quorum.ts) decides a commit as soon as the answers decide it: a majority of every list
 * acknowledged, or some list can no longer get one; answers still out then are not waited for.
 */
import { expect, test } from "bun:test";
import { awaitQuorum, type QuorumOutcome } from "../../../src/toma/consensus/quorum.ts";

/** A write whose answer the test gives. */
function answer() {
  let settle!: (ok: boolean) => void;
  let fail!: (e: Error) => void;
  const p = new Promise<boolean>((res, rej) => {
    settle = res;
    fail = rej;
  });
  return { p, settle, fail };
}

const tick = () => new Promise((r) => setTimeout(r, 0));

/** Resolves to the outcome, or to "undecided" if it has not resolved after a few turns. */
async function now(q: Promise<QuorumOutcome>): Promise<QuorumOutcome | "undecided"> {
  let out: QuorumOutcome | "undecided" = "undecided";
  void q.then((x) => (out = x));
  await tick();
  return out;
}

test("committed on a majority of each list; the last drive is not waited for", async () => {
  const w = { a: answer(), b: answer(), c: answer() };
  const q = awaitQuorum(new Map(Object.entries(w).map(([k, v]) => [k, v.p])), [["a", "b", "c"]]);
  w.a.settle(true);
  expect(await now(q)).toBe("undecided");
  w.b.settle(true);
  const out = await now(q);
  expect(out).toEqual({ ok: true, acks: new Set(["a", "b"]), failed: new Set(), pending: 1 });
});

test("both lists need their majority: the old list's majority alone does not commit", async () => {
  // Old list a b c, new list a b c d: a and b are a majority of the old list, not of the new (3 of 4).
  const w = { a: answer(), b: answer(), c: answer(), d: answer() };
  const q = awaitQuorum(new Map(Object.entries(w).map(([k, v]) => [k, v.p])), [["a", "b", "c"], ["a", "b", "c", "d"]]);
  w.a.settle(true);
  w.b.settle(true);
  expect(await now(q)).toBe("undecided");
  w.d.settle(true);
  expect(await now(q)).toMatchObject({ ok: true, acks: new Set(["a", "b", "d"]), pending: 1 });
});

test("refused once a list can no longer reach a majority, with answers still out", async () => {
  const w = { a: answer(), b: answer(), c: answer(), d: answer(), e: answer() };
  const q = awaitQuorum(new Map(Object.entries(w).map(([k, v]) => [k, v.p])), [["a", "b", "c", "d", "e"]]);
  w.a.settle(true);
  w.b.settle(false);
  w.c.fail(new Error("session closed"));
  expect(await now(q)).toBe("undecided");
  w.d.settle(false);
  expect(await now(q)).toEqual({ ok: false, acks: new Set(["a"]), failed: new Set(["b", "c", "d"]), pending: 1 });
});

test("a listed drive with no write counts as failed; an empty list needs nothing", async () => {
  // c was not written at all (unreachable): a and b must both acknowledge.
  const w = { a: answer(), b: answer() };
  const q = awaitQuorum(new Map(Object.entries(w).map(([k, v]) => [k, v.p])), [["a", "b", "c"], []]);
  w.a.settle(false);
  expect(await now(q)).toMatchObject({ ok: false, pending: 1 });
  expect(await awaitQuorum(new Map(), [[]])).toEqual({ ok: true, acks: new Set(), failed: new Set(), pending: 0 });
  expect(await awaitQuorum(new Map(), [["x"]])).toMatchObject({ ok: false, pending: 0 });
});
