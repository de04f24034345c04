/** The client registry: who holds the stable generation back, and when a client is forgotten. */
import { expect, test } from "bun:test";
import { realEnv } from "../../src/engine/runtime/real-env.ts";
import { ClientRegistry } from "../../src/toma/clients.ts";
import { quietLogger } from "./harness.ts";

const registry = (client_timeout_ms = 60_000) =>
  new ClientRegistry(realEnv("clients-test", quietLogger), { client_timeout_ms, watch_hold_ms: 1000 });

test("a client that never attached a volume does not hold the stable generation back", () => {
  const r = registry();
  const a = r.register("a", 3);
  a.volumes.add("m");
  r.register("idle", 3); // registered, its attach failed (no such volume): it never acks
  expect(r.stable(4)).toBe(3);
  r.ack(a, 4);
  expect(r.stable(4)).toBe(4);
});

test("an expired client with no drive to fence it out of is forgotten at once", async () => {
  const r = registry(0);
  const a = r.register("a", 3);
  a.volumes.add("m");
  const idle = r.register("idle", 3);
  await Bun.sleep(2);
  r.ack(a, 5);
  // Both are silent past the timeout: `a` must be fenced out of its drives first, `idle` has none.
  expect(r.expireSilent((c) => (c === a ? ["A"] : []))).toEqual([a, idle]);
  expect(r.all()).toEqual([a]);
  expect(r.live(idle.id)).toBeUndefined();
  r.fenced(a, "A");
  expect(r.all()).toEqual([]);
  expect(r.stable(6)).toBe(6);
});

test("an expired client that attached but has no drive left is forgotten too (it held rounds back for good)", async () => {
  const r = registry(0);
  const gone = r.register("gone", 3);
  gone.volumes.add("deleted-volume");
  await Bun.sleep(2);
  r.expireSilent(() => []);
  expect(r.all()).toEqual([]);
  expect(r.stable(9)).toBe(9);
});
