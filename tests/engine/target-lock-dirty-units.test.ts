/**
 * The target's lock table and dirty bits on their own, for what is too big to reach over a
 * socket with a test drive: the cap on locked units, bitmap ranges spanning two 4 KiB blocks
 * (32 GiB of data apart), and the coalescing of bitmap writes of one block.
 */
import { describe, expect, test } from "bun:test";
import type { FormattedDrive } from "../../src/engine/drive/formatted-api.ts";
import { DirtyBits } from "../../src/engine/target/dirty.ts";
import { LockTable, MAX_LOCKED_UNITS } from "../../src/engine/target/locks.ts";
import { RequestError } from "../../src/engine/target/reply.ts";
import { Status } from "../../src/engine/wire/header.ts";

const never = new AbortController().signal;

describe("LockTable", () => {
  test("a drive holds at most MAX_LOCKED_UNITS units; beyond that LOCK is BUSY, at once or when granted", async () => {
    const t = new LockTable();
    // Units 0 and 2..MAX-1: one short of the cap, unit 1 free.
    expect(t.lock(1, 0, 0, never)).toBeNull();
    expect(t.lock(1, 2, MAX_LOCKED_UNITS - 1, never)).toBeNull();
    expect(t.held).toBe(MAX_LOCKED_UNITS - 1);
    const waiter = t.lock(3, 0, 1, never)!; // waits for unit 0
    await t.lock(5, 100_000, 100_000, never); // disjoint: granted, now at the cap
    expect(t.held).toBe(MAX_LOCKED_UNITS);
    // Thrown at once when nobody waits, rejected when it had to queue: BUSY either way.
    const busy = await (async () => t.lock(2, 200_000, 200_000, never))().catch((x) => x);
    expect((busy as RequestError).status).toBe(Status.BUSY);
    t.unlock(1, 0, 0); // unit 0 free: the waiter's two units would make one more than the cap
    const e = await waiter.catch((x) => x);
    expect((e as RequestError).status).toBe(Status.BUSY);
    expect(t.held).toBe(MAX_LOCKED_UNITS - 1);
    expect(t.waiting).toBe(0);
    t.unlock(5, 100_000, 100_000);
    let thrown: unknown = null;
    try {
      t.lock(6, 0, 1, never); // 65534 + 2 reaches the cap exactly: allowed
    } catch (e) {
      thrown = e;
    }
    expect(thrown).toBeNull();
    expect(t.held).toBe(MAX_LOCKED_UNITS);
    try {
      t.lock(6, 300_000, 300_000, never);
    } catch (e) {
      thrown = e;
    }
    expect((thrown as RequestError).status).toBe(Status.BUSY);
  });

  test("an aborted waiter takes nothing and lets the next one through", async () => {
    const t = new LockTable();
    t.lock(1, 5, 5, never);
    const ac = new AbortController();
    const a = t.lock(2, 4, 5, ac.signal)!;
    const b = t.lock(3, 4, 4, never)!; // waits behind a, which wants unit 4 too
    let bDone = false;
    b.then(() => {
      bDone = true;
    });
    await Promise.resolve();
    expect(bDone).toBe(false);
    ac.abort();
    await expect(a).rejects.toBeInstanceOf(RequestError);
    await b;
    expect(t.list(1)).toEqual([
      { client_id: 3, offset: 4, length: 1 },
      { client_id: 1, offset: 5, length: 1 },
    ]);
  });

  test("sequence numbers move on every acquisition of a unit, and only then", () => {
    const t = new LockTable();
    const s0 = t.seqSum(0, 3);
    t.lock(1, 1, 1, never);
    t.unlock(1, 1, 1);
    const s1 = t.seqSum(0, 3);
    expect(s1).toBeGreaterThan(s0);
    t.unlock(1, 0, 3);
    expect(t.seqSum(0, 3)).toBe(s1);
    expect(t.anyLocked(0, 3)).toBe(false);
  });
});

/** A FormattedDrive with a two-block bitmap whose block writes wait for the test. */
function fakeDrive() {
  const writes: { block: number; bytes: Uint8Array; done: () => void }[] = [];
  const drive = {
    bitmap: new Uint8Array(8192),
    bitmap_region_bytes: 1 << 20,
    bitmap_loaded: true,
    persistBitmapBlock(index: number): Promise<void> {
      const bytes = drive.bitmap.slice(index * 4096, (index + 1) * 4096);
      return new Promise<void>((done) => writes.push({ block: index, bytes, done }));
    },
  } as unknown as FormattedDrive;
  return { drive, writes };
}

const tick = () => new Promise<void>((r) => setImmediate(r));

describe("DirtyBits", () => {
  test("a range across two bitmap blocks persists both before it resolves", async () => {
    const { drive, writes } = fakeDrive();
    const bits = new DirtyBits(drive, 65536 * (1 << 20));
    const R = 1 << 20;
    let done = false;
    const p = bits.set(32767 * R, 2 * R).then(() => {
      done = true;
    });
    await tick();
    expect(writes.map((w) => w.block)).toEqual([0, 1]);
    writes[0]!.done();
    await tick();
    expect(done).toBe(false);
    writes[1]!.done();
    await p;
    expect(bits.list(32766 * R, 4 * R)).toEqual([32767, 32768]);
    expect(writes[0]!.bytes[4095]).toBe(0x80);
    expect(writes[1]!.bytes[0]).toBe(0x01);
  });

  test("writes of one block: one in progress, later changes share one queued write", async () => {
    const { drive, writes } = fakeDrive();
    const bits = new DirtyBits(drive, 64 * (1 << 20));
    const R = 1 << 20;
    const a = bits.markForWrite(0, 1)!;
    await tick();
    expect(writes.length).toBe(1);
    const b = bits.markForWrite(R, 1)!;
    const c = bits.markForWrite(2 * R, 1)!;
    const again = bits.markForWrite(0, 1)!; // set already, but its block is not durable yet
    expect(again).not.toBeNull();
    await tick();
    expect(writes.length).toBe(1); // serialised: the second waits for the first
    writes[0]!.done();
    await a;
    await tick();
    expect(writes.length).toBe(2); // one write for b and c together
    expect(writes[1]!.bytes[0]).toBe(0b111);
    writes[1]!.done();
    await Promise.all([b, c, again]);
    expect(bits.markForWrite(R, 1)).toBeNull(); // set and durable: nothing to wait for
  });
});
