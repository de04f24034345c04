/** The mirror topology steps: pure functions, every transition and every refusal. */
import { describe, expect, test } from "bun:test";
import { apply } from "../../src/toma/cluster-state.ts";
import { nextLegs, setTopologies } from "../../src/toma/topology.ts";
import { D, withMirror } from "./mirror-state.ts";

const all = { reachable: () => true, failed: () => false, copied: () => false };

describe("mirror topology", () => {
  test("roles per state: Normal interleaves, Degraded marks dirty, Rebuild writes, Dual lock locks both", () => {
    const s = withMirror();
    const v = s.volumes[0]!;
    expect(setTopologies(v)).toEqual([{ legs: ["RWL", "RWL"], interleaved: true, dirty: false }]);
    expect(setTopologies({ ...v, legs: ["ok", "dead"] })).toEqual([{ legs: ["RWL", "DEAD"], interleaved: false, dirty: true }]);
    expect(setTopologies({ ...v, legs: ["ok", "syncing"] })).toEqual([{ legs: ["RWL", "W"], interleaved: false, dirty: false }]);
    expect(setTopologies({ ...v, legs: ["ok", "synced"] })).toEqual([{ legs: ["RWL", "WL"], interleaved: false, dirty: false }]);
  });

  test("the whole cycle, one adjacent step at a time", () => {
    const v = withMirror().volumes[0]!;
    const down1 = { ...all, reachable: (c: number) => c !== 1 };
    expect(nextLegs(v, all)).toBeNull();
    expect(nextLegs(v, down1)).toEqual(["ok", "dead"]);
    const deg = { ...v, legs: ["ok", "dead"] as typeof v.legs };
    expect(nextLegs(deg, down1)).toBeNull();
    expect(nextLegs(deg, all)).toEqual(["ok", "syncing"]);
    const reb = { ...v, legs: ["ok", "syncing"] as typeof v.legs };
    expect(nextLegs(reb, all)).toBeNull();
    expect(nextLegs(reb, { ...all, copied: () => true })).toEqual(["ok", "synced"]);
    expect(nextLegs(reb, down1)).toEqual(["ok", "dead"]);
    const dual = { ...v, legs: ["ok", "synced"] as typeof v.legs };
    expect(nextLegs(dual, all)).toEqual(["ok", "ok"]);
  });

  test("the last in-sync leg is never declared dead: I/O waits instead", () => {
    const v = { ...withMirror().volumes[0]!, legs: ["ok", "dead"] as ("ok" | "dead")[] };
    expect(nextLegs(v, { ...all, reachable: () => false })).toBeNull();
  });

  test("apply() refuses non-adjacent steps and a set without an in-sync leg", () => {
    const s = withMirror();
    const bad = [
      ["ok", "syncing"],
      ["ok", "synced"],
      ["dead", "dead"],
    ] as const;
    for (const legs of bad) {
      const r = apply(s, { kind: "set_legs", uuid: s.volumes[0]!.uuid, legs: [...legs] });
      expect(r.ok).toBe(false);
    }
    const r = apply(s, { kind: "set_legs", uuid: s.volumes[0]!.uuid, legs: ["ok", "dead"] });
    expect(r.ok).toBe(true);
    if (r.ok) expect(r.state.volumes[0]!.topology_seq).toBe(r.state.generation);
  });

  test("replace_leg puts a blank leg in place of a dead one, never on a drive the volume uses", () => {
    let s = withMirror();
    const r1 = apply(s, { kind: "set_legs", uuid: s.volumes[0]!.uuid, legs: ["ok", "dead"] });
    if (!r1.ok) throw new Error(r1.error);
    s = r1.state;
    expect(apply(s, { kind: "replace_leg", uuid: s.volumes[0]!.uuid, column: 1, with: { drive_uuid: D(1), extents: [2, 3] } }).ok).toBe(false);
    const r2 = apply(s, { kind: "replace_leg", uuid: s.volumes[0]!.uuid, column: 1, with: { drive_uuid: D(3), extents: [0, 1] } });
    expect(r2.ok).toBe(true);
    if (r2.ok) {
      expect(r2.state.volumes[0]!.legs).toEqual(["ok", "syncing"]);
      expect(r2.state.volumes[0]!.rebuild_blank).toEqual([false, true]);
    }
  });

  test("a blank leg that fails before its copy is done stays blank: it is copied in full when it comes back", () => {
    let s = withMirror();
    const step = (cmd: Parameters<typeof apply>[1]) => {
      const r = apply(s, cmd);
      if (!r.ok) throw new Error(r.error);
      s = r.state;
      return s.volumes[0]!;
    };
    step({ kind: "set_legs", uuid: s.volumes[0]!.uuid, legs: ["ok", "dead"] });
    expect(step({ kind: "replace_leg", uuid: s.volumes[0]!.uuid, column: 1, with: { drive_uuid: D(3), extents: [0, 1] } }).rebuild_blank).toEqual([false, true]);
    // The new drive fails (or is reported failing) before its copy finished, then comes back.
    expect(step({ kind: "set_legs", uuid: s.volumes[0]!.uuid, legs: ["ok", "dead"] }).rebuild_blank).toEqual([false, true]);
    expect(step({ kind: "set_legs", uuid: s.volumes[0]!.uuid, legs: ["ok", "syncing"] }).rebuild_blank).toEqual([false, true]);
    // Copied in full: from here on the source's dirty bits alone say what it lacks.
    expect(step({ kind: "set_legs", uuid: s.volumes[0]!.uuid, legs: ["ok", "synced"] }).rebuild_blank).toEqual([false, false]);
    expect(step({ kind: "set_legs", uuid: s.volumes[0]!.uuid, legs: ["ok", "dead"] }).rebuild_blank).toEqual([false, false]);
  });
});
