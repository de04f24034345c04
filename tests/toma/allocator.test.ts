import { describe, expect, test } from "bun:test";
import { allocate, freeExtents, type Topology, type VolumeRequest } from "../../src/toma/allocator.ts";
import { apply, type ClusterState, decodeState, emptyState, encodeState } from "../../src/toma/cluster-state.ts";

const MiB = 1024 * 1024;
const EXT = MiB;
const uuid = (n: number) => `00000000-0000-4000-8000-${n.toString(16).padStart(12, "0")}`;
const CLUSTER = uuid(0xc1);

/** Drives 1..n with `extents` extents of 1 MiB each; drive i on target t(i). */
function cluster(extents: number[], targetOf: (i: number) => string = (i) => `t${i}`): { state: ClusterState; topo: Topology } {
  let state = emptyState(CLUSTER);
  extents.forEach((n, i) => {
    const r = apply(state, { kind: "add_drive", drive: { drive_uuid: uuid(i + 1), extent_size_bytes: EXT, extent_count: n } });
    if (!r.ok) throw new Error(r.error);
    state = r.state;
  });
  const topo: Topology = {
    usable: new Set(extents.map((_, i) => uuid(i + 1))),
    target_of: new Map(extents.map((_, i) => [uuid(i + 1), targetOf(i + 1)])),
  };
  return { state, topo };
}

function create(state: ClusterState, topo: Topology, req: VolumeRequest): ClusterState {
  const a = allocate(state, req, topo);
  if (!a.ok) throw new Error(a.error);
  const r = apply(state, { kind: "create_volume", uuid: uuid(1000 + state.volumes.length), name: req.name, capacity_bytes: req.capacity_bytes, raid_level: req.raid_level, ...a.alloc });
  if (!r.ok) throw new Error(r.error);
  return r.state;
}

describe("allocator refusals", () => {
  const { state, topo } = cluster([10, 10, 10]);
  const withVol = create(state, topo, { name: "taken", capacity_bytes: MiB, raid_level: "concatenated" });
  const cases: [string, ClusterState, VolumeRequest, string, RegExp][] = [
    ["capacity 0", state, { name: "a", capacity_bytes: 0, raid_level: "concatenated" }, "invalid", /multiple of 512/],
    ["capacity not multiple of 512", state, { name: "a", capacity_bytes: 1000, raid_level: "concatenated" }, "invalid", /multiple of 512/],
    ["too large", state, { name: "a", capacity_bytes: 31 * MiB, raid_level: "concatenated" }, "no_space", /not enough free space/],
    ["raid0 too large per column", state, { name: "a", capacity_bytes: 33 * MiB, raid_level: "0", stripe_width: 3 }, "no_space", /not enough free space/],
    ["stripe_width > drives", state, { name: "a", capacity_bytes: MiB, raid_level: "0", stripe_width: 4 }, "no_space", /exceeds the 3 usable drives/],
    ["stripe size not power of two", state, { name: "a", capacity_bytes: MiB, raid_level: "0", stripe_size_bytes: 12288 }, "invalid", /power of two/],
    ["stripe size below 4 KiB", state, { name: "a", capacity_bytes: MiB, raid_level: "0", stripe_size_bytes: 2048 }, "invalid", /power of two/],
    ["stripe_width 0", state, { name: "a", capacity_bytes: MiB, raid_level: "0", stripe_width: 0 }, "invalid", /positive integer/],
    ["stripe_width on concatenated", state, { name: "a", capacity_bytes: MiB, raid_level: "concatenated", stripe_width: 2 }, "invalid", /raid_level "0" only/],
    ["name taken", withVol, { name: "taken", capacity_bytes: MiB, raid_level: "concatenated" }, "name_taken", /already exists/],
    ["bad name: slash", state, { name: "a/b", capacity_bytes: MiB, raid_level: "concatenated" }, "invalid", /bad volume name/],
    ["bad name: empty", state, { name: "", capacity_bytes: MiB, raid_level: "concatenated" }, "invalid", /bad volume name/],
    ["bad name: 65 chars", state, { name: "x".repeat(65), capacity_bytes: MiB, raid_level: "concatenated" }, "invalid", /bad volume name/],
  ];
  for (const [title, s, req, code, msg] of cases) {
    test(title, () => {
      const r = allocate(s, req, topo);
      expect(r.ok).toBe(false);
      if (r.ok) return;
      expect(r.code).toBe(code as typeof r.code);
      expect(r.error).toMatch(msg);
    });
  }

  test("no usable drive at all", () => {
    const r = allocate(state, { name: "a", capacity_bytes: MiB, raid_level: "concatenated" }, { usable: new Set(), target_of: new Map() });
    expect(r.ok).toBe(false);
  });
});

describe("allocator placement", () => {
  test("concatenated fills the drive with most free extents first", () => {
    const { state, topo } = cluster([4, 8, 6]);
    const a = allocate(state, { name: "v", capacity_bytes: 10 * MiB, raid_level: "concatenated" }, topo);
    if (!a.ok) throw new Error(a.error);
    expect(a.alloc.columns.map((c) => [c.drive_uuid, c.extents.length])).toEqual([
      [uuid(2), 8],
      [uuid(3), 2],
    ]);
    expect(a.alloc.stripe_width).toBe(2);
  });

  test("successive concatenated volumes spread over drives", () => {
    const { state, topo } = cluster([8, 8, 8]);
    let s = state;
    for (const name of ["a", "b", "c"]) s = create(s, topo, { name, capacity_bytes: 3 * MiB, raid_level: "concatenated" });
    expect(s.volumes.map((x) => x.columns[0]!.drive_uuid).sort()).toEqual([uuid(1), uuid(2), uuid(3)]);
  });

  test("capacity rounds up to whole extents; exact fit of all space works", () => {
    const { state, topo } = cluster([2, 2]);
    const s = create(state, topo, { name: "full", capacity_bytes: 4 * MiB, raid_level: "concatenated" });
    expect([...freeExtents(s).values()].every((f) => f.length === 0)).toBe(true);
    const r = allocate(s, { name: "more", capacity_bytes: 512, raid_level: "concatenated" }, topo);
    expect(r.ok).toBe(false);
  });

  test("raid0 column size is ceil(capacity/W/stripe)*stripe rounded up to extents", () => {
    const { state, topo } = cluster([10, 10, 10]);
    // 3 MiB + 512 over 3 columns with 64 KiB stripes: 1 MiB + 64 KiB per column → 2 extents each.
    const a = allocate(state, { name: "r", capacity_bytes: 3 * MiB + 512, raid_level: "0", stripe_width: 3, stripe_size_bytes: 65536 }, topo);
    if (!a.ok) throw new Error(a.error);
    expect(a.alloc.columns.map((c) => c.extents.length)).toEqual([2, 2, 2]);
    expect(new Set(a.alloc.columns.map((c) => c.drive_uuid)).size).toBe(3);
  });

  test("raid0 prefers distinct targets over the roomiest drives", () => {
    // Drives 1,2 on target A (roomiest), drive 3 on target B.
    const { state, topo } = cluster([20, 19, 5], (i) => (i <= 2 ? "A" : "B"));
    const a = allocate(state, { name: "r", capacity_bytes: 2 * MiB, raid_level: "0", stripe_width: 2 }, topo);
    if (!a.ok) throw new Error(a.error);
    expect(a.alloc.columns.map((c) => c.drive_uuid).sort()).toEqual([uuid(1), uuid(3)]);
  });

  test("raid0 default width is every usable drive; default stripe 64 KiB", () => {
    const { state, topo } = cluster([4, 4, 4, 4]);
    const a = allocate(state, { name: "r", capacity_bytes: 4 * MiB, raid_level: "0" }, topo);
    if (!a.ok) throw new Error(a.error);
    expect(a.alloc.stripe_width).toBe(4);
    expect(a.alloc.stripe_size_bytes).toBe(65536);
  });

  test("unreachable drives receive nothing", () => {
    const { state, topo } = cluster([4, 100]);
    const only1: Topology = { ...topo, usable: new Set([uuid(1)]) };
    const a = allocate(state, { name: "v", capacity_bytes: 2 * MiB, raid_level: "concatenated" }, only1);
    if (!a.ok) throw new Error(a.error);
    expect(a.alloc.columns.map((c) => c.drive_uuid)).toEqual([uuid(1)]);
  });

  test("free extents come back after delete, at once on a drive that confirmed its fence without the volume", () => {
    const { state, topo } = cluster([4]);
    const s = create(state, topo, { name: "v", capacity_bytes: 4 * MiB, raid_level: "concatenated" });
    const d = apply(s, { kind: "delete_volume", name: "v", released: [uuid(1)] });
    if (!d.ok) throw new Error(d.error);
    expect(freeExtents(d.state).get(uuid(1))).toEqual([0, 1, 2, 3]);
    expect(d.state.retired).toEqual([]);
  });

  test("a deleted volume's extents on a drive that has not confirmed stay retired until released, and no new volume takes them", () => {
    const { state, topo } = cluster([4]);
    const s = create(state, topo, { name: "v", capacity_bytes: 4 * MiB, raid_level: "concatenated" });
    const v = s.volumes[0]!;
    const d = apply(s, { kind: "delete_volume", name: "v" });
    if (!d.ok) throw new Error(d.error);
    expect(d.state.retired).toEqual([{ volume_uuid: v.uuid, drive_uuid: uuid(1), extents: [0, 1, 2, 3] }]);
    expect(freeExtents(d.state).get(uuid(1))).toEqual([]);
    const full = allocate(d.state, { name: "w", capacity_bytes: MiB, raid_level: "concatenated" }, topo);
    expect(full.ok).toBe(false);
    // Survives the round trip through a metadata slot, and a corrupt one is caught.
    expect(decodeState(encodeState(d.state))).toEqual(d.state);
    const r = apply(d.state, { kind: "release_extents", volume_uuid: v.uuid, drive_uuid: uuid(1) });
    if (!r.ok) throw new Error(r.error);
    expect(freeExtents(r.state).get(uuid(1))).toEqual([0, 1, 2, 3]);
    expect(apply(r.state, { kind: "release_extents", volume_uuid: v.uuid, drive_uuid: uuid(1) })).toMatchObject({ ok: false, code: "not_found" });
  });
});

describe("debug-format volumes", () => {
  for (const [title, req] of [
    ["concatenated", { raid_level: "concatenated" }],
    ["RAID0", { raid_level: "0", stripe_width: 2 }],
    ["RAID1", { raid_level: "1" }],
    ["RAID10", { raid_level: "10", stripe_width: 2 }],
  ] as const) {
    test(`${title}: 4 × the capacity is allocated, and the result is admitted`, () => {
      const { state, topo } = cluster([40, 40, 40, 40]);
      const plain = allocate(state, { name: "p", capacity_bytes: 4 * MiB, ...req }, topo);
      const debug = allocate(state, { name: "d", capacity_bytes: 4 * MiB, debug_format: true, ...req }, topo);
      if (!plain.ok || !debug.ok) throw new Error("allocation failed");
      const bytes = (a: typeof plain) => (a.ok ? a.alloc.columns.reduce((n, c) => n + c.extents.length, 0) * EXT : 0);
      expect(bytes(debug)).toBe(4 * bytes(plain));
      const r = apply(state, { kind: "create_volume", uuid: uuid(999), name: "d", capacity_bytes: 4 * MiB, raid_level: req.raid_level, debug_format: true, ...debug.alloc });
      expect(r.ok).toBe(true);
    });
  }

  test("a debug volume that fits only without the 4x is refused", () => {
    const { state, topo } = cluster([10]);
    expect(allocate(state, { name: "p", capacity_bytes: 8 * MiB, raid_level: "concatenated" }, topo).ok).toBe(true);
    const a = allocate(state, { name: "d", capacity_bytes: 8 * MiB, raid_level: "concatenated", debug_format: true }, topo);
    expect(a.ok).toBe(false);
    if (!a.ok) expect(a.error).toMatch(/debug format/);
  });
});
