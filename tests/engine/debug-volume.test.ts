/**
 * The debug format's data path on every layout, over a real target (tests/engine/volume-fixture.ts):
 * what the client reads back, and what lands on the drives, sector by sector, decoded.
 */
import { afterEach, describe, expect, test } from "bun:test";
import { decodeSector, type DebugSector, SECTOR_BYTES } from "../../src/debugfmt/sector.ts";
import { layoutPlacement } from "../../src/debugfmt/placement.ts";
import { scan } from "../../src/debugfmt/scan.ts";
import { encodeIoForLeg, ioSectorFields } from "../../src/debugfmt/write.ts";
import { DebugVolume } from "../../src/engine/client/debug-volume.ts";
import { DriveIoError } from "../../src/engine/drive/store.ts";
import { plan, planMirror } from "../../src/engine/layout/planner.ts";
import type { RaidLevel } from "../../src/engine/layout/types.ts";
import { pattern } from "./target-fixture.ts";
import { startVolume, type VolumeFixture } from "./volume-fixture.ts";

const MiB = 1024 * 1024;
const LEVELS: RaidLevel[] = ["concatenated", "0", "1", "10"];
let open: VolumeFixture[] = [];

afterEach(async () => {
  for (const f of open) await f.close();
  open = [];
});

async function volume(level: RaidLevel, extra: Partial<Parameters<typeof startVolume>[1]> = {}): Promise<VolumeFixture> {
  const f = await startVolume(level, { capacity_bytes: 2 * MiB, debug_format: true, ...extra });
  open.push(f);
  return f;
}

/** Every physical copy of logical sector `lba`: [leg, decoded] per leg (one for unmirrored). */
async function copies(f: VolumeFixture, lba: number): Promise<{ leg: number; column: number; bytes: Uint8Array; sector: DebugSector | null }[]> {
  const layout = f.layout;
  const out: { leg: number; column: number; bytes: Uint8Array; sector: DebugSector | null }[] = [];
  const place = layout.mirrors > 1
    ? planMirror(layout, lba * SECTOR_BYTES, SECTOR_BYTES)[0]!.legs.map((l, leg) => ({ leg, drive_uuid: l.drive_uuid, drive_offset: l.drive_offset }))
    : plan(layout, lba * SECTOR_BYTES, SECTOR_BYTES).map((s) => ({ leg: 0, drive_uuid: s.drive_uuid, drive_offset: s.drive_offset }));
  for (const p of place) {
    const column = layout.columns.findIndex((c) => c.drive_uuid === p.drive_uuid);
    const bytes = new Uint8Array(SECTOR_BYTES);
    await f.drives[column]!.data.read(p.drive_offset, bytes);
    const d = decodeSector(bytes);
    out.push({ leg: p.leg, column, bytes, sector: d.ok ? d.fields : null });
  }
  return out;
}

async function rejection(p: Promise<unknown>): Promise<unknown> {
  return await p.then(() => null, (e: unknown) => e);
}

for (const level of LEVELS) {
  describe(`debug format on ${level === "concatenated" ? "a concatenated" : `a RAID${level}`} volume`, () => {
    test("the device is 1/4 of the physical space; writes read back, unaligned ones and zeroing included", async () => {
      const f = await volume(level);
      const d = f.debug!;
      expect(d.size_bytes).toBe(2 * MiB);
      expect(f.device.size_bytes).toBe(8 * MiB);
      const shadow = new Uint8Array(d.size_bytes);
      const put = async (off: number, data: Uint8Array) => {
        await d.write(off, data, false);
        shadow.set(data, off);
      };
      // Across stripe units, lock units and (concatenated) the drive boundary at 1 MiB.
      await put(MiB - 40 * 512, pattern(1, 96 * 512));
      await put(777, pattern(2, 3000)); // starts and ends inside sectors
      await put(5000, pattern(3, 100)); // inside one sector
      await put(d.size_bytes - 512, pattern(4, 512));
      await d.writeZeroes(MiB - 30 * 512 + 7, 2000, false);
      shadow.fill(0, MiB - 30 * 512 + 7, MiB - 30 * 512 + 7 + 2000);
      await d.trim(0, 512); // a whole sector: stored as trimmed (zero) data
      shadow.fill(0, 0, 512);
      const back = new Uint8Array(d.size_bytes);
      await d.read(0, back);
      expect(Buffer.from(back).equals(Buffer.from(shadow))).toBe(true);
      const odd = new Uint8Array(1001);
      await d.read(333, odd);
      expect(odd).toEqual(shadow.subarray(333, 1334));
    });

    test("each copy on the drives: the block's LBA, this client, its leg, the legs written, the topology, the lock", async () => {
      const f = await volume(level, { client_id: 4242, client_name: "unit-client" });
      const d = f.debug!;
      const lba = 2040; // the last sectors before 1 MiB (a drive boundary when concatenated)
      await d.write(lba * 512, pattern(5, 16 * 512), true);
      const legs = f.layout.mirrors;
      for (let i = 0; i < 16; i++) {
        const cs = await copies(f, lba + i);
        expect(cs.length).toBe(legs);
        for (const c of cs) {
          expect(c.sector).not.toBeNull();
          const s = c.sector!;
          expect(s).toMatchObject({
            volume_uuid: f.layout.volume_uuid,
            lba: lba + i,
            client_id: 4242,
            client_name: "unit-client",
            generation: 5,
            topo_state: legs > 1 ? "normal" : "none",
            leg_count: legs,
            legs_mask: (1 << legs) - 1,
            leg_index: c.leg,
            locked: legs > 1,
            op: "write",
            fua: true,
            io_first_lba: lba,
            io_sectors: 16,
            io_index: i,
          });
          expect(s.data).toEqual(pattern(5, 16 * 512).subarray(i * 512, (i + 1) * 512));
        }
      }
    });

    test("seq numbers the client's sends and grows with them; zeroing and trim are recorded as such", async () => {
      const f = await volume(level);
      const d = f.debug!;
      await d.write(0, pattern(6, 512), false);
      await d.write(4096, pattern(7, 512), false);
      await d.writeZeroes(8192, 1024, false);
      await d.trim(16384, 512);
      const [a] = await copies(f, 0);
      const [b] = await copies(f, 8);
      const [z] = await copies(f, 16);
      const [t] = await copies(f, 32);
      expect(b!.sector!.seq).toBeGreaterThan(a!.sector!.seq);
      expect(z!.sector).toMatchObject({ op: "write_zeroes", io_sectors: 2 });
      expect(z!.sector!.seq).toBeGreaterThan(b!.sector!.seq);
      expect(t!.sector!.op).toBe("trim");
      expect(t!.sector!.data).toEqual(new Uint8Array(512));
    });

    test("a corrupt copy fails the read with EIO (never garbage); never-written and other volumes' sectors read as zeros", async () => {
      const f = await volume(level);
      const d = f.debug!;
      await d.write(64 * 512, pattern(8, 512), false);
      // Another volume's sector where LBA 65 lives (an extent reused after a delete).
      const other = ioSectorFields({ volume_uuid: "11111111-2222-4333-8444-555555555555", client_id: 1, client_name: "x" }, {
        op: "write", fua: false, first_lba: 9, sectors: 1, seq: 1, generation: 1, topo_state: "none", leg_count: 1, legs_mask: 1, locked: false,
      }, pattern(9, 512));
      for (const c of await copies(f, 65)) {
        await f.drives[c.column]!.data.write(
          (await placeOf(f, 65, c.leg)).drive_offset,
          encodeIoForLeg(other, pattern(9, 512), 0),
          false,
        );
      }
      const z = new Uint8Array(3 * 512);
      await d.read(65 * 512, z);
      expect(z).toEqual(new Uint8Array(3 * 512));
      // Flip one data byte of every copy of LBA 64.
      for (const c of await copies(f, 64)) {
        c.bytes[10] = c.bytes[10]! ^ 1;
        await f.drives[c.column]!.data.write((await placeOf(f, 64, c.leg)).drive_offset, c.bytes, false);
      }
      const e = await rejection(d.read(63 * 512, new Uint8Array(1024)));
      expect(e).toBeInstanceOf(DriveIoError);
      expect((e as DriveIoError).code).toBe("EIO");
      expect((e as DriveIoError).message).toMatch(/LBA 64: data_mismatch/);
      expect(f.target.logs.some((l) => l.level === "error" && l.fields?.lba === 64)).toBe(true);
    });
  });
}

/** Where leg `leg`'s copy of logical sector lba is. */
async function placeOf(f: VolumeFixture, lba: number, leg: number): Promise<{ drive_offset: number }> {
  const layout = f.layout;
  if (layout.mirrors > 1) return planMirror(layout, lba * SECTOR_BYTES, SECTOR_BYTES)[0]!.legs[leg]!;
  return plan(layout, lba * SECTOR_BYTES, SECTOR_BYTES)[0]!;
}

describe("debug format on a degraded mirror", () => {
  test("a write records the degraded state and the one leg it went to", async () => {
    const f = await startVolume("1", { capacity_bytes: 2 * MiB, debug_format: true, topology: [{ legs: ["RWL", "DEAD"], interleaved: false, dirty: true }] });
    open.push(f);
    await f.debug!.write(0, pattern(10, 512), false);
    const [leg0, leg1] = await copies(f, 0);
    expect(leg0!.sector).toMatchObject({ topo_state: "degraded", legs_mask: 0b01, leg_index: 0, locked: true });
    expect(decodeSector(leg1!.bytes).ok).toBe(false); // never written: empty
  });
});

describe("a rebuilt leg", () => {
  test("a rebuild's raw copy (headers naming the source leg) scans clean, and later writes keep the legs equal", async () => {
    const f = await startVolume("1", { capacity_bytes: 2 * MiB, debug_format: true, topology: [{ legs: ["RWL", "DEAD"], interleaved: false, dirty: true }] });
    open.push(f);
    const d = f.debug!;
    for (let i = 0; i < 64; i++) await d.write(i * 4096, pattern(20 + i, 4096), false);
    // The rebuild copies leg 0's extents to leg 1 byte for byte (what src/toma/rebuild.ts does).
    const bytes = new Uint8Array(64 * 4096 * 4);
    await f.drives[0]!.data.read(MiB, bytes); // the volume's first extent is drive extent 1
    await f.drives[1]!.data.write(MiB, bytes, true);
    // Back to Normal, with a newer topology generation.
    f.device.install({ ...f.info, generation: 6, topology_generation: 6, stable_generation: 6, topology: [{ legs: ["RWL", "RWL"], interleaved: true, dirty: false }] });
    for (let i = 0; i < 32; i++) await d.write(i * 4096, pattern(200 + i, 4096), false);
    const [leg0, leg1] = await copies(f, 40 * 8); // a block only the degraded era wrote
    expect(leg0!.sector).toMatchObject({ leg_index: 0, topo_state: "degraded", legs_mask: 1 });
    expect(leg1!.sector).toMatchObject({ leg_index: 0, topo_state: "degraded", legs_mask: 1 }); // the copy names its source
    const files = [0, 1].map((c) => ({ name: f.source(c).name, drive_uuid: f.layout.columns[c]!.drive_uuid, extent_bytes: MiB }));
    const r = await scan(f.source(0), { peer: f.source(1), volume_uuid: f.layout.volume_uuid, placement: layoutPlacement(files, [f.layout]), known_volumes: new Set([f.layout.volume_uuid]) });
    expect(r.problems).toEqual([]);
    expect(r.peer!.same).toBe(64 * 8);
    const back = new Uint8Array(4096);
    await d.read(40 * 4096, back);
    expect(back).toEqual(pattern(60, 4096));
  });
});

describe("seq across attachments", () => {
  test("a new DebugVolume of the same daemon and volume continues the send count (no (client, seq) is reused)", async () => {
    const f = await startVolume("1", { capacity_bytes: 2 * MiB, debug_format: true });
    open.push(f);
    const counter = { value: 0 };
    const attach = () => new DebugVolume(f.device, { volume_uuid: f.layout.volume_uuid, writer: () => ({ client_id: 5, client_name: "d" }), log: f.target.env.log, seq: counter });
    await attach().write(0, pattern(30, 512), false);
    const [first] = await copies(f, 0);
    await attach().write(512, pattern(31, 512), false); // detached and attached again
    const [second] = await copies(f, 1);
    expect(second!.sector!.seq).toBeGreaterThan(first!.sector!.seq);
  });
});
