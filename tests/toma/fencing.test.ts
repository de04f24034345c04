/** FenceSync: which tables the drives are sent, and when a drive counts as confirmed. */
import { expect, test } from "bun:test";
import { realEnv } from "../../src/engine/runtime/real-env.ts";
import type { TargetSession } from "../../src/engine/wire/session-api.ts";
import { ClientRegistry } from "../../src/toma/clients.ts";
import { type FenceEntry, FenceSync } from "../../src/toma/fencing.ts";
import { quietLogger } from "./harness.ts";

test("the drives of a volume whose last client expired keep a confirmed empty table (stale-lock recovery can be retried)", async () => {
  const env = realEnv("fence-test", quietLogger);
  const clients = new ClientRegistry(env, { client_timeout_ms: 0, watch_hold_ms: 1000 });
  const session = {} as TargetSession;
  const pushed: { drive: string; table: FenceEntry[] }[] = [];
  const fences = new FenceSync({
    clients,
    drivesOfVolume: (v) => (v === "m" ? ["A", "B"] : []),
    volumeDrives: () => ["A", "B"],
    sessionOf: () => session,
    push: async (_s, drive, table) => {
      pushed.push({ drive, table });
    },
    onError: (d, e) => {
      throw new Error(`push to ${d} failed: ${e}`);
    },
  });
  const c = clients.register("client-1", 5);
  c.volumes.add("m");
  await fences.sync();
  expect(fences.inSync("A") && fences.inSync("B")).toBe(true);
  expect(fences.tableFor("A")).toEqual([{ client_id: c.id, min_generation: 5 }]);

  // It dies: expired, then fenced out of both drives, then forgotten by the registry.
  await Bun.sleep(2);
  expect(clients.expireSilent(() => ["A", "B"])).toEqual([c]);
  fences.forget();
  await fences.sync();
  expect(clients.all()).toEqual([]);
  expect(pushed.slice(-2).map((p) => p.table)).toEqual([[], []]);

  // Every later maintenance pass forgets the confirmations and syncs again: the drives must
  // still be confirmed (with the empty table), or a stale-lock recovery that was skipped or
  // interrupted in the pass that fenced the client out is never tried again.
  fences.forget();
  await fences.sync();
  expect(fences.inSync("A")).toBe(true);
  expect(fences.inSync("B")).toBe(true);
  expect(fences.tableFor("A")).toEqual([]);
});
