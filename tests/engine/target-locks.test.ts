/**
 * The lock table of a drive over real sockets: LOCK is all or nothing over 64 KiB units and waits
 * inside the target; waiters are served in order among those that overlap; UNLOCK is idempotent,
 * withdraws its owner's requests still waiting for the range and, from a TOMA, frees a dead
 * client's locks; LOCK_LIST shows who holds what; and a READ with
 * TEST_LOCK sees a lock held now or taken during the read.
 *
 * "Still waiting" is established without timing: the waiting LOCK is sent before a probe request
 * on the same connection, whose answer proves the target has started (and so decided) the LOCK;
 * LOCK_LIST then shows it holds nothing.
 */
import { afterEach, describe, expect, test } from "bun:test";
import { formatDrive } from "../../src/engine/drive/format.ts";
import { openDrive } from "../../src/engine/drive/formatted-drive.ts";
import { Flag, LOCK_UNIT_BYTES, MAX_LOCK_BYTES, Op, Status } from "../../src/engine/wire/header.ts";
import type { Session } from "../../src/engine/wire/session.ts";
import { SessionClosedError, TargetError } from "../../src/engine/wire/session-api.ts";
import { openSession } from "../../src/engine/wire/session.ts";
import { rawPeer } from "./raw-peer.ts";
import { type TargetHarness, dataBytes, memoryDrive, pattern, randomUuidString, startTarget, uuidBytes, GatedStore, until, statusOf } from "./target-fixture.ts";

const U = LOCK_UNIT_BYTES;

let h: TargetHarness | null = null;
afterEach(() => {
  h?.stop();
  h = null;
});

/** A promise with a flag that says whether it has settled yet. */
function watch<T>(p: Promise<T>): { p: Promise<T>; done: boolean; failed: unknown } {
  const w = { p, done: false, failed: undefined as unknown };
  p.then(
    () => {
      w.done = true;
    },
    (e) => {
      w.done = true;
      w.failed = e;
    },
  );
  return w;
}

/** Proves every request sent on s before this call has been started by the target. */
async function probe(s: Session, u: Uint8Array): Promise<void> {
  await s.dirtyGet(u, 0, 0);
}


async function setup(opts: { max_inflight_per_conn?: number } = {}) {
  const d = await memoryDrive();
  h = await startTarget([d], opts);
  const u = uuidBytes(d);
  const a = await h.session({ client_id: 1 });
  const b = await h.session({ client_id: 2 });
  const c = await h.session({ client_id: 3 });
  const toma = await h.toma();
  return { d, u, a, b, c, toma, held: () => toma.lockList(u) };
}

/** A target whose drive's reads wait while `store.gated`, and the sessions of clients 1 and 2. */
async function gatedSetup() {
  const store = new GatedStore(8 * 1024 * 1024, (op) => op === "read");
  await formatDrive(store, { drive_uuid: randomUuidString(), extent_size_bytes: 1024 * 1024 });
  const d = await openDrive(store, "gated");
  h = await startTarget([d]);
  const u = uuidBytes(d);
  return { store, u, a: await h.session({ client_id: 1 }), b: await h.session({ client_id: 2 }) };
}

describe("LOCK and UNLOCK", () => {
  test("a held unit excludes others until unlocked; the waiter then gets it", async () => {
    const { u, a, b, held } = await setup();
    await a.lock(u, 0, 4096);
    expect(await held()).toEqual([{ client_id: 1, offset: 0, length: U }]);
    const wb = watch(b.lock(u, U - 1, 1)); // the last byte of unit 0
    await probe(b, u);
    expect(wb.done).toBe(false);
    expect(await held()).toEqual([{ client_id: 1, offset: 0, length: U }]);
    await a.unlock(u, 0, 4096);
    await wb.p;
    expect(await held()).toEqual([{ client_id: 2, offset: 0, length: U }]);
  });

  test("the same owner waits for its own lock; its UNLOCK of the range withdraws that request", async () => {
    const { u, a, held } = await setup();
    await a.lock(u, 3 * U, U);
    const again = watch(a.lock(u, 3 * U + 100, 10));
    await probe(a, u);
    expect(again.done).toBe(false);
    // A client unlocks a unit only once it wants nothing of it: a request of its own still
    // waiting for it is one it gave up on, and must not be granted after the UNLOCK.
    await a.unlock(u, 3 * U, U);
    expect(await statusOf(again.p)).toBe(Status.BUSY);
    expect(await held()).toEqual([]);
    await a.lock(u, 3 * U, U); // the next LOCK of the unit is served at once
    expect(await held()).toEqual([{ client_id: 1, offset: 3 * U, length: U }]);
  });

  test("a LOCK given up while it waits, then unlocked, is never granted: the unit is free once its holder unlocks", async () => {
    // A mirror client's LOCK waits on a leg behind another client's lock; a newer topology takes
    // the leg out, the client gives the LOCK up and unlocks the unit at once (its UNLOCK finds
    // nothing held yet). Granted later, the LOCK would hold the unit with nobody to free it, and
    // the client's own next write of the unit would wait for it for ever (simulator seed 353).
    const { u, a, b, c, held } = await setup();
    await a.lock(u, 0, U);
    await c.lock(u, U, U);
    const given_up = watch(b.lock(u, 5120, 1536));
    const write_given_up = watch(b.write(u, U, pattern(3, 4096), false, { lock: true, intent: true }));
    await probe(b, u);
    expect(write_given_up.done).toBe(false);
    expect(given_up.done).toBe(false);
    await b.unlock(u, 0, U); // the unit as a whole, as an owed unlock is paid
    await b.unlock(u, U, 4096);
    expect(await statusOf(given_up.p)).toBe(Status.BUSY);
    expect(await statusOf(write_given_up.p)).toBe(Status.BUSY);
    await a.unlock(u, 0, U);
    await c.unlock(u, U, U);
    expect(await held()).toEqual([]);
    const got = new Uint8Array(4096);
    await a.read(u, U, got);
    expect(got).toEqual(new Uint8Array(4096)); // the withdrawn write wrote nothing
    await b.lock(u, 0, 2 * U); // served at once: nothing of b's is left behind
    expect(await held()).toEqual([{ client_id: 2, offset: 0, length: 2 * U }]);
  });

  test("an UNLOCK withdraws only its owner's waiting requests that want a unit of its range", async () => {
    const { u, a, b, c, held } = await setup();
    await a.lock(u, 0, 2 * U);
    const bOther = watch(b.lock(u, U, U)); // b, another unit
    const cSame = watch(c.lock(u, 0, U)); // another client, the same unit
    await probe(b, u);
    await probe(c, u);
    await b.unlock(u, 0, U);
    await probe(b, u);
    expect(bOther.done).toBe(false);
    expect(cSame.done).toBe(false);
    await a.unlock(u, 0, 2 * U);
    await bOther.p;
    await cSame.p;
    expect(await held()).toEqual([
      { client_id: 3, offset: 0, length: U },
      { client_id: 2, offset: U, length: U },
    ]);
  });

  test("a TOMA's UNLOCK for a client withdraws that client's waiting requests too", async () => {
    const { u, a, b, toma, held } = await setup();
    await a.lock(u, 0, U);
    const wb = watch(b.lock(u, 0, U));
    await probe(b, u);
    await toma.unlockFor(u, 0, U, 2);
    expect(await statusOf(wb.p)).toBe(Status.BUSY);
    await a.unlock(u, 0, U);
    expect(await held()).toEqual([]);
  });

  test("all or nothing: a request waiting for one unit holds none of the others", async () => {
    const { u, a, b, c, held } = await setup();
    await a.lock(u, 2 * U, U); // unit 2
    const wb = watch(b.lock(u, 0, 3 * U)); // units 0..2
    await probe(b, u);
    expect(wb.done).toBe(false);
    expect(await held()).toEqual([{ client_id: 1, offset: 2 * U, length: U }]);
    // A disjoint range is not held back by the waiter.
    await c.lock(u, 5 * U, 2 * U);
    await a.unlock(u, 2 * U, U);
    await wb.p;
    expect(await held()).toEqual([
      { client_id: 2, offset: 0, length: 3 * U },
      { client_id: 3, offset: 5 * U, length: 2 * U },
    ]);
  });

  test("waiters are served in order: a later request never overtakes an earlier one it overlaps", async () => {
    const { u, a, b, c, held } = await setup();
    await a.lock(u, U, U); // unit 1
    const wb = watch(b.lock(u, 0, 2 * U)); // units 0..1: waits for a
    await probe(b, u);
    const wc = watch(c.lock(u, 0, 1)); // unit 0 is free, but b asked first
    await probe(c, u);
    expect([wb.done, wc.done]).toEqual([false, false]);
    expect(await held()).toEqual([{ client_id: 1, offset: U, length: U }]);
    await a.unlock(u, U, U);
    await wb.p;
    await probe(c, u);
    expect(wc.done).toBe(false);
    await b.unlock(u, 0, 2 * U);
    await wc.p;
    expect(await held()).toEqual([{ client_id: 3, offset: 0, length: U }]);
  });

  test("three waiters on one unit are granted in arrival order", async () => {
    const d = await memoryDrive();
    h = await startTarget([d]);
    const u = uuidBytes(d);
    const owner = await h.session({ client_id: 100 });
    await owner.lock(u, 0, U);
    const order: number[] = [];
    const waiters: { s: Session; w: ReturnType<typeof watch> }[] = [];
    for (const id of [11, 12, 13]) {
      const s = await h.session({ client_id: id });
      const w = watch(s.lock(u, 0, U).then(() => order.push(id)));
      await probe(s, u);
      waiters.push({ s, w });
    }
    await owner.unlock(u, 0, U);
    for (const { s, w } of waiters) {
      await w.p;
      await s.unlock(u, 0, U);
    }
    expect(order).toEqual([11, 12, 13]);
  });

  test("UNLOCK is idempotent and leaves other clients' units alone", async () => {
    const { u, a, b, held } = await setup();
    await a.lock(u, 0, U);
    await b.lock(u, U, U);
    await a.unlock(u, 0, 2 * U); // names b's unit too
    await a.unlock(u, 0, 2 * U); // again: nothing held, still OK
    await a.unlock(u, 10 * U, 1); // never locked
    expect(await held()).toEqual([{ client_id: 2, offset: U, length: U }]);
  });

  test("a TOMA frees a dead client's lock; the client waiting for it is then served", async () => {
    const { u, b, toma, held } = await setup();
    const dying = await h!.session({ client_id: 7 });
    await dying.lock(u, 4 * U, 2 * U);
    dying.close();
    const wb = watch(b.lock(u, 5 * U, 1));
    await probe(b, u);
    expect(wb.done).toBe(false);
    // The lock belongs to the client, not to its connection: it outlives it.
    expect(await held()).toEqual([{ client_id: 7, offset: 4 * U, length: 2 * U }]);
    await toma.unlockFor(u, 4 * U, 2 * U, 7);
    await wb.p;
    expect(await held()).toEqual([{ client_id: 2, offset: 5 * U, length: U }]);
  });

  test("LOCK_LIST merges consecutive units of one owner and sorts by offset", async () => {
    const { u, a, b, held } = await setup();
    await b.lock(u, 10 * U, U);
    await a.lock(u, 0, U);
    await a.lock(u, U, 2 * U);
    await a.lock(u, 3 * U + 7, 1);
    await b.lock(u, 4 * U, U);
    expect(await held()).toEqual([
      { client_id: 1, offset: 0, length: 4 * U },
      { client_id: 2, offset: 4 * U, length: U },
      { client_id: 2, offset: 10 * U, length: U },
    ]);
  });

  test("LOCK with TEST_LOCK never waits: LOCKED while a unit is held or waited for, else taken", async () => {
    const { u, a, b, c, held } = await setup();
    await a.lock(u, 0, U);
    expect(await b.tryLock(u, 0, 2 * U)).toBe(false);
    expect(await held()).toEqual([{ client_id: 1, offset: 0, length: U }]);
    // c waits for units 0 and 1; unit 1 is free, but c wants it first.
    const wc = watch(c.lock(u, 0, U * 2));
    await probe(c, u);
    expect(await b.tryLock(u, U, U)).toBe(false);
    expect(await b.tryLock(u, 5 * U, U)).toBe(true);
    expect(await held()).toEqual([
      { client_id: 1, offset: 0, length: U },
      { client_id: 2, offset: 5 * U, length: U },
    ]);
    expect(wc.done).toBe(false);
  });

  test("a zero-length LOCK is OK and takes nothing", async () => {
    const { u, a, held } = await setup();
    await a.lock(u, 5 * U, 0);
    expect(await held()).toEqual([]);
  });

  test("a waiting LOCK gives up when its connection ends; the same client reconnects at once", async () => {
    const d = await memoryDrive();
    h = await startTarget([d]);
    const u = uuidBytes(d);
    const a = await h.session({ client_id: 1 });
    await a.lock(u, 0, U);
    const hello = { version: 1 as const, role: "client" as const, name: "b" };
    const b = await openSession(h.env, h.address, hello, { client_id: 2 });
    const wb = watch(b.lock(u, 0, U));
    await probe(b, u);
    // The client reconnects (supersede): the old connection's waiting LOCK must not hold up the
    // new HELLO, which waits for the old connection's requests to finish.
    const b2 = await openSession(h.env, h.address, hello, { client_id: 2 });
    await wb.p.catch(() => {});
    expect(wb.failed).toBeInstanceOf(SessionClosedError);
    const toma = await h.toma();
    expect(await toma.lockList(u)).toEqual([{ client_id: 1, offset: 0, length: U }]);
    await a.unlock(u, 0, U);
    expect(await toma.lockList(u)).toEqual([]);
    await b2.lock(u, 0, U);
    b2.close();
  });

  test("waiting LOCKs do not hold in-flight slots: other requests of the connection still run", async () => {
    const { u, a } = await setup({ max_inflight_per_conn: 2 });
    // Neither the session's two slots nor the target's two are taken by waiting LOCKs.
    const b = await h!.session({ client_id: 9, max_inflight: 2 });
    await a.lock(u, 0, 8 * U);
    const waits = [0, 1, 2, 3, 4, 5].map((i) => watch(b.lock(u, i * U, U)));
    // Six LOCKs wait on a connection with two slots; its reads and writes are still served.
    await b.write(u, 20 * U, pattern(3, 4096), false);
    const got = new Uint8Array(4096);
    await b.read(u, 20 * U, got);
    expect(got).toEqual(pattern(3, 4096));
    expect(waits.some((w) => w.done)).toBe(false);
    await a.unlock(u, 0, 8 * U);
    await Promise.all(waits.map((w) => w.p));
  });

  test("bad ranges: beyond the data area is OUT_OF_RANGE, above 64 MiB is INVALID; the connection stays", async () => {
    const { d, u, a, held } = await setup();
    const n = dataBytes(d);
    expect(await statusOf(a.lock(u, n, 1))).toBe(Status.OUT_OF_RANGE);
    expect(await statusOf(a.lock(u, n - U, U + 1))).toBe(Status.OUT_OF_RANGE);
    expect(await statusOf(a.unlock(u, n + 1, 0))).toBe(Status.OUT_OF_RANGE);
    await expect(a.lock(u, 0, MAX_LOCK_BYTES + 1)).rejects.toBeInstanceOf(RangeError); // caught locally
    const raw = await rawPeer(h!.env, h!.address, "client");
    const big = await raw.request({ opcode: Op.LOCK, drive_uuid: u, offset: 0, length: MAX_LOCK_BYTES + 1 });
    expect(big.h.status).toBe(Status.INVALID);
    expect(big.error).toContain("at most");
    const noDrive = await raw.request({ opcode: Op.LOCK, drive_uuid: new Uint8Array(16).fill(9), offset: 0, length: 1 });
    expect(noDrive.h.status).toBe(Status.NO_SUCH_DRIVE);
    const withPayload = await raw.request({ opcode: Op.LOCK, drive_uuid: u, offset: 0, length: 1, payload_len: 3 }, new Uint8Array(3));
    expect(withPayload.h.status).toBe(Status.INVALID);
    expect(await held()).toEqual([]);
    await a.lock(u, 0, 1);
    raw.close();
  });

  test("a removed drive fails its waiting LOCKs with NO_SUCH_DRIVE", async () => {
    const { d, u, a, b } = await setup();
    await a.lock(u, 0, U);
    const wb = watch(b.lock(u, 0, U));
    await probe(b, u);
    h!.service.removeDrive(d.info.drive_uuid);
    await wb.p.catch(() => {});
    expect((wb.failed as TargetError).status).toBe(Status.NO_SUCH_DRIVE);
  });
});



describe("writes that carry the LOCK flag", () => {
  test("a WRITE with LOCK takes the lock, then writes; the lock stays held until UNLOCK", async () => {
    const { u, a, b, held } = await setup();
    await a.write(u, 2 * U, pattern(1, 4096), false, { lock: true, intent: true });
    expect(await held()).toEqual([{ client_id: 1, offset: 2 * U, length: U }]);
    const got = new Uint8Array(4096);
    await b.read(u, 2 * U, got);
    expect(got).toEqual(pattern(1, 4096));
    expect(await statusOf(b.readTestLock(u, 2 * U, got))).toBe(Status.LOCKED);
    await a.unlock(u, 2 * U, 4096);
    expect(await held()).toEqual([]);
  });

  test("a WRITE with LOCK on a held unit waits, writing nothing, until the holder unlocks", async () => {
    const { u, a, b, held } = await setup();
    await a.lock(u, 0, 4096);
    await a.write(u, 0, pattern(1, 4096), false);
    const wb = watch(b.write(u, 0, pattern(2, 4096), false, { lock: true }));
    const wz = watch(b.writeZeroes(u, U, 4096, false, { lock: true }));
    await probe(b, u);
    expect(wb.done).toBe(false);
    const got = new Uint8Array(4096);
    await a.read(u, 0, got);
    expect(got).toEqual(pattern(1, 4096)); // b's write has not run
    await a.unlock(u, 0, 4096);
    await wb.p;
    await wz.p;
    await a.read(u, 0, got);
    expect(got).toEqual(pattern(2, 4096));
    expect(await held()).toEqual([{ client_id: 2, offset: 0, length: 2 * U }]);
  });

  test("waiting writes with LOCK do not hold in-flight slots", async () => {
    const { u, a } = await setup({ max_inflight_per_conn: 2 });
    const b = await h!.session({ client_id: 9, max_inflight: 2 });
    await a.lock(u, 0, 8 * U);
    const waits = [0, 1, 2, 3, 4, 5].map((i) => watch(b.write(u, i * U, pattern(i, 4096), false, { lock: true })));
    await b.write(u, 20 * U, pattern(3, 4096), false);
    expect(waits.some((w) => w.done)).toBe(false);
    await a.unlock(u, 0, 8 * U);
    await Promise.all(waits.map((w) => w.p));
  });

  test("LOCK on anything but WRITE, WRITE_ZEROES and TRIM, or over more than 64 MiB, is INVALID and takes nothing", async () => {
    const { u, held } = await setup();
    const raw = await rawPeer(h!.env, h!.address, "client");
    const answers = await Promise.all([
      raw.request({ opcode: Op.READ, flags: Flag.LOCK, drive_uuid: u, length: 4 }),
      raw.request({ opcode: Op.FLUSH, flags: Flag.LOCK, drive_uuid: u }),
      raw.request({ opcode: Op.UNLOCK, flags: Flag.LOCK, drive_uuid: u, length: 4 }),
      raw.request({ opcode: Op.TRIM, flags: Flag.LOCK, drive_uuid: u, length: MAX_LOCK_BYTES + U }),
    ]);
    expect(answers.map((x) => x.h.status)).toEqual([Status.INVALID, Status.INVALID, Status.INVALID, Status.INVALID]);
    expect(answers[0]!.error).toContain("LOCK flag");
    expect(answers[3]!.error).toContain("at most");
    expect(await held()).toEqual([]);
    expect(raw.closed).toBe(false);
    raw.close();
  });
});

describe("READ with TEST_LOCK", () => {
  test("LOCKED without data while a unit of the range is locked; data otherwise", async () => {
    const { u, a, b } = await setup();
    await b.write(u, U - 512, pattern(1, 1024), true); // spans units 0 and 1
    await a.lock(u, U, 1); // unit 1
    const got = new Uint8Array(1024);
    const e = await b.readTestLock(u, U - 512, got).catch((x) => x);
    expect(e).toBeInstanceOf(TargetError);
    expect((e as TargetError).status).toBe(Status.LOCKED);
    expect((e as TargetError).message).toContain("is locked");
    // Unit 0 alone is not locked.
    const half = new Uint8Array(512);
    await b.readTestLock(u, U - 512, half);
    expect(half).toEqual(pattern(1, 1024).subarray(0, 512));
    await a.unlock(u, U, 1);
    await b.readTestLock(u, U - 512, got);
    expect(got).toEqual(pattern(1, 1024));
    // A plain READ never looks at locks.
    await a.lock(u, 0, 2 * U);
    await b.read(u, U - 512, got);
    expect(got).toEqual(pattern(1, 1024));
  });

  test("a lock taken and released while the read was on the drive makes it LOCKED", async () => {
    const { store, u, a, b } = await gatedSetup();
    await a.write(u, 2 * U, pattern(2, 4096), true);

    store.gated = true;
    const r = watch(b.readTestLock(u, 2 * U, new Uint8Array(4096)));
    await until(() => store.blocked === 1);
    await a.lock(u, 2 * U, 1);
    await a.write(u, 2 * U, pattern(3, 4096), true); // a writer that came and went
    await a.unlock(u, 2 * U, 1);
    store.open();
    await r.p.catch(() => {});
    expect((r.failed as TargetError).status).toBe(Status.LOCKED);
    expect((r.failed as TargetError).message).toContain("was locked while being read");

    // Read again: now it succeeds with the new data.
    const got = new Uint8Array(4096);
    await b.readTestLock(u, 2 * U, got);
    expect(got).toEqual(pattern(3, 4096));
  });

  test("a lock taken during the read and still held makes it LOCKED; one elsewhere does not", async () => {
    const { store, u, a, b } = await gatedSetup();
    await a.write(u, 0, pattern(4, 8192), true);

    store.gated = true;
    const held = watch(b.readTestLock(u, 0, new Uint8Array(4096)));
    const other = watch(b.readTestLock(u, 4 * U, new Uint8Array(4096)));
    await until(() => store.blocked === 2);
    await a.lock(u, 0, 1);
    await a.lock(u, 5 * U, 1); // not a unit the second read touches
    store.open();
    await held.p.catch(() => {});
    expect((held.failed as TargetError).status).toBe(Status.LOCKED);
    await other.p;
  });

  test("TEST_LOCK on anything but READ and LOCK, and DIRTY on READ, are INVALID", async () => {
    const { u } = await setup();
    const raw = await rawPeer(h!.env, h!.address, "client");
    const answers = await Promise.all([
      raw.request({ opcode: Op.WRITE, flags: Flag.TEST_LOCK, drive_uuid: u, length: 4, payload_len: 4 }, new Uint8Array(4)),
      raw.request({ opcode: Op.UNLOCK, flags: Flag.TEST_LOCK, drive_uuid: u, length: 4 }),
      raw.request({ opcode: Op.READ, flags: Flag.DIRTY, drive_uuid: u, length: 4 }),
      raw.request({ opcode: Op.FLUSH, flags: Flag.DIRTY, drive_uuid: u }),
    ]);
    expect(answers.map((x) => x.h.status)).toEqual([Status.INVALID, Status.INVALID, Status.INVALID, Status.INVALID]);
    expect(answers[0]!.error).toContain("TEST_LOCK");
    expect(answers[2]!.error).toContain("DIRTY");
    const ok = await raw.request({ opcode: Op.READ, flags: Flag.TEST_LOCK, drive_uuid: u, length: 4 });
    expect(ok.h.status).toBe(Status.OK);
    expect(ok.body.length).toBe(4);
    expect(raw.closed).toBe(false);
    raw.close();
  });
});

describe("the session keeps a requester's LOCKs and UNLOCKs of a unit in order", () => {
  test("an UNLOCK withdraws the LOCKs of its range still queued in the session", async () => {
    const { u, a, held } = await setup();
    const b = await h!.session({ client_id: 2, max_inflight_locks: 1 });
    await a.lock(u, 0, 2 * U);
    const first = watch(b.lock(u, U, U)); // on the wire, waiting at the target
    const queued = watch(b.lock(u, 0, U)); // queued in the session: the one lock slot is taken
    await probe(b, u);
    // Given up (its leg was taken out), then unlocked: it must never reach the target now.
    await b.unlock(u, 0, U);
    expect(await statusOf(queued.p)).toBe(Status.BUSY);
    expect(first.done).toBe(false);
    await a.unlock(u, 0, 2 * U);
    await first.p;
    await probe(b, u);
    expect(await held()).toEqual([{ client_id: 2, offset: U, length: U }]);
  });

  test("a LOCK never overtakes an UNLOCK of the same requester queued before it", async () => {
    const { store, u, b } = await gatedSetup();
    const toma = await h!.toma();
    const c = await h!.session({ client_id: 2, max_inflight: 1 });
    await c.lock(u, 0, U); // an owed unlock: c holds unit 0 from a write whose answer was lost
    store.gated = true;
    const got = new Uint8Array(512);
    const read = c.read(u, 2 * U, got); // takes c's one slot
    await until(() => store.blocked > 0);
    const unlocked = watch(c.unlock(u, 0, U)); // queued behind the read
    const relock = watch(c.lock(u, 0, U)); // the unit's next write of ours locks it again
    await probe(b, u);
    expect(unlocked.done).toBe(false);
    store.open();
    await read;
    await unlocked.p;
    // Sent ahead of the UNLOCK it would have waited for c's own lock, then been withdrawn by it.
    await relock.p;
    expect(await toma.lockList(u)).toEqual([{ client_id: 2, offset: 0, length: U }]);
  });
});
