/**
 * The target's byte budget over real sockets: connections whose demand exceeds it all finish, in
 * turn, with no more in flight than it allows; and a LOCK waiting for its units gives its data's
 * bytes back, so that the requests that will free those units never wait for the memory it holds
 * (else a full budget of waiting writes would wait for UNLOCKs stuck behind it for ever).
 */
import { afterEach, describe, expect, test } from "bun:test";
import { type TargetHarness, memoryDrive, pattern, startTarget, uuidBytes } from "./target-fixture.ts";

let h: TargetHarness | null = null;
afterEach(() => {
  h?.stop();
  h = null;
});

const KiB = 1024;

describe("the target's payload budget", () => {
  test("three sessions writing 4 MiB each through a 1 MiB budget all finish; the budget is never exceeded", async () => {
    const d = await memoryDrive(32);
    h = await startTarget([d], { payload_budget_bytes: 1024 * KiB });
    const u = uuidBytes(d);
    const sessions = [await h.session(), await h.session(), await h.session()]; // one by one: the harness names them by count
    let peak = 0;
    const watch = setInterval(() => (peak = Math.max(peak, h!.service.payloadBytesInFlight)), 0);
    await Promise.all(
      sessions.flatMap((s, i) => Array.from({ length: 16 }, (_, k) => s.write(u, (i * 16 + k) * 256 * KiB, pattern(k, 256 * KiB), false))),
    );
    clearInterval(watch);
    expect(peak).toBeLessThanOrEqual(1024 * KiB);
    expect(h.service.payloadBytesInFlight).toBe(0);
    const back = new Uint8Array(256 * KiB);
    await sessions[0]!.read(u, 0, back);
    expect(back).toEqual(pattern(0, 256 * KiB));
  });

  test("writes waiting for a lock give their bytes back: the holder's own write and UNLOCK still get through", async () => {
    const d = await memoryDrive(32);
    h = await startTarget([d], { payload_budget_bytes: 1024 * KiB });
    const u = uuidBytes(d);
    const holder = await h.session({ client_id: 1 });
    // Four clients (an UNLOCK withdraws its own client's other waiting requests for the range).
    const waiters = [];
    for (const client_id of [2, 3, 4, 5]) waiters.push(await h.session({ client_id }));
    await holder.lock(u, 0, 64 * KiB);
    // Four 256 KiB writes that need the held unit: they wait inside the target, and without
    // giving their bytes back they would hold the whole budget.
    const waiting = waiters.map((w, k) => w.write(u, k * 16 * KiB, pattern(k, 256 * KiB), false, { lock: true }));
    // A probe behind each on the same connection: its answer proves the target has started it
    // (and so parked it: the unit is held).
    await Promise.all(waiters.map((w) => w.listDrives()));
    // A write of the holder needs budget; its UNLOCK comes after it on the same connection.
    await holder.write(u, 8 * 1024 * KiB, pattern(9, 512 * KiB), false);
    await holder.unlock(u, 0, 64 * KiB);
    // Each waiting write takes the lock in turn (they overlap); unlocked after each.
    for (const [k, w] of waiting.entries()) {
      await w;
      await waiters[k]!.unlock(u, 0, 512 * KiB);
    }
    expect(h.service.payloadBytesInFlight).toBe(0);
  });
});
