/**
 * The control-plane fence at the target (docs/toma-cluster.md, "Fenced at the drives"): every
 * request of a TOMA connection that changes a drive carries its TOMA's version in the header's
 * `generation`; the drive refuses an older version than the newest it has seen with STALE naming
 * that version, records a newer one durably before running the request, and remembers it across
 * a target restart. Reads, FLUSH, listings and META_* are not versioned.
 */
import { afterEach, describe, expect, test } from "bun:test";
import { formatDrive } from "../../src/engine/drive/format.ts";
import { CONTROL_VERSION_OFFSETS, decodeControlVersion, encodeControlVersion } from "../../src/engine/drive/control-version.ts";
import { openDrive } from "../../src/engine/drive/formatted-drive.ts";
import { MemoryStore } from "../../src/engine/drive/memory-store.ts";
import { type Session, openSession } from "../../src/engine/wire/session.ts";
import { GatedStore, outcomeOf, type TargetHarness, pattern, randomUuidString, startTarget, until, uuidBytes } from "./target-fixture.ts";

const MiB = 1024 * 1024;
let h: TargetHarness | null = null;
afterEach(() => {
  h?.stop();
  h = null;
});

async function drive(store = new MemoryStore(8 * MiB)) {
  await formatDrive(store, { drive_uuid: randomUuidString(), extent_size_bytes: MiB });
  return { store, drive: await openDrive(store, "memory") };
}

let sessions = 0;
/** A TOMA connection whose requests carry `version` (a name of its own: a TOMA's second HELLO supersedes its first). */
async function tomaSession(version: number, name = "toma"): Promise<Session> {
  return await openSession(h!.env, h!.address, { version: 1, role: "toma", name: `${name} ${++sessions}` }, { client_id: 99, generation: version });
}

const outcome = outcomeOf;

/** Every request kind a TOMA sends that changes the drive, each once. */
const CHANGING: [string, (s: Session, u: Uint8Array) => Promise<unknown>][] = [
  ["FENCE", (s, u) => s.fence(u, { replace: true, set: [{ client_id: 1, min_generation: 3 }], remove: [] })],
  ["WRITE (a rebuild copy)", (s, u) => s.write(u, 0, pattern(7, 4096), true)],
  ["WRITE_ZEROES", (s, u) => s.writeZeroes(u, 0, 4096, false)],
  ["TRIM", (s, u) => s.trim(u, 0, 4096)],
  ["LOCK (lock recovery)", (s, u) => s.tryLock(u, MiB, 1)],
  ["UNLOCK for a dead client (lock recovery)", (s, u) => s.unlockFor(u, MiB, 1, 5)],
  ["DIRTY_SET", (s, u) => s.dirtySet(u, 0, 1)],
  ["DIRTY_CLEAR (after a resync)", (s, u) => s.dirtyClear(u, 0, 1)],
];

describe("a TOMA request older than the drive's newest version is refused STALE", () => {
  for (const [name, op] of CHANGING) {
    test(name, async () => {
      const { drive: d } = await drive();
      h = await startTarget([d]);
      const u = uuidBytes(d);
      const newer = await tomaSession(2 ** 32 * 3 + 10, "new leader");
      const older = await tomaSession(2 ** 32 * 2 + 40, "deposed leader");
      expect(await outcome(op(older, u))).toBe("ok");
      expect(await outcome(op(newer, u))).toBe("ok");
      // Once the newer version reached the drive, the older one is refused, naming the newest.
      expect(await outcome(op(older, u))).toBe(`STALE newest=${2 ** 32 * 3 + 10}`);
      expect(await outcome(op(newer, u))).toBe("ok");
      expect(d.control_version).toBe(2 ** 32 * 3 + 10);
    });
  }

  test("the refused request changes nothing: an old fence table does not replace the newer one", async () => {
    const { drive: d } = await drive();
    h = await startTarget([d], { fencing: true });
    const u = uuidBytes(d);
    const newer = await tomaSession(20);
    const older = await tomaSession(10);
    await newer.fence(u, { replace: true, set: [{ client_id: 1, min_generation: 5 }], remove: [] });
    expect(await outcome(older.fence(u, { replace: true, set: [{ client_id: 2, min_generation: 0 }], remove: [] }))).toBe("STALE newest=20");
    const c2 = await openSession(h.env, h.address, { version: 1, role: "client", name: "c2" }, { client_id: 2, generation: 9 });
    expect(await outcome(c2.write(u, 0, pattern(1, 512), false))).toBe("REFUSED");
    const c1 = await openSession(h.env, h.address, { version: 1, role: "client", name: "c1" }, { client_id: 1, generation: 5 });
    expect(await outcome(c1.write(u, 0, pattern(1, 512), false))).toBe("ok");
  });

  test("reads, FLUSH, listings and metadata are not versioned", async () => {
    const { drive: d } = await drive();
    h = await startTarget([d]);
    const u = uuidBytes(d);
    await (await tomaSession(50)).dirtySet(u, 0, 1);
    const older = await tomaSession(1);
    const results = await Promise.all(
      [
        older.read(u, 0, new Uint8Array(512)),
        older.flush(u),
        older.lockList(u),
        older.dirtyGet(u, 0, 1),
        older.dirtyInherited(u, 0, 1),
        older.listDrives(),
        older.metaRead(u),
        older.metaWrite(u, 1, new Uint8Array([1])),
      ].map(outcome),
    );
    expect(results).toEqual(Array(8).fill("ok"));
  });

  test("client connections are fenced by the table, not by the control-plane version", async () => {
    const { drive: d } = await drive();
    h = await startTarget([d]);
    const u = uuidBytes(d);
    await (await tomaSession(2 ** 40)).dirtySet(u, 0, 1);
    const c = await openSession(h.env, h.address, { version: 1, role: "client", name: "c" }, { client_id: 1, generation: 3 });
    expect(await outcome(c.write(u, 0, pattern(1, 512), false))).toBe("ok");
    expect(d.control_version).toBe(2 ** 40);
  });
});

describe("a newer version is a barrier against the older TOMA", () => {
  test("its first request runs only once the older TOMA's writes in flight there have finished", async () => {
    // Writes into the data area wait at the gate; the version record (before the slots) does not.
    const store = new GatedStore(8 * MiB, (op, off) => op === "write" && off >= 4 * MiB);
    const { drive: d } = await drive(store);
    h = await startTarget([d]);
    const u = uuidBytes(d);
    const older = await tomaSession(10, "deposed");
    const newer = await tomaSession(20, "new");
    store.gated = true;
    let copied = false;
    const copy = older.write(u, 0, pattern(3, 4096), true).then(() => (copied = true));
    await until(() => store.blocked === 1);
    let fenced = false;
    const fence = newer.fence(u, { replace: true, set: [], remove: [] }).then(() => (fenced = true));
    await Bun.sleep(20);
    expect(fenced).toBe(false);
    // Already refused: what the older TOMA sends from here on.
    expect(await outcome(older.dirtyClear(u, 0, 1))).toBe("STALE newest=20");
    store.open();
    await Promise.all([copy, fence]);
    expect(copied && fenced).toBe(true);
    expect(d.control_version).toBe(20);
  });

  test("an older TOMA's LOCK waiting for a dead client's lock is failed, so the newer TOMA does not wait for it", async () => {
    const { drive: d } = await drive();
    h = await startTarget([d]);
    const u = uuidBytes(d);
    const dead = await openSession(h.env, h.address, { version: 1, role: "client", name: "dead" }, { client_id: 7 });
    await dead.lock(u, 0, 1);
    const older = await tomaSession(10, "deposed");
    const waiting = outcome(older.lock(u, 0, 1));
    await Bun.sleep(20);
    const newer = await tomaSession(20, "new");
    expect(await outcome(newer.fence(u, { replace: true, set: [], remove: [] }))).toBe("ok");
    expect(await waiting).toBe("STALE newest=20");
    // The newer TOMA recovers the dead client's lock.
    expect(await outcome(newer.unlockFor(u, 0, 1, 7))).toBe("ok");
    expect(await newer.lockList(u)).toEqual([]);
  });
});

describe("the newest version is durable", () => {
  test("a restarted target (drives opened again) still refuses the older version", async () => {
    const { store, drive: d } = await drive();
    h = await startTarget([d]);
    const u = uuidBytes(d);
    await (await tomaSession(700)).fence(u, { replace: true, set: [], remove: [] });
    await (await tomaSession(800)).dirtyClear(u, 0, 1);
    h.stop();
    h = null;
    const again = await openDrive(store, "memory");
    expect(again.control_version).toBe(800);
    h = await startTarget([again]);
    expect(await outcome((await tomaSession(799)).fence(u, { replace: true, set: [], remove: [] }))).toBe("STALE newest=800");
    expect(await outcome((await tomaSession(800)).fence(u, { replace: true, set: [], remove: [] }))).toBe("ok");
  });

  test("the two copies alternate: a torn write of one leaves the previous version in the other", async () => {
    const { store, drive: d } = await drive();
    const id = d.info.drive_uuid;
    await d.persistControlVersion(5);
    await d.persistControlVersion(9);
    const copies = async () => {
      const out: (number | string)[] = [];
      for (const off of CONTROL_VERSION_OFFSETS) {
        const b = new Uint8Array(4096);
        await store.read(off, b);
        const x = decodeControlVersion(b, id);
        out.push("version" in x ? x.version : x.invalid);
      }
      return out;
    };
    const held = await copies();
    expect([...held].sort()).toEqual([5, 9]);
    // The next write goes to the copy holding 5; tear it there.
    const torn = encodeControlVersion(12, id);
    torn[9] = torn[9]! ^ 0xff;
    await store.write(CONTROL_VERSION_OFFSETS[held.indexOf(5)]!, torn, true);
    expect((await openDrive(store, "memory")).control_version).toBe(9);
    // Never lowered: a version at or below the record writes nothing.
    await d.persistControlVersion(7);
    expect(d.control_version).toBe(9);
    expect((await openDrive(store, "memory")).control_version).toBe(9);
  });

  test("a drive formatted before the record existed (blank space) starts at version 0; a reformat forgets the version", async () => {
    const store = new MemoryStore(8 * MiB);
    const { drive: d } = await drive(store);
    expect(d.control_version).toBe(0);
    await d.persistControlVersion(2 ** 33);
    expect((await openDrive(store, "memory")).control_version).toBe(2 ** 33);
    await formatDrive(store, { drive_uuid: randomUuidString(), extent_size_bytes: MiB, force: true });
    expect((await openDrive(store, "memory")).control_version).toBe(0);
  });

  test("a copy of another drive, or with a bad CRC, holds no version", () => {
    const a = randomUuidString();
    const b = encodeControlVersion(77, a);
    expect(decodeControlVersion(b, a)).toEqual({ version: 77 });
    expect("invalid" in decodeControlVersion(b, randomUuidString())).toBe(true);
    const bad = b.slice();
    bad[20] = bad[20]! ^ 1;
    expect("invalid" in decodeControlVersion(bad, a)).toBe(true);
    const tail = b.slice();
    tail[4000] = 1;
    expect("invalid" in decodeControlVersion(tail, a)).toBe(true);
  });
});
