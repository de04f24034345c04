import { describe, expect, test } from "bun:test";
import { allocate, freeExtents, type Topology, type VolumeRequest } from "../../src/toma/allocator.ts";
import { apply, type ClusterState, emptyState } from "../../src/toma/cluster-state.ts";

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
    ["stripe_width > drives", state, { name: "a", capacity_bytes: MiB, raid_level: "0", stripe_width: 4 }, "no_space", /needs 4 drives; the cluster has 3 usable drives/],
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

  test("free extents come back after delete", () => {
    const { state, topo } = cluster([4]);
    const s = create(state, topo, { name: "v", capacity_bytes: 4 * MiB, raid_level: "concatenated" });
    const d = apply(s, { kind: "delete_volume", name: "v" });
    if (!d.ok) throw new Error(d.error);
    expect(freeExtents(d.state).get(uuid(1))).toEqual([0, 1, 2, 3]);
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

/** "at most 2560K fits" → bytes */
function atMost(error: string): number {
  const m = /at most (\d+)([KMGT]?) fits/.exec(error);
  if (!m) throw new Error(`no "at most" in: ${error}`);
  return Number(m[1]) * { "": 1, K: 2 ** 10, M: 2 ** 20, G: 2 ** 30, T: 2 ** 40 }[m[2]!]!;
}

function refusal(state: ClusterState, topo: Topology, req: Omit<VolumeRequest, "name">) {
  const r = allocate(state, { name: "x", ...req }, topo);
  if (r.ok) throw new Error(`allocated ${JSON.stringify(req)}`);
  return r;
}

describe("allocator: why a volume does not fit", () => {
  test("a mirror larger than the free space says so, with the free space and the most this layout can have", () => {
    // The report that started this: 99T on a small pool used to blame the servers.
    const { state, topo } = cluster([10, 10, 10]);
    const r = refusal(state, topo, { capacity_bytes: 99 * 2 ** 40, raid_level: "1" });
    expect(r.code).toBe("no_space");
    expect(r.reason).toBe("space");
    expect(r.error).toMatch(/^not enough free space for a RAID1 volume of 99T \(2 copies\): at most 10M fits in this layout, 30M is free/);
    expect(r.error).toMatch(/Ask for less, or add drives \('nvmesh drive show'/);
    expect(r.error).not.toMatch(/servers/);
  });

  // Each layout on pools of uneven drives: "at most X" is exact — X is allocated, X + 512 is not.
  const layouts: [string, Omit<VolumeRequest, "name" | "capacity_bytes">][] = [
    ["concatenated", { raid_level: "concatenated" }],
    ["RAID0 of 3", { raid_level: "0", stripe_width: 3, stripe_size_bytes: 65536 }],
    ["RAID0 of 2, 256K stripes", { raid_level: "0", stripe_width: 2, stripe_size_bytes: 256 * 1024 }],
    ["RAID1", { raid_level: "1" }],
    ["RAID1 × 3", { raid_level: "1", mirrors: 3 }],
    ["RAID10 of 2 sets", { raid_level: "10", stripe_width: 2 }],
    ["RAID1 debug format", { raid_level: "1", debug_format: true }],
    ["RAID0 debug format", { raid_level: "0", stripe_width: 2, debug_format: true }],
  ];
  const pools: [string, number[], (i: number) => string][] = [
    ["4 drives on 4 servers", [7, 12, 5, 9], (i) => `t${i}`],
    ["5 drives on 3 servers", [20, 3, 11, 8, 6], (i) => `t${i % 3}`],
  ];
  for (const [pool, extents, targetOf] of pools) {
    for (const [layout, req] of layouts) {
      test(`${layout} on ${pool}: "at most X" fits and X + 512 does not`, () => {
        const { state, topo } = cluster(extents, targetOf);
        const r = refusal(state, topo, { capacity_bytes: 2 ** 40, ...req });
        expect(r.reason).toBe("space");
        const most = atMost(r.error);
        expect(most).toBeGreaterThan(0);
        expect(allocate(state, { name: "x", capacity_bytes: most, ...req }, topo).ok).toBe(true);
        const over = allocate(state, { name: "x", capacity_bytes: most + 512, ...req }, topo);
        expect(over.ok).toBe(false);
        if (!over.ok) expect(over.reason).toBe("space");
      });
    }
  }

  test("full drives: nothing fits, and the free space elsewhere is still said", () => {
    const { state, topo } = cluster([0, 0, 4]);
    const r = refusal(state, topo, { capacity_bytes: MiB, raid_level: "1" });
    expect(r.reason).toBe("space");
    expect(r.error).toMatch(/nothing fits in this layout, 4M is free on the usable drives/);
  });

  test("a mirror on one server: needs drives on 2 servers, says how many there are and offers --allow-same-server", () => {
    const { state, topo } = cluster([10, 10], () => "A");
    const r = refusal(state, topo, { capacity_bytes: MiB, raid_level: "1" });
    expect(r.reason).toBe("drives");
    expect(r.error).toBe(
      "a RAID1 volume of 1M (2 copies) needs 2 drives on different servers; the cluster has 2 usable drives on 1 server. Use copies on one server (--allow-same-server), or add drives",
    );
  });

  test("3 copies on 2 drives: only fewer copies would fit, so --allow-same-server is not offered", () => {
    const { state, topo } = cluster([10, 10]);
    const r = refusal(state, topo, { capacity_bytes: MiB, raid_level: "1", mirrors: 3 });
    expect(r.reason).toBe("drives");
    expect(r.error).toMatch(/needs 3 drives on different servers; the cluster has 2 usable drives on 2 servers\. Use 2 copies \(--number-of-mirrors 2\), or add drives$/);
  });

  test("RAID10 wider than the cluster: the widest that fits is offered", () => {
    const { state, topo } = cluster([10, 10, 10, 10, 10]);
    const r = refusal(state, topo, { capacity_bytes: MiB, raid_level: "10", stripe_width: 4 });
    expect(r.reason).toBe("drives");
    expect(r.error).toMatch(/needs 8 drives, each set's 2 copies on different servers; the cluster has 5 usable drives on 5 servers\. Use --stripe-width 2 or less, or add drives$/);
  });

  test("RAID0 wider than the cluster", () => {
    const { state, topo } = cluster([10, 10, 10]);
    const r = refusal(state, topo, { capacity_bytes: MiB, raid_level: "0", stripe_width: 5 });
    expect(r.reason).toBe("drives");
    expect(r.error).toMatch(/striped over 5 drives needs 5 drives; the cluster has 3 usable drives on 3 servers\. Use --stripe-width 3 or less, or add drives$/);
  });

  test("unreachable drives are counted apart", () => {
    const { state, topo } = cluster([10, 10, 10]);
    const two: Topology = { ...topo, usable: new Set([uuid(1), uuid(2)]) };
    const r = refusal(state, two, { capacity_bytes: MiB, raid_level: "1", mirrors: 3 });
    expect(r.reason).toBe("drives");
    expect(r.error).toMatch(/2 usable drives on 2 servers \(and 1 unreachable drive\)/);
  });

  describe("drives of mixed geometry", () => {
    /** Drives 1, 2: 1 MiB extents; drive 3: 4 MiB extents. */
    function mixed(): { state: ClusterState; topo: Topology } {
      const { state, topo } = cluster([10, 10]);
      const r = apply(state, { kind: "add_drive", drive: { drive_uuid: uuid(3), extent_size_bytes: 4 * MiB, extent_count: 10 } });
      if (!r.ok) throw new Error(r.error);
      return { state: r.state, topo: { usable: new Set([...topo.usable, uuid(3)]), target_of: new Map([...topo.target_of, [uuid(3), "t3"]]) } };
    }

    test("a RAID0 over drives of two extent sizes: named, with the width that fits", () => {
      const { state, topo } = mixed();
      const r = refusal(state, topo, { capacity_bytes: MiB, raid_level: "0", stripe_width: 3 });
      expect(r.reason).toBe("geometry");
      expect(r.error).toMatch(/needs 3 drives, all of one extent size; the cluster has 3 usable drives on 3 servers: 2 drives of 1M extents and 1 of 4M extents\. Use --stripe-width 2 or less, or drives formatted with one --extent-size$/);
    });

    test("a concatenated volume that fits the free space only across extent sizes", () => {
      const { state, topo } = mixed();
      const r = refusal(state, topo, { capacity_bytes: 50 * MiB, raid_level: "concatenated" });
      expect(r.reason).toBe("geometry");
      expect(r.error).toMatch(/free space is split between 2 drives of 1M extents and 1 of 4M extents: at most 40M fits on one kind/);
      expect(allocate(state, { name: "x", capacity_bytes: 40 * MiB, raid_level: "concatenated" }, topo).ok).toBe(true);
    });

    test("larger than all the free space together: a plain shortage", () => {
      const { state, topo } = mixed();
      const r = refusal(state, topo, { capacity_bytes: 61 * MiB, raid_level: "concatenated" });
      expect(r.reason).toBe("space");
      expect(r.error).toMatch(/at most 40M fits in this layout, 60M is free/);
    });
  });

  test("no drive at all, and no drive reachable", () => {
    const empty = cluster([]);
    expect(refusal(empty.state, empty.topo, { capacity_bytes: MiB, raid_level: "1" }).error).toMatch(/the cluster has no drives yet: serve formatted drives with 'nvmesh target serve'/);
    const { state, topo } = cluster([10, 10]);
    const none = refusal(state, { ...topo, usable: new Set() }, { capacity_bytes: MiB, raid_level: "concatenated" });
    expect(none.code).toBe("no_space");
    expect(none.error).toMatch(/none of the cluster's 2 drives is reachable \('nvmesh drive show' says why\)/);
  });

  test("invalid parameters are refused as invalid before the pool is looked at", () => {
    const { state } = cluster([10]);
    const r = refusal(state, { usable: new Set(), target_of: new Map() }, { capacity_bytes: MiB, raid_level: "1", mirrors: 4 });
    expect(r.code).toBe("invalid");
  });
});
