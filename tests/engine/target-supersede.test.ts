/**
 * A requester that reconnects supersedes its older connection: the old one is closed, and the new
 * HELLO is answered only after every request the old one had started has finished. This is what
 * keeps a retried write from being overtaken by its own first attempt (simulator seed 362).
 */
import { afterEach, expect, test } from "bun:test";
import { formatDrive } from "../../src/engine/drive/format.ts";
import { openDrive } from "../../src/engine/drive/formatted-drive.ts";
import { openSession } from "../../src/engine/wire/session.ts";
import { type TargetHarness, memoryDrive, pattern, randomUuidString, startTarget, uuidBytes, GatedStore, until } from "./target-fixture.ts";


let h: TargetHarness | null = null;
afterEach(() => {
  h?.stop();
  h = null;
});


test("a second HELLO of the same client closes the first connection and waits for its writes", async () => {
  const store = new GatedStore(8 * 1024 * 1024);
  await formatDrive(store, { drive_uuid: randomUuidString(), extent_size_bytes: 1024 * 1024 });
  const d = await openDrive(store, "gated");
  h = await startTarget([d]);
  const hello = { version: 1 as const, role: "client" as const, name: "c1" };
  const u = uuidBytes(d);

  const first = await openSession(h.env, h.address, hello);
  store.gated = true;
  const oldWrite = first.write(u, 0, pattern(1, 4096), false).catch((e) => e);
  await until(() => store.blocked === 1);

  let secondReady = false;
  const second = openSession(h.env, h.address, hello).then((s) => {
    secondReady = true;
    return s;
  });
  await until(() => first.closed);
  // The old write is still executing on the drive: the new connection must not be served yet.
  await Bun.sleep(50);
  expect(secondReady).toBe(false);

  store.open();
  const s2 = await second;
  expect(await oldWrite).toBeInstanceOf(Error); // its connection was closed under it
  await s2.write(u, 0, pattern(2, 4096), true);
  const got = new Uint8Array(4096);
  await d.data.read(0, got);
  expect(got).toEqual(pattern(2, 4096));
  s2.close();
});

test("different clients and admin connections do not supersede one another", async () => {
  h = await startTarget([await memoryDrive()]);
  const a = await openSession(h.env, h.address, { version: 1, role: "client", name: "a" });
  const b = await openSession(h.env, h.address, { version: 1, role: "client", name: "b" });
  const x = await openSession(h.env, h.address, { version: 1, role: "admin", name: "cli" });
  const y = await openSession(h.env, h.address, { version: 1, role: "admin", name: "cli" });
  await Promise.all([a.listDrives(), b.listDrives(), x.listDrives(), y.listDrives()]);
  expect([a.closed, b.closed, x.closed, y.closed]).toEqual([false, false, false, false]);
  for (const s of [a, b, x, y]) s.close();
});
