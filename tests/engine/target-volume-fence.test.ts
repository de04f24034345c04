/**
 * The target holds every client request to the extents of the volume its connection serves
 * (target/fence.ts): a drive's fence table says which extents belong to which volume (uuid +
 * incarnation) and which clients may reach which volume; a client connection is bound to one
 * volume at HELLO. Written as an attacker would: a registered client aiming one byte outside its
 * volume, at another volume's extents, at free extents, with the wrong incarnation, with no
 * volume, or with a volume it was never given.
 */
import { afterEach, describe, expect, test } from "bun:test";
import { formatDrive } from "../../src/engine/drive/format.ts";
import type { FormattedDrive } from "../../src/engine/drive/formatted-api.ts";
import { openDrive } from "../../src/engine/drive/formatted-drive.ts";
import { type FenceBody, type VolumeBinding, encodeBody } from "../../src/engine/wire/control.ts";
import { Op, Status } from "../../src/engine/wire/header.ts";
import { TargetError } from "../../src/engine/wire/session-api.ts";
import { type Session, openSession } from "../../src/engine/wire/session.ts";
import { insideRuns } from "../../src/engine/target/fence.ts";
import { rawPeer } from "./raw-peer.ts";
import { GatedStore, memoryDrive, outcome, pattern, randomUuidString, startTarget, type TargetHarness, until, uuidBytes } from "./target-fixture.ts";

const MiB = 1024 * 1024;
let h: TargetHarness | null = null;
let opened: Session[] = [];
afterEach(() => {
  for (const s of opened) s.close();
  opened = [];
  h?.stop();
  h = null;
});

// Volume A owns extents 1, 2 (one run, 1..3 MiB) and 5 (5..6 MiB); volume B owns extent 3.
// Extents 0 and 4 belong to nobody.
const A: VolumeBinding = { uuid: randomUuidString(), incarnation: 11 };
const B: VolumeBinding = { uuid: randomUuidString(), incarnation: 12 };

function table(opts: { clients?: { id: number; volumes: VolumeBinding[] }[] } = {}): FenceBody {
  return {
    replace: true,
    volumes: [
      { volume_uuid: A.uuid, incarnation: A.incarnation, extents: [[1, 2], [5, 1]] },
      { volume_uuid: B.uuid, incarnation: B.incarnation, extents: [[3, 1]] },
    ],
    set: (opts.clients ?? [{ id: 7, volumes: [A] }]).map((c) => ({ client_id: c.id, min_generation: 0, volumes: c.volumes.map((v) => v.uuid) })),
    remove: [],
  };
}

async function setup(drive?: FormattedDrive): Promise<{ d: FormattedDrive; u: Uint8Array; toma: Session }> {
  const d = drive ?? (await memoryDrive(16));
  expect(d.info.extent_count).toBeGreaterThanOrEqual(6);
  h = await startTarget([d], { fencing: true });
  const toma = await h.toma();
  await toma.fence(uuidBytes(d), table());
  return { d, u: uuidBytes(d), toma };
}

async function bound(volume: VolumeBinding | undefined, client_id = 7, name = `c${client_id}`): Promise<Session> {
  const s = await openSession(h!.env, h!.address, { version: 1, role: "client", name, ...(volume ? { volume } : {}) }, { client_id, generation: 0 });
  opened.push(s);
  return s;
}

const OPS = ["READ", "READ+TEST_LOCK", "WRITE", "WRITE+LOCK", "TRIM", "WRITE_ZEROES", "LOCK", "UNLOCK", "DIRTY_GET", "DIRTY_SET", "DIRTY_CLEAR"];

/** Every data-path op with a range, at [offset, offset + length), one after the other; the outcome of each. */
async function outcomes(s: Session, u: Uint8Array, offset: number, length: number): Promise<string[]> {
  const ops: [string, () => Promise<unknown>][] = [
    ["READ", () => s.read(u, offset, new Uint8Array(length))],
    ["READ+TEST_LOCK", () => s.readTestLock(u, offset, new Uint8Array(length))],
    ["WRITE", () => s.write(u, offset, pattern(offset, length), false)],
    ["WRITE+LOCK", () => s.write(u, offset, pattern(offset, length), false, { lock: true }).then(() => s.unlock(u, offset, length))],
    ["TRIM", () => s.trim(u, offset, length)],
    ["WRITE_ZEROES", () => s.writeZeroes(u, offset, length, false)],
    ["LOCK", () => s.lock(u, offset, length).then(() => s.unlock(u, offset, length))],
    ["UNLOCK", () => s.unlock(u, offset, length)],
    ["DIRTY_GET", () => s.dirtyGet(u, offset, length)],
    ["DIRTY_SET", () => s.dirtySet(u, offset, length)],
    ["DIRTY_CLEAR", () => s.dirtyClear(u, offset, length)],
  ];
  const out: string[] = [];
  for (const [name, op] of ops) out.push(`${name}: ${await outcome(op())}`);
  return out;
}

describe("every data-path op is held to the extents of the connection's volume", () => {
  test("inside a run of the volume: served", async () => {
    const { u } = await setup();
    const c = await bound(A);
    for (const [off, len] of [
      [1 * MiB, 4096], // the first byte of the volume
      [3 * MiB - 4096, 4096], // ending exactly where the run ends
      [2 * MiB - 2048, 4096], // across extents 1 and 2: one run, adjacent extents of one volume
      [5 * MiB, 1 * MiB], // the whole of extent 5
    ]) {
      const got = await outcomes(c, u, off!, len!);
      expect(got).toEqual(OPS.map((n) => `${n}: ok`));
    }
    expect(await outcome(c.flush(u))).toBe("ok");
  });

  test("one byte outside, another volume's extent, a free extent, a range spanning two runs: REFUSED, nothing written", async () => {
    const { u, toma } = await setup();
    const c = await bound(A);
    const before = new Uint8Array(6 * MiB);
    await toma.read(u, 0, before.subarray(0, 4 * MiB));
    await toma.read(u, 4 * MiB, before.subarray(4 * MiB));
    for (const [what, off, len] of [
      ["the byte before the volume", 1 * MiB - 1, 2],
      ["the byte after the run", 3 * MiB - 1, 2],
      ["volume B's extent", 3 * MiB, 4096],
      ["free extent 0", 0, 4096],
      ["free extent 4", 4 * MiB, 4096],
      ["from extent 2 over B's into 4", 2 * MiB, 3 * MiB],
      ["from the last byte of the run, zero bytes past it", 3 * MiB + 1, 0],
    ] as const) {
      for (const r of await outcomes(c, u, off, len)) {
        expect(`${what}: ${r}`).toContain(`REFUSED: range ${off}+${len} of drive`);
        expect(r).toContain(`is outside the extents of volume ${A.uuid}`);
      }
    }
    const after = new Uint8Array(6 * MiB);
    await toma.read(u, 0, after.subarray(0, 4 * MiB));
    await toma.read(u, 4 * MiB, after.subarray(4 * MiB));
    expect(Buffer.from(after).equals(Buffer.from(before))).toBe(true);
  });

  test("a zero-length range at a run's end is inside; beyond the data area is still OUT_OF_RANGE", async () => {
    const { d, u } = await setup();
    const c = await bound(A);
    expect(await outcome(c.read(u, 3 * MiB, new Uint8Array(0)))).toBe("ok");
    const end = d.info.extent_count * d.info.extent_size_bytes;
    expect(await outcome(c.read(u, end, new Uint8Array(4096)))).toContain("OUT_OF_RANGE");
  });

  test("a client bound to volume B, registered for A only, reaches nothing; so does an unbound client connection", async () => {
    const { d, u } = await setup();
    const toB = await bound(B);
    for (const r of await outcomes(toB, u, 3 * MiB, 4096)) {
      expect(r).toContain(`REFUSED: client 7 is not registered for volume ${B.uuid} on drive ${d.info.drive_uuid}`);
    }
    expect(await outcome(toB.flush(u))).toContain("is not registered for volume");
    const unbound = await bound(undefined, 7, "unbound");
    for (const r of await outcomes(unbound, u, 1 * MiB, 4096)) {
      expect(r).toContain("on a client connection bound to no volume");
    }
    expect(await outcome(unbound.flush(u))).toContain("bound to no volume");
  });

  test("the right uuid with another incarnation is another volume: REFUSED", async () => {
    const { d, u } = await setup();
    const stale = await bound({ uuid: A.uuid, incarnation: A.incarnation - 1 });
    expect(await outcome(stale.read(u, 1 * MiB, new Uint8Array(512)))).toBe(
      `REFUSED: volume ${A.uuid} (incarnation ${A.incarnation - 1}) has no extents on drive ${d.info.drive_uuid}: deleted, or moved away`,
    );
  });

  test("a deleted volume (taken out of the table) is refused to its client, which keeps its other volume", async () => {
    const { d, u, toma } = await setup();
    await toma.fence(u, table({ clients: [{ id: 7, volumes: [A, B] }] }));
    const toA = await bound(A);
    const toB = await bound(B, 7, "c7"); // the same client name: one connection per volume coexists
    expect(await outcome(toA.write(u, 1 * MiB, pattern(1, 4096), true))).toBe("ok");
    expect(await outcome(toB.write(u, 3 * MiB, pattern(2, 4096), true))).toBe("ok");
    await toma.fence(u, { replace: false, set: [], remove: [], remove_volumes: [A.uuid] });
    expect(await outcome(toA.read(u, 1 * MiB, new Uint8Array(4096)))).toContain(`volume ${A.uuid} (incarnation ${A.incarnation}) has no extents on drive ${d.info.drive_uuid}`);
    expect(await outcome(toB.write(u, 3 * MiB, pattern(3, 4096), true))).toBe("ok");
    // A new volume on A's old extents: A's connection still reaches nothing.
    const C: VolumeBinding = { uuid: randomUuidString(), incarnation: 13 };
    await toma.fence(u, { replace: false, volumes: [{ volume_uuid: C.uuid, incarnation: 13, extents: [[1, 2]] }], set: [{ client_id: 7, min_generation: 0, volumes: [B.uuid, C.uuid] }], remove: [] });
    expect(await outcome(toA.read(u, 1 * MiB, new Uint8Array(4096)))).toContain("has no extents on drive");
    expect(await outcome(toA.write(u, 1 * MiB, pattern(4, 4096), true))).toContain("has no extents on drive");
    const toC = await bound(C);
    expect(await outcome(toC.read(u, 1 * MiB, new Uint8Array(4096)))).toBe("ok");
  });

  test("a TOMA connection may not claim a volume at HELLO (INVALID, closed)", async () => {
    await setup();
    const e = await openSession(h!.env, h!.address, { version: 1, role: "toma", name: "t", volume: A }).catch((x) => x);
    expect(e).toBeInstanceOf(TargetError);
    expect((e as TargetError).status).toBe(Status.INVALID);
    expect((e as TargetError).message).toContain("only a client connection serves a volume");
  });
});

describe("FENCE volume tables: bad bodies are INVALID and change nothing", () => {
  test("each bad table is refused, and the volume stays reachable as before", async () => {
    const { d, u } = await setup();
    const c = await bound(A);
    const raw = await rawPeer(h!.env, h!.address, "toma", "raw-toma");
    const n = d.info.extent_count;
    const vol = (uuid: string, incarnation: number, extents: [number, number][]) => ({ volume_uuid: uuid, incarnation, extents });
    const X = randomUuidString();
    const bodies: [string, unknown, RegExp][] = [
      ["two volumes on one extent", { replace: true, set: [], remove: [], volumes: [vol(A.uuid, 11, [[1, 2]]), vol(X, 20, [[2, 1]])] }, /both claim bytes/],
      ["one extent named twice", { replace: true, set: [], remove: [], volumes: [vol(X, 20, [[1, 2], [2, 1]])] }, /names one extent twice/],
      ["extents beyond the drive", { replace: true, set: [], remove: [], volumes: [vol(X, 20, [[n - 1, 2]])] }, /beyond the drive/],
      ["a client given a volume the table does not hold", { replace: true, set: [{ client_id: 7, min_generation: 0, volumes: [X] }], remove: [], volumes: [] }, /which the table does not hold/],
      ["a volume whose incarnation changes", { replace: false, set: [], remove: [], volumes: [vol(A.uuid, 99, [[1, 2]])] }, /is incarnation 11 here, not 99/],
      ["two volumes, one incarnation", { replace: false, set: [], remove: [], volumes: [vol(X, 11, [[0, 1]])] }, /both say incarnation 11/],
      ["a volume given and removed", { replace: false, set: [], remove: [], volumes: [vol(X, 20, [[0, 1]])], remove_volumes: [X] }, /both given and removed/],
      ["a volume given twice", { replace: true, set: [], remove: [], volumes: [vol(X, 20, [[0, 1]]), vol(X, 20, [[4, 1]])] }, /given twice/],
      ["incarnation 0", { replace: true, set: [], remove: [], volumes: [vol(X, 0, [[0, 1]])] }, /FENCE body/],
      ["an empty run", { replace: true, set: [], remove: [], volumes: [vol(X, 20, [[0, 0]])] }, /FENCE body/],
      ["a bad uuid", { replace: true, set: [], remove: [], volumes: [vol("nope", 20, [[0, 1]])] }, /FENCE body/],
      ["an unknown key in a volume", { replace: true, set: [], remove: [], volumes: [{ ...vol(X, 20, [[0, 1]]), owner: 1 }] }, /FENCE body/],
    ];
    for (const [what, body, why] of bodies) {
      const a = await raw.request({ opcode: Op.FENCE, drive_uuid: u }, encodeBody(body));
      expect(`${what}: ${Status[a.h.status]}`).toBe(`${what}: INVALID`);
      expect(`${what}: ${a.error}`).toMatch(why);
    }
    expect(await outcome(c.write(u, 1 * MiB, pattern(9, 4096), true))).toBe("ok");
    expect(await outcome(c.write(u, 3 * MiB, pattern(9, 4096), true))).toContain("outside the extents");
    raw.close();
  });
});

describe("FENCE waits for the requests of a volume it takes away", () => {
  test("removing a client's volume is answered only once that volume's running write has finished", async () => {
    const store = new GatedStore(16 * MiB);
    await formatDrive(store, { drive_uuid: randomUuidString(), extent_size_bytes: MiB });
    const { u, toma } = await setup(await openDrive(store, "gated"));
    const c = await bound(A);
    store.gated = true;
    let written = false;
    const w = c.write(u, 1 * MiB, pattern(1, 4096), true).then(() => {
      written = true;
    });
    await until(() => store.blocked === 1);
    let fenced = false;
    const f = toma.fence(u, { replace: false, set: [{ client_id: 7, min_generation: 0, volumes: [] }], remove: [] }).then(() => {
      fenced = true;
    });
    await toma.lockList(u); // the FENCE above has started
    expect(await outcome(c.flush(u))).toContain("is not registered for volume");
    expect(fenced).toBe(false);
    store.open();
    await f;
    expect(written).toBe(true);
    await w;
  });

  test("a LOCK of a volume taken out of the table, waiting for its units, is refused and takes nothing", async () => {
    const { u, toma } = await setup();
    await toma.fence(u, table({ clients: [{ id: 7, volumes: [A] }, { id: 8, volumes: [A] }] }));
    const a = await bound(A, 7);
    const b = await bound(A, 8);
    await a.lock(u, 1 * MiB, 4096);
    const wb = b.lock(u, 1 * MiB, 4096).catch((e) => e);
    await b.dirtyGet(u, 1 * MiB, 0); // the LOCK is waiting on the target
    await toma.fence(u, { replace: false, set: [], remove: [], remove_volumes: [A.uuid] });
    const e = await wb;
    expect((e as TargetError).status).toBe(Status.REFUSED);
    expect((await toma.lockList(u)).map((l) => l.client_id)).toEqual([7]);
  });
});

test("insideRuns: boundaries of sorted [start, end) runs", () => {
  const runs = [10, 20, 30, 40];
  const cases: [number, number, boolean][] = [
    [10, 10, true],
    [10, 11, false],
    [9, 1, false],
    [19, 1, true],
    [20, 0, true],
    [20, 1, false],
    [25, 0, false],
    [30, 10, true],
    [40, 0, true],
    [40, 1, false],
    [0, 0, false],
    [15, 20, false],
  ];
  for (const [off, len, want] of cases) expect(`${off}+${len}: ${insideRuns(runs, off, len)}`).toBe(`${off}+${len}: ${want}`);
  expect(insideRuns([], 0, 0)).toBe(false);
});
