/**
 * The simulated drive: the DriveStore contract (the same checks as the conformance suite), the
 * engine's format/open on top of it, and each fault: crashes, latent errors, misdirected writes,
 * unplug, dead incarnations, and replay of a seed.
 */
import { describe, expect, test } from "bun:test";
import { formatDrive } from "../../src/engine/drive/format.ts";
import { openDrive } from "../../src/engine/drive/formatted-drive.ts";
import { DriveIoError, type DriveStore } from "../../src/engine/drive/store.ts";
import type { Network } from "../../src/engine/net/conn.ts";
import {
  type DriveProfile,
  openSimDrive,
  quietDriveProfile,
  randomDriveProfile,
  SECTOR_BYTES,
  SimDriveStore,
  SimMedium,
} from "../../sim/drive.ts";
import { SimNode } from "../../sim/node.ts";
import { World } from "../../sim/world.ts";

const SIZE = 8 << 20;
const DRIVE_UUID = "5f0c8a52-3d6e-4f1a-9b7e-2c4d6e8fa001";
const CLUSTER_UUID = "0b7e9d14-6a2c-4e58-8f31-7c9a1b2d3e40";
const noNet = { forIncarnation: () => ({}) as unknown as Network };

function setup(seed = 1, profile: DriveProfile = quietDriveProfile(), size = SIZE) {
  const world = new World(seed, { keep_trace: 2000 });
  const medium = new SimMedium(world, { name: "d1", size_bytes: size, profile });
  const node = new SimNode(world, "n1", noNet, { offset_ms: 0, rate: 1 });
  const { inc } = node.boot();
  const store = openSimDrive(world, medium, inc, world.prng.fork("d1"));
  return { world, medium, node, inc, store };
}

/** Runs the world until `p` settles; fails if it never does. */
async function io<T>(world: World, p: Promise<T>): Promise<T> {
  let settled = false;
  p.then(
    () => (settled = true),
    () => (settled = true),
  );
  await new Promise((r) => setImmediate(r));
  await world.run(() => settled, world.now + 60_000);
  if (!settled) throw new Error(`operation still pending at ${world.now} ms`);
  return p;
}

/** Tracks whether a promise ever settles, without driving the world. */
function watch(p: Promise<unknown>): { settled: boolean } {
  const w = { settled: false };
  p.then(
    () => (w.settled = true),
    () => (w.settled = true),
  );
  return w;
}

function pattern(length: number, seed: number): Uint8Array<ArrayBuffer> {
  const b = new Uint8Array(length);
  for (let i = 0; i < length; i++) b[i] = (i * 31 + seed * 7 + (i >> 8)) & 0xff;
  return b;
}

async function expectCode(world: World, p: Promise<unknown>, code: DriveIoError["code"], msg?: string): Promise<DriveIoError> {
  const e = await io(world, p).then(
    () => null,
    (x: unknown) => x,
  );
  expect(e).toBeInstanceOf(DriveIoError);
  expect((e as DriveIoError).code).toBe(code);
  if (msg) expect((e as DriveIoError).message).toContain(msg);
  return e as DriveIoError;
}

/** Per sector of `got`: matches `before`, matches `after`, or neither (a mixed sector: a bug). */
function classify(got: Uint8Array, before: Uint8Array, after: Uint8Array): "applied" | "lost" | "torn" | "mixed" {
  let olds = 0;
  let news = 0;
  for (let i = 0; i < got.length; i += SECTOR_BYTES) {
    const g = got.subarray(i, i + SECTOR_BYTES);
    const isNew = Buffer.from(g).equals(after.subarray(i, i + SECTOR_BYTES));
    const isOld = Buffer.from(g).equals(before.subarray(i, i + SECTOR_BYTES));
    if (isNew) news++;
    else if (isOld) olds++;
    else return "mixed";
  }
  const n = got.length / SECTOR_BYTES;
  return news === n ? "applied" : olds === n ? "lost" : "torn";
}

// ---- The DriveStore contract: the checks of tests/engine/drive-store-conformance.test.ts. ----

const BACKENDS: [string, () => Promise<{ world: World; s: DriveStore }>][] = [
  [
    "SimDriveStore",
    async () => {
      const { world, store } = setup(11, randomDriveProfile(new World(11).prng));
      return { world, s: store };
    },
  ],
  [
    "data area of a formatted SimDriveStore",
    async () => {
      const { world, store } = setup(12, quietDriveProfile(), 16 << 20);
      await io(world, formatDrive(store, { drive_uuid: DRIVE_UUID, extent_size_bytes: 1 << 20 }));
      return { world, s: (await io(world, openDrive(store, "sim"))).data };
    },
  ],
];

for (const [name, make] of BACKENDS) {
  describe(`DriveStore contract: ${name}`, () => {
    test("read after write returns the written bytes, neighbours untouched", async () => {
      const { world, s } = await make();
      const a = pattern(4096, 1);
      await io(world, s.write(8192, a, false));
      const got = new Uint8Array(4096 * 3);
      await io(world, s.read(4096, got));
      expect(got.subarray(4096, 8192)).toEqual(a);
      expect(got.subarray(0, 4096)).toEqual(new Uint8Array(4096));
      await io(world, s.close());
    });

    test("large and unaligned I/O round-trips", async () => {
      const { world, s } = await make();
      const big = pattern(3 * 1024 * 1024 + 123, 2);
      await io(world, s.write(777, big, false));
      const got = new Uint8Array(big.length);
      await io(world, s.read(777, got));
      expect(got).toEqual(big);
      const tiny = new Uint8Array([9, 8, 7]);
      await io(world, s.write(s.size_bytes - 3, tiny, true));
      const last = new Uint8Array(3);
      await io(world, s.read(s.size_bytes - 3, last));
      expect(last).toEqual(tiny);
      await io(world, s.close());
    });

    test("out-of-bounds and malformed ranges fail with ERANGE", async () => {
      const { world, s } = await make();
      await expectCode(world, s.read(s.size_bytes - 1, new Uint8Array(2)), "ERANGE");
      await expectCode(world, s.write(s.size_bytes, new Uint8Array(1), false), "ERANGE");
      await expectCode(world, s.read(-1, new Uint8Array(1)), "ERANGE");
      await expectCode(world, s.read(0.5, new Uint8Array(1)), "ERANGE");
      await expectCode(world, s.writeZeroes(0, s.size_bytes + 1, false), "ERANGE");
      await expectCode(world, s.trim(s.size_bytes, 1), "ERANGE");
      await io(world, s.close());
    });

    test("writeZeroes reads back zeroes, aligned or not, and leaves neighbours", async () => {
      const { world, s } = await make();
      const a = pattern(64 * 1024, 3);
      await io(world, s.write(0, a, false));
      await io(world, s.writeZeroes(4096, 8192, false));
      await io(world, s.writeZeroes(20000, 333, true));
      const got = new Uint8Array(a.length);
      await io(world, s.read(0, got));
      const want = a.slice();
      want.fill(0, 4096, 4096 + 8192);
      want.fill(0, 20000, 20333);
      expect(got).toEqual(want);
      await io(world, s.close());
    });

    test("trim succeeds and the range stays readable", async () => {
      const { world, s } = await make();
      await io(world, s.write(0, pattern(16384, 4), false));
      await io(world, s.trim(4096, 8192));
      await io(world, s.trim(100, 5));
      await io(world, s.read(0, new Uint8Array(16384)));
      await io(world, s.close());
    });

    test("flush succeeds; zero-length operations are accepted", async () => {
      const { world, s } = await make();
      await io(world, s.write(0, pattern(4096, 5), false));
      await io(world, s.flush());
      await io(world, s.write(10, new Uint8Array(0), false));
      await io(world, s.read(s.size_bytes, new Uint8Array(0)));
      await io(world, s.writeZeroes(0, 0, false));
      await io(world, s.close());
    });

    test("concurrent writes to distinct blocks all land", async () => {
      const { world, s } = await make();
      const blocks = Array.from({ length: 64 }, (_, i) => pattern(4096, 100 + i));
      await io(world, Promise.all(blocks.map((b, i) => s.write(i * 4096, b, false))));
      await io(world, s.flush());
      const got = new Uint8Array(4096);
      for (let i = 0; i < blocks.length; i++) {
        await io(world, s.read(i * 4096, got));
        expect(got).toEqual(blocks[i]!);
      }
      await io(world, s.close());
    });

    test("after close every operation fails with ECLOSED", async () => {
      const { world, s } = await make();
      await io(world, s.close());
      await expectCode(world, s.read(0, new Uint8Array(1)), "ECLOSED");
      await expectCode(world, s.write(0, new Uint8Array(1), false), "ECLOSED");
      await expectCode(world, s.flush(), "ECLOSED");
      await expectCode(world, s.writeZeroes(0, 1, false), "ECLOSED");
      await expectCode(world, s.trim(0, 1), "ECLOSED");
      await io(world, s.close());
    });
  });
}

describe("SimMedium", () => {
  test("is sparse: a 1 GiB drive holds only the sectors written", async () => {
    const { world, medium, store } = setup(1, quietDriveProfile(), 1 << 30);
    await io(world, store.write(512 << 20, pattern(8192, 1), false));
    await io(world, store.writeZeroes(0, 1 << 20, false));
    expect(medium.storedSectors).toBe(16 + 2048);
    await io(world, store.flush());
    // Flushed zero sectors are holes again.
    expect(medium.storedSectors).toBe(16);
    expect(medium.snapshot(512 << 20, 8192)).toEqual(pattern(8192, 1));
    expect(medium.durableSnapshot(512 << 20, 8192)).toEqual(pattern(8192, 1));
  });

  test("writes go to the cache, FUA writes and flushes make them durable", async () => {
    const { world, medium, store } = setup();
    await io(world, store.write(0, pattern(4096, 1), false));
    expect(medium.snapshot(0, 4096)).toEqual(pattern(4096, 1));
    expect(medium.durableSnapshot(0, 4096)).toEqual(new Uint8Array(4096));
    await io(world, store.write(8192, pattern(4096, 2), true));
    expect(medium.durableSnapshot(8192, 4096)).toEqual(pattern(4096, 2));
    expect(medium.durableSnapshot(0, 4096)).toEqual(new Uint8Array(4096));
    await io(world, store.flush());
    expect(medium.durableSnapshot(0, 4096)).toEqual(pattern(4096, 1));
    expect(medium.volatileWrites).toBe(0);
  });

  test("a flush covers only the writes that resolved before it was called", async () => {
    const { world, medium, store } = setup(); // write 0.05 ms, flush 0.1 ms
    await io(world, store.write(0, pattern(4096, 1), false));
    const flush = store.flush();
    const later = store.write(4096, pattern(4096, 2), false);
    const w = watch(later);
    await io(world, flush);
    expect(w.settled).toBe(true); // it resolved while the flush was running ...
    expect(medium.durableSnapshot(0, 4096)).toEqual(pattern(4096, 1));
    expect(medium.durableSnapshot(4096, 4096)).toEqual(new Uint8Array(4096)); // ... so it is not covered
    expect(medium.snapshot(4096, 4096)).toEqual(pattern(4096, 2));
  });
});

describe("formatDrive and openDrive on a simulated drive", () => {
  test("format, claim, write metadata, lose power, reopen from the next incarnation", async () => {
    const { world, medium, node, store } = setup(3, quietDriveProfile(), 64 << 20);
    await io(world, formatDrive(store, { drive_uuid: DRIVE_UUID, extent_size_bytes: 1 << 20 }));
    const drive = await io(world, openDrive(store, "sim"));
    await io(world, drive.claim(CLUSTER_UUID));
    await io(world, drive.metaWrite(1, new TextEncoder().encode("gen one")));
    // Unflushed data-area writes are fair game for the power loss; metadata is not.
    await io(world, drive.data.write(0, pattern(1 << 20, 9), false));
    node.crash("power");
    expect(medium.volatileWrites).toBe(0);

    const { inc } = node.boot();
    const again = await io(world, openDrive(openSimDrive(world, medium, inc, world.prng.fork("d1#2")), "sim"));
    expect(again.info.drive_uuid).toBe(DRIVE_UUID);
    expect(again.info.cluster_uuid).toBe(CLUSTER_UUID);
    const meta = await io(world, again.metaRead());
    expect(meta.generation).toBe(1);
    expect(new TextDecoder().decode(meta.payload!)).toBe("gen one");
  });

  test("format refuses a drive that already holds one", async () => {
    const { world, store } = setup(4, quietDriveProfile(), 16 << 20);
    await io(world, formatDrive(store, { drive_uuid: DRIVE_UUID, extent_size_bytes: 1 << 20 }));
    const e = await io(world, formatDrive(store, { drive_uuid: DRIVE_UUID, extent_size_bytes: 1 << 20 })).catch((x: unknown) => x);
    expect(String(e)).toContain("already holds nvmesh drive");
  });
});

describe("crashes", () => {
  const A = 0;
  const B = 64 << 10;
  const C = 128 << 10;
  const D = 192 << 10;
  const LEN = 16 * SECTOR_BYTES;

  test("power loss: FUA and flushed writes survive, unflushed ones are lost, applied or torn per sector", async () => {
    const cached = new Set<string>();
    const inflight = new Set<string>();
    for (let seed = 1; seed <= 40; seed++) {
      const { world, medium, node, store } = setup(seed);
      // Old content everywhere, durable.
      for (const at of [A, B, C, D]) await io(world, store.write(at, pattern(LEN, 0), true));
      await io(world, store.write(A, pattern(LEN, 1), true));
      await io(world, store.write(B, pattern(LEN, 2), false));
      await io(world, store.flush());
      await io(world, store.write(C, pattern(LEN, 3), false));
      const d = watch(store.write(D, pattern(LEN, 4), false)); // still in flight
      node.crash("power");
      expect(medium.volatileWrites).toBe(0);
      expect(medium.snapshot(0, 256 << 10)).toEqual(medium.durableSnapshot(0, 256 << 10));
      expect(medium.durableSnapshot(A, LEN)).toEqual(pattern(LEN, 1));
      expect(medium.durableSnapshot(B, LEN)).toEqual(pattern(LEN, 2));
      cached.add(classify(medium.durableSnapshot(C, LEN), pattern(LEN, 0), pattern(LEN, 3)));
      inflight.add(classify(medium.durableSnapshot(D, LEN), pattern(LEN, 0), pattern(LEN, 4)));
      await world.advance(100);
      expect(d.settled).toBe(false);
    }
    expect([...cached].sort()).toEqual(["applied", "lost", "torn"]);
    expect([...inflight].sort()).toEqual(["applied", "lost", "torn"]);
  });

  test("a FUA write is never undone by an older cached write of the same sectors", async () => {
    for (let seed = 1; seed <= 20; seed++) {
      const { world, medium, node, store } = setup(seed);
      await io(world, store.write(0, pattern(LEN, 1), false));
      await io(world, store.write(1024, pattern(1024, 2), true));
      node.crash("power");
      const got = medium.durableSnapshot(0, LEN);
      expect(got.subarray(1024, 2048)).toEqual(pattern(1024, 2));
    }
  });

  test("process crash: acknowledged writes survive, in-flight ones are applied, lost or torn", async () => {
    const outcomes = new Set<string>();
    for (let seed = 1; seed <= 40; seed++) {
      const { world, medium, node, store } = setup(seed);
      await io(world, store.write(C, pattern(LEN, 3), false));
      const d = watch(store.write(D, pattern(LEN, 4), false));
      node.crash("process");
      // The page cache is the kernel's: still there, still not durable.
      expect(medium.snapshot(C, LEN)).toEqual(pattern(LEN, 3));
      expect(medium.durableSnapshot(C, LEN)).toEqual(new Uint8Array(LEN));
      outcomes.add(classify(medium.snapshot(D, LEN), new Uint8Array(LEN), pattern(LEN, 4)));
      await world.advance(100);
      expect(d.settled).toBe(false);

      const { inc } = node.boot();
      const next = openSimDrive(world, medium, inc, world.prng.fork("d1#2"));
      const got = new Uint8Array(LEN);
      await io(world, next.read(C, got));
      expect(got).toEqual(pattern(LEN, 3));
      await io(world, next.flush());
      expect(medium.durableSnapshot(C, LEN)).toEqual(pattern(LEN, 3));
    }
    expect([...outcomes].sort()).toEqual(["applied", "lost", "torn"]);
  });
});

describe("latent read errors", () => {
  test("a read touching the sector fails with EIO; a rewrite clears it", async () => {
    const { world, medium, store } = setup();
    await io(world, store.write(0, pattern(8192, 1), false));
    medium.injectReadError(10);
    await expectCode(world, store.read(0, new Uint8Array(8192)), "EIO", "sector 10");
    await expectCode(world, store.read(10 * SECTOR_BYTES + 100, new Uint8Array(1)), "EIO");
    const head = new Uint8Array(5120);
    await io(world, store.read(0, head)); // sectors 0..9 are fine
    expect(head).toEqual(pattern(8192, 1).subarray(0, 5120));
    await io(world, store.write(10 * SECTOR_BYTES, pattern(SECTOR_BYTES, 2), false));
    expect(medium.hasReadError(10)).toBe(false);
    const got = new Uint8Array(SECTOR_BYTES);
    await io(world, store.read(10 * SECTOR_BYTES, got));
    expect(got).toEqual(pattern(SECTOR_BYTES, 2));
  });

  test("the profile's rate leaves a latent error behind a write", async () => {
    const { world, medium, store } = setup(5, { ...quietDriveProfile(), read_error_rate: 1 });
    await io(world, store.write(4096, pattern(4096, 1), false));
    const bad = Array.from({ length: 8 }, (_, i) => 8 + i).filter((s) => medium.hasReadError(s));
    expect(bad.length).toBe(1);
    await expectCode(world, store.read(4096, new Uint8Array(4096)), "EIO");
    expect(world.lastTrace(5).join("\n")).toContain("latent read error");
  });
});

describe("misdirected writes", () => {
  test("the write lands elsewhere and the intended sectors keep their old content", async () => {
    const { world, medium, store } = setup(6, { ...quietDriveProfile(), misdirect_rate: 1 });
    await io(world, store.write(4096, pattern(1024, 1), false));
    expect(medium.misdirected.length).toBe(1);
    const m = medium.misdirected[0]!;
    expect(m.intended).toBe(4096);
    expect(m.landed).not.toBe(4096);
    expect(m.landed % SECTOR_BYTES).toBe(0);
    expect(medium.snapshot(4096, 1024)).toEqual(new Uint8Array(1024));
    expect(medium.snapshot(m.landed, 1024)).toEqual(pattern(1024, 1));
    expect(world.lastTrace(5).join("\n")).toContain("MISDIRECTED WRITE 4096+1024");
  });
});

describe("hot-unplug", () => {
  test("fails pending and further ops with EIO; replugging elsewhere serves the durable data", async () => {
    const { world, medium, store } = setup();
    await io(world, store.write(0, pattern(4096, 1), true));
    const pending = store.write(8192, pattern(4096, 2), false);
    pending.catch(() => {});
    medium.unplug(world.prng.fork("unplug"));
    expect(medium.plugged).toBe(false);
    await expectCode(world, pending, "EIO", "unplugged");
    await expectCode(world, store.read(0, new Uint8Array(1)), "EIO", "unplugged");
    await expectCode(world, store.write(0, new Uint8Array(1), true), "EIO", "unplugged");
    await expectCode(world, store.flush(), "EIO", "unplugged");

    const other = new SimNode(world, "n2", noNet, { offset_ms: 5, rate: 1 });
    const { inc } = other.boot();
    const moved = openSimDrive(world, medium, inc, world.prng.fork("d1@n2"));
    expect(medium.plugged).toBe(true);
    const got = new Uint8Array(4096);
    await io(world, moved.read(0, got));
    expect(got).toEqual(pattern(4096, 1));
    // The old handle stays dead: the drive it knew was pulled.
    await expectCode(world, store.read(0, new Uint8Array(1)), "EIO", "unplugged");
  });
});

describe("a dead incarnation", () => {
  test("never sees its ops resolve, whether issued before or after the death", async () => {
    const { world, node, store } = setup();
    const before = [
      watch(store.read(0, new Uint8Array(512))),
      watch(store.write(0, pattern(512, 1), false)),
      watch(store.flush()),
      watch(store.writeZeroes(0, 512, true)),
    ];
    node.crash("process");
    const after = [watch(store.read(0, new Uint8Array(512))), watch(store.write(0, pattern(512, 1), true)), watch(store.close())];
    expect(await world.run(() => false, 1000)).not.toBe("failed");
    for (const w of [...before, ...after]) expect(w.settled).toBe(false);
  });

  test("cannot change the medium after its death", async () => {
    // A handle without the crash hook: nothing settles its in-flight write as the kernel's.
    const world = new World(7);
    const medium = new SimMedium(world, { name: "d1", size_bytes: SIZE });
    const node = new SimNode(world, "n1", noNet, { offset_ms: 0, rate: 1 });
    const { inc } = node.boot();
    const store = new SimDriveStore(world, medium, inc, world.prng.fork("d1"));
    const w = watch(store.write(0, pattern(4096, 1), true));
    node.crash("process");
    await world.advance(1000);
    expect(w.settled).toBe(false);
    expect(medium.snapshot(0, 4096)).toEqual(new Uint8Array(4096));
  });
});

describe("determinism", () => {
  async function scenario(seed: number): Promise<string> {
    const world = new World(seed);
    const profile = randomDriveProfile(world.prng.fork("profile"), { read_error_rate: 0.05, misdirect_rate: 0.05 });
    const medium = new SimMedium(world, { name: "d1", size_bytes: SIZE, profile });
    const node = new SimNode(world, "n1", noNet, { offset_ms: 0, rate: 1 });
    const { inc } = node.boot();
    const store = openSimDrive(world, medium, inc, world.prng.fork("d1"));
    const rng = world.prng.fork("workload");
    for (let i = 0; i < 60; i++) {
      const len = rng.int(1, 9) * 1000;
      const p = store.write(rng.int(0, (1 << 20) - len), pattern(len, i), rng.chance(0.3));
      p.catch(() => {});
      if (rng.chance(0.1)) store.flush().catch(() => {});
    }
    world.after(rng.range(0.5, 30), () => node.crash(rng.chance(0.5) ? "power" : "process"));
    await world.advance(200);
    world.log("test", `durable ${Bun.hash(medium.durableSnapshot(0, 1 << 20)).toString(16)}`);
    world.log("test", `visible ${Bun.hash(medium.snapshot(0, 1 << 20)).toString(16)}`);
    return world.traceHash;
  }

  test("the same seed gives the same trace; different seeds differ", async () => {
    expect(await scenario(42)).toBe(await scenario(42));
    const hashes = new Set([await scenario(1), await scenario(2), await scenario(3)]);
    expect(hashes.size).toBe(3);
  });
});
