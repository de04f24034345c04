/**
 * Fencing over real sockets: a TOMA sets each drive's registrations with FENCE; with enforcement
 * on, a client's data-path request is refused unless the client is registered on the drive with
 * a min_generation its request's generation reaches. TOMAs are exempt, admins never do data
 * I/O, registrations do not survive a target restart, and bad FENCE bodies change nothing.
 */
import { afterEach, describe, expect, test } from "bun:test";
import { formatDrive } from "../../src/engine/drive/format.ts";
import type { FormattedDrive } from "../../src/engine/drive/formatted-api.ts";
import { openDrive } from "../../src/engine/drive/formatted-drive.ts";
import { encodeBody } from "../../src/engine/wire/control.ts";
import { MAX_REGISTRATIONS } from "../../src/engine/wire/control.ts";
import { Op, Status } from "../../src/engine/wire/header.ts";
import { TargetError } from "../../src/engine/wire/session-api.ts";
import { type Session, openSession } from "../../src/engine/wire/session.ts";
import { rawPeer } from "./raw-peer.ts";
import { type TargetHarness, memoryDrive, pattern, randomUuidString, startTarget, uuidBytes, GatedStore, until } from "./target-fixture.ts";

let h: TargetHarness | null = null;
afterEach(() => {
  h?.stop();
  h = null;
});

async function outcome(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return "ok";
  } catch (e) {
    if (e instanceof TargetError) return `${Status[e.status]}: ${e.message}`;
    throw e;
  }
}

async function client(name: string, client_id: number, generation: number): Promise<Session> {
  return await openSession(h!.env, h!.address, { version: 1, role: "client", name }, { client_id, generation });
}

/** Every data-path op once; the outcome of each, in order. */
async function everyDataOp(s: Session, u: Uint8Array): Promise<string[]> {
  return await Promise.all(
    [
      s.read(u, 0, new Uint8Array(512)),
      s.readTestLock(u, 0, new Uint8Array(512)),
      s.write(u, 0, pattern(1, 512), false),
      s.flush(u),
      s.trim(u, 0, 4096),
      s.writeZeroes(u, 0, 4096, false),
      s.lock(u, 1 << 20, 1),
      s.unlock(u, 1 << 20, 1),
      s.dirtyGet(u, 0, 1),
      s.dirtySet(u, 0, 1),
      s.dirtyClear(u, 0, 1),
    ].map(outcome),
  );
}

const ALL_OK = Array(11).fill("ok");

describe("fencing enforced", () => {
  test("an unregistered client is refused every data-path op; once registered it is served", async () => {
    const d = await memoryDrive();
    h = await startTarget([d], { fencing: true });
    const u = uuidBytes(d);
    const c = await client("c7", 7, 3);
    const refused = await everyDataOp(c, u);
    for (const r of refused) expect(r).toBe(`REFUSED: client 7 is not registered on drive ${d.info.drive_uuid}`);
    // Not data-path: the drive list is still answered; the metadata is no client's business.
    expect((await c.listDrives()).length).toBe(1);
    expect(await outcome(c.metaRead(u))).toMatch(/^REFUSED: META_READ is accepted from a TOMA or admin connection only/);

    const toma = await h.toma();
    await toma.fence(u, { replace: false, set: [{ client_id: 7, min_generation: 3 }], remove: [] });
    expect(await everyDataOp(c, u)).toEqual(ALL_OK);
  });

  test("a generation below the client's minimum is refused, naming both", async () => {
    const d = await memoryDrive();
    h = await startTarget([d], { fencing: true });
    const u = uuidBytes(d);
    const toma = await h.toma();
    await toma.fence(u, { replace: false, set: [{ client_id: 7, min_generation: 5 }], remove: [] });
    const c = await client("c7", 7, 3);
    expect(await outcome(c.write(u, 0, pattern(1, 512), true))).toBe(
      `REFUSED: generation 3 is older than 5, the minimum for client 7 on drive ${d.info.drive_uuid}`,
    );
    c.setFence(7, 5);
    expect(await outcome(c.write(u, 0, pattern(1, 512), true))).toBe("ok");
    c.setFence(7, 9); // newer than the minimum is fine
    expect(await outcome(c.flush(u))).toBe("ok");
  });

  test("an op planned under an older generation carries that one, not the session's newer stamp, and is refused", async () => {
    // A client that registered again under a new id (the TOMA had expired it) raises its
    // sessions' generation at once, while a write planned on its old view may still be waiting
    // to be sent: stamped with the new generation it passed the fence and landed on one leg
    // only, after a rebuild had copied the region (simulator seed 314 with --mirror).
    const d = await memoryDrive();
    h = await startTarget([d], { fencing: true });
    const u = uuidBytes(d);
    const toma = await h.toma();
    await toma.fence(u, { replace: false, set: [{ client_id: 7, min_generation: 11 }], remove: [] });
    const c = await client("c7", 7, 11);
    const older = `REFUSED: generation 10 is older than 11, the minimum for client 7 on drive ${d.info.drive_uuid}`;
    expect(await outcome(c.write(u, 0, pattern(1, 512), false, { generation: 10 }))).toBe(older);
    expect(await outcome(c.writeZeroes(u, 0, 512, false, { generation: 10 }))).toBe(older);
    expect(await outcome(c.trim(u, 0, 512, { generation: 10 }))).toBe(older);
    expect(await outcome(c.write(u, 0, pattern(1, 512), false, { generation: 11, intent: true }))).toBe("ok");
    expect(await outcome(c.write(u, 0, pattern(1, 512), false))).toBe("ok"); // the session's 11
  });

  test("FENCE raises a minimum but never lowers it; replace starts from an empty table; remove unregisters", async () => {
    const d = await memoryDrive();
    h = await startTarget([d], { fencing: true });
    const u = uuidBytes(d);
    const toma = await h.toma();
    const c7 = await client("c7", 7, 4);
    const c8 = await client("c8", 8, 1);
    const w = (s: Session) => outcome(s.write(u, 0, pattern(2, 512), false));

    await toma.fence(u, { replace: false, set: [{ client_id: 7, min_generation: 5 }], remove: [] });
    await toma.fence(u, { replace: false, set: [{ client_id: 7, min_generation: 3 }], remove: [] }); // ignored
    expect(await w(c7)).toContain("generation 4 is older than 5");
    await toma.fence(u, { replace: false, set: [{ client_id: 7, min_generation: 4 }, { client_id: 8, min_generation: 1 }], remove: [] });
    expect(await w(c7)).toContain("generation 4 is older than 5"); // still 5
    expect(await w(c8)).toBe("ok");

    // replace: the table is exactly the new set, so a lower minimum is possible again.
    await toma.fence(u, { replace: true, set: [{ client_id: 7, min_generation: 4 }], remove: [] });
    expect(await w(c7)).toBe("ok");
    expect(await w(c8)).toContain("client 8 is not registered");

    await toma.fence(u, { replace: false, set: [], remove: [7] });
    expect(await w(c7)).toContain("client 7 is not registered");
    // Removing a client that is not registered is fine.
    await toma.fence(u, { replace: false, set: [], remove: [7, 12345] });
  });

  test("registrations are per drive", async () => {
    const d1 = await memoryDrive();
    const d2 = await memoryDrive();
    h = await startTarget([d1, d2], { fencing: true });
    const toma = await h.toma();
    await toma.fence(uuidBytes(d1), { replace: false, set: [{ client_id: 7, min_generation: 0 }], remove: [] });
    const c = await client("c7", 7, 0);
    expect(await outcome(c.flush(uuidBytes(d1)))).toBe("ok");
    expect(await outcome(c.flush(uuidBytes(d2)))).toBe(`REFUSED: client 7 is not registered on drive ${d2.info.drive_uuid}`);
  });

  test("a TOMA is never fenced", async () => {
    const d = await memoryDrive();
    h = await startTarget([d], { fencing: true });
    const toma = await h.toma();
    toma.setFence(999, 0);
    expect(await everyDataOp(toma, uuidBytes(d))).toEqual(ALL_OK);
  });

  test("the fixture's session() registers its client through the TOMA", async () => {
    const d = await memoryDrive();
    h = await startTarget([d], { fencing: true });
    const s = await h.session({ client_id: 42, generation: 6 });
    expect(await everyDataOp(s, uuidBytes(d))).toEqual(ALL_OK);
  });

  test("registrations live in RAM: after a target restart every client is refused until FENCE again", async () => {
    const d = await memoryDrive();
    h = await startTarget([d], { fencing: true });
    const u = uuidBytes(d);
    const s = await h.session({ client_id: 7, generation: 2 });
    await s.write(u, 0, pattern(3, 512), true);
    h.stop();
    h = null;

    // The same drive, a new target process.
    h = await startTarget([d], { fencing: true });
    const again = await client("c7", 7, 2);
    expect(await outcome(again.write(u, 0, pattern(4, 512), true))).toBe(
      `REFUSED: client 7 is not registered on drive ${d.info.drive_uuid}`,
    );
    const toma = await h.toma();
    await toma.fence(u, { replace: true, set: [{ client_id: 7, min_generation: 2 }], remove: [] });
    expect(await outcome(again.write(u, 0, pattern(4, 512), true))).toBe("ok");
  });
});

describe("fencing not enforced (the default until the TOMA registers clients)", () => {
  test("an unregistered client is served; FENCE is still accepted and remembered", async () => {
    const d = await memoryDrive();
    h = await startTarget([d]);
    const u = uuidBytes(d);
    const c = await client("c7", 7, 0);
    expect(await everyDataOp(c, u)).toEqual(ALL_OK);
    const toma = await h.toma();
    await toma.fence(u, { replace: false, set: [{ client_id: 7, min_generation: 9 }], remove: [] });
    expect(await everyDataOp(c, u)).toEqual(ALL_OK);
  });
});

describe("roles", () => {
  for (const fencing of [false, true]) {
    test(`an admin connection may not send data-path requests (fencing ${fencing ? "on" : "off"})`, async () => {
      const d = await memoryDrive();
      h = await startTarget([d], { fencing });
      const u = uuidBytes(d);
      const admin = await openSession(h.env, h.address, { version: 1, role: "admin", name: "cli" });
      const results = await everyDataOp(admin, u);
      for (const r of results) expect(r).toMatch(/^REFUSED: [A-Z_]+ is a data-path request, refused on an admin connection$/);
      // Management reads still work.
      expect((await admin.metaRead(u)).generation).toBe(0);
      expect((await admin.listDrives()).length).toBe(1);
      admin.close();
    });

    test(`FENCE and LOCK_LIST only from a TOMA connection (fencing ${fencing ? "on" : "off"})`, async () => {
      const d = await memoryDrive();
      h = await startTarget([d], { fencing });
      const u = uuidBytes(d);
      const c = await h.session({ client_id: 7 });
      const admin = await openSession(h.env, h.address, { version: 1, role: "admin", name: "cli" });
      for (const s of [c, admin]) {
        const role = s === c ? "client" : "admin";
        expect(await outcome(s.fence(u, { replace: true, set: [], remove: [] }))).toBe(
          `REFUSED: FENCE is accepted from a TOMA connection only, not from role "${role}"`,
        );
        expect(await outcome(s.lockList(u))).toContain("REFUSED: LOCK_LIST is accepted from a TOMA connection only");
      }
      // The client is still registered and its connection usable.
      expect(await outcome(c.write(u, 0, pattern(5, 512), false))).toBe("ok");
      admin.close();
    });
  }
});

describe("bad FENCE bodies are INVALID and change nothing", () => {
  async function fencedTarget(): Promise<{ d: FormattedDrive; u: Uint8Array; c: Session }> {
    const d = await memoryDrive();
    h = await startTarget([d], { fencing: true });
    const c = await h.session({ client_id: 7, generation: 5 });
    return { d, u: uuidBytes(d), c };
  }

  test("malformed bodies", async () => {
    const { u, c } = await fencedTarget();
    const raw = await rawPeer(h!.env, h!.address, "toma", "raw-toma");
    const bodies: [string, Uint8Array][] = [
      ["not CBOR", new Uint8Array([0xff, 0xfe, 0x00])],
      ["empty", new Uint8Array(0)],
      ["an array", encodeBody([1, 2, 3])],
      ["missing remove", encodeBody({ replace: true, set: [] })],
      ["replace not boolean", encodeBody({ replace: 1, set: [], remove: [] })],
      ["negative client", encodeBody({ replace: true, set: [{ client_id: -1, min_generation: 0 }], remove: [] })],
      ["fractional generation", encodeBody({ replace: true, set: [{ client_id: 1, min_generation: 0.5 }], remove: [] })],
      ["client above 2^53", encodeBody({ replace: true, set: [{ client_id: 2 ** 60, min_generation: 0 }], remove: [] })],
      ["string id in remove", encodeBody({ replace: false, set: [], remove: ["7"] })],
      ["unknown key", encodeBody({ replace: true, set: [], remove: [], extra: 1 })],
      ["set and removed", encodeBody({ replace: true, set: [{ client_id: 8, min_generation: 0 }], remove: [8] })],
      ["too many entries", encodeBody({ replace: false, set: [], remove: Array.from({ length: MAX_REGISTRATIONS + 1 }, (_, i) => i) })],
    ];
    for (const [what, body] of bodies) {
      const a = await raw.request({ opcode: Op.FENCE, drive_uuid: u }, body);
      expect(`${what}: ${Status[a.h.status]}`).toBe(`${what}: INVALID`);
      expect(a.error).toMatch(/^FENCE/);
    }
    // A replace: true that failed validation did not clear the table.
    expect(await outcome(c.write(u, 0, pattern(6, 512), true))).toBe("ok");
    expect(raw.closed).toBe(false);
    const ok = await raw.request({ opcode: Op.FENCE, drive_uuid: u }, encodeBody({ replace: false, set: [], remove: [] }));
    expect(ok.h.status).toBe(Status.OK);
    raw.close();
  });

  test("a registration table beyond the limit is refused as a whole", async () => {
    const { u, c } = await fencedTarget();
    const toma = await h!.toma();
    // 7 is registered already; three FENCEs (each body under the 1 MiB control limit) add 60000.
    const entries = (from: number, n: number) => Array.from({ length: n }, (_, i) => ({ client_id: from + i, min_generation: 0 }));
    for (let k = 0; k < 3; k++) await toma.fence(u, { replace: false, set: entries(1000 + k * 20000, 20000), remove: [] });
    const rest = MAX_REGISTRATIONS - 60001 + 1;
    expect(await outcome(toma.fence(u, { replace: false, set: entries(100000, rest), remove: [] }))).toBe(
      `INVALID: FENCE: ${MAX_REGISTRATIONS + 1} registrations on one drive, at most ${MAX_REGISTRATIONS}`,
    );
    expect(await outcome(c.write(u, 0, pattern(7, 512), true))).toBe("ok");
    expect(await outcome((await client("c1000", 1000, 0)).flush(u))).toBe("ok");
    const refused = await client("c100000", 100000, 0);
    expect(await outcome(refused.flush(u))).toContain("client 100000 is not registered");
  });

  test("FENCE for a drive not served here is NO_SUCH_DRIVE; FENCE with no body is INVALID", async () => {
    const { u } = await fencedTarget();
    const toma = await h!.toma();
    expect(await outcome(toma.fence(new Uint8Array(16).fill(3), { replace: true, set: [], remove: [] }))).toContain("NO_SUCH_DRIVE");
    const raw = await rawPeer(h!.env, h!.address, "toma", "raw-toma");
    const a = await raw.request({ opcode: Op.FENCE, drive_uuid: u });
    expect(a.h.status).toBe(Status.INVALID);
    raw.close();
  });
});



describe("FENCE waits for what it refuses", () => {
  async function gatedTarget() {
    const store = new GatedStore(8 * 1024 * 1024);
    await formatDrive(store, { drive_uuid: randomUuidString(), extent_size_bytes: 1024 * 1024 });
    const d = await openDrive(store, "gated");
    h = await startTarget([d], { fencing: true });
    return { store, d, u: uuidBytes(d), toma: await h.toma() };
  }

  test("a FENCE removing a client is answered only once that client's running write has finished", async () => {
    const { store, u, toma } = await gatedTarget();
    const c = await h!.session({ client_id: 7, generation: 2 });
    store.gated = true;
    let written = false;
    const w = c.write(u, 0, pattern(1, 4096), true).then(() => {
      written = true;
    });
    await until(() => store.blocked === 1);
    let fenced = false;
    const f = toma.fence(u, { replace: false, set: [], remove: [7] }).then(() => {
      fenced = true;
    });
    await toma.lockList(u); // the FENCE above has started
    // The removal applies at once: a new request of client 7 is refused while the old one runs.
    expect(await outcome(c.flush(u))).toContain("client 7 is not registered");
    expect(fenced).toBe(false);
    store.open();
    await f;
    expect(written).toBe(true);
    await w;
  });

  test("raising a client's minimum waits for its older-generation requests only", async () => {
    const { store, u, toma } = await gatedTarget();
    const old = await h!.session({ client_id: 7, generation: 2 });
    const other = await h!.session({ client_id: 8, generation: 1 });
    store.gated = true;
    const w = old.write(u, 0, pattern(2, 4096), false);
    const w8 = other.write(u, 8192, pattern(3, 4096), false);
    await until(() => store.blocked === 2);
    // Nothing running is refused by this table: answered at once, writes still blocked.
    await toma.fence(u, { replace: false, set: [{ client_id: 8, min_generation: 1 }], remove: [] });
    let fenced = false;
    const f = toma.fence(u, { replace: false, set: [{ client_id: 7, min_generation: 3 }], remove: [] }).then(() => {
      fenced = true;
    });
    await toma.lockList(u); // the FENCE above has started
    expect(fenced).toBe(false);
    store.open();
    await Promise.all([f, w, w8]);
  });

  test("a WRITE with LOCK of a fenced-out client waiting for its units is refused and writes nothing", async () => {
    const { u, toma } = await gatedTarget();
    const a = await h!.session({ client_id: 1 });
    const b = await h!.session({ client_id: 2 });
    await a.lock(u, 0, 4096);
    const wb = b.write(u, 0, new Uint8Array(4096).fill(7), false, { lock: true }).catch((e) => e);
    await b.dirtyGet(u, 0, 0); // the write is waiting on the target
    await toma.fence(u, { replace: false, set: [], remove: [2] });
    const e = await wb;
    expect((e as TargetError).status).toBe(Status.REFUSED);
    await a.unlock(u, 0, 4096);
    expect(await toma.lockList(u)).toEqual([]);
    const got = new Uint8Array(4096);
    await a.read(u, 0, got);
    expect(got.some((x) => x === 7)).toBe(false);
  });

  test("a LOCK of a fenced-out client waiting for its units is refused and takes nothing", async () => {
    const { u, toma } = await gatedTarget();
    const a = await h!.session({ client_id: 1 });
    const b = await h!.session({ client_id: 2 });
    await a.lock(u, 0, 4096);
    const wb = b.lock(u, 0, 4096).catch((e) => e);
    await b.dirtyGet(u, 0, 0); // the LOCK is waiting on the target
    await toma.fence(u, { replace: false, set: [], remove: [2] });
    const e = await wb;
    expect(e).toBeInstanceOf(TargetError);
    expect((e as TargetError).status).toBe(Status.REFUSED);
    expect((e as TargetError).message).toContain("fenced out");
    await a.unlock(u, 0, 4096);
    expect(await toma.lockList(u)).toEqual([]);
  });
});
