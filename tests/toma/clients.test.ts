/**
 * Switch rounds and silent clients (src/toma/clients.ts, mirror-control.ts): a client that stops
 * talking is expired and, once fenced out, no longer holds the stable generation back. Real
 * targets over loopback, a TOMA with a short client timeout.
 */
import { afterEach, expect, test } from "bun:test";
import { Toma } from "../../src/toma/toma.ts";
import { FAST, MiB, adminApi, startTargets, testEnv, until } from "./harness.ts";

const env = testEnv();
let cleanup: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const f of cleanup.reverse()) await f();
  cleanup = [];
});

test("a silent client whose volume was deleted stops holding the stable generation back", async () => {
  const targets = await startTargets(env, [1, 1]);
  cleanup.push(() => targets.forEach((t) => t.kill()));
  const toma = new Toma(env, { name: "toma-test", targets: targets.map((t) => t.address), timings: FAST, mirror_timings: { client_timeout_ms: 300 } });
  toma.start();
  cleanup.push(() => toma.stop());
  const api = adminApi(toma);
  await toma.whenReady(5000);
  await until("2 member drives", () => (toma.state?.drives.length ?? 0) === 2);
  const call = async (m: string, p: string, b?: unknown) => {
    const r = await api(m, p, b);
    if (r.status >= 300) throw new Error(`${m} ${p}: ${JSON.stringify(r.body)}`);
    return r.body as Record<string, unknown>;
  };
  await call("POST", "/v1/volumes", { name: "m", capacity_bytes: MiB, raid_level: "1" });
  const { client_id } = await call("POST", "/v1/clients", { name: "gone" });
  await call("POST", `/v1/clients/${client_id}/attach/m`, {});
  // The client goes silent; its only volume is deleted; the cluster moves on.
  await call("DELETE", "/v1/volumes/m");
  await call("POST", "/v1/volumes", { name: "n", capacity_bytes: MiB, raid_level: "1" });
  const generation = toma.state!.generation;
  expect(toma.mirror.stable()).toBeLessThan(generation);
  await until("the stable generation reaches the current one", () => toma.mirror.stable() >= generation, 5000);
});
