/** The soak's bookkeeping: the fault draw replays by seed; stalls and IOPS from fio's logs. */
import { describe, expect, test } from "bun:test";
import { DEFAULT_TIMES, FaultDraw, faultSelectors, selectFaults } from "./faults.ts";
import { LeaderWatch } from "./leadership.ts";
import { type FaultRecord, faultAt, iopsSeries, longestGap, stallMiddle, stallsOver, worstGap } from "./report.ts";

describe("fault draw", () => {
  test("a seed replays the same sequence; another seed gives another; only the kinds asked for", () => {
    const seq = (seed: number) => {
      const d = new FaultDraw(seed, ["kill", "stop", "oneway", "linkdown"], 3, false, DEFAULT_TIMES);
      return Array.from({ length: 50 }, () => d.next());
    };
    expect(seq(7)).toEqual(seq(7));
    expect(seq(7)).not.toEqual(seq(8));
    const kinds = new Set(seq(7).map((p) => p.kind));
    expect([...kinds].sort()).toEqual(["kill", "linkdown", "oneway", "stop"]);
  });

  test("victims stay within the layout: servers in range, no TOMA-to-TOMA cut with one TOMA, s1 for its TOMA", () => {
    const d = new FaultDraw(3, ["stop", "oneway"], 3, false, DEFAULT_TIMES);
    for (let i = 0; i < 500; i++) {
      const p = d.next();
      expect(p.server).toBeGreaterThanOrEqual(0);
      expect(p.server).toBeLessThan(3);
      expect(p.way).not.toBe("toma-toma");
      if (p.process === "toma" || p.way === "client-toma") expect(p.server).toBe(0);
    }
    const c = new FaultDraw(3, ["oneway"], 3, true, DEFAULT_TIMES);
    const tt = Array.from({ length: 200 }, () => c.next()).filter((p) => p.way === "toma-toma");
    expect(tt.length).toBeGreaterThan(0);
    for (const p of tt) expect(p.peer).not.toBe(p.server);
    // The cut runs from the leader or to it: both ways are drawn.
    expect(new Set(tt.map((p) => p.from_leader))).toEqual(new Set([true, false]));
  });

  test("no kinds is an error", () => {
    expect(() => new FaultDraw(1, [], 3, false, DEFAULT_TIMES)).toThrow(/no fault kinds/);
  });

  test("selectors: a kind means all its variants, kind:variant only that one; unknown ones are errors", () => {
    const variants = (sel: string[], cluster = false) => {
      const d = new FaultDraw(5, sel, 3, cluster, DEFAULT_TIMES);
      return new Set(Array.from({ length: 300 }, () => d.next()).map((p) => `${p.kind}${p.variant ? `:${p.variant}` : ""}`));
    };
    expect([...variants(["stop:toma", "oneway:target-client"])].sort()).toEqual(["oneway:target-client", "stop:toma"]);
    expect([...variants(["toma-kill"])].sort()).toEqual(["toma-kill:leg", "toma-kill:toma"]);
    expect([...variants(["oneway"])].sort()).toEqual(["oneway:client-target", "oneway:client-toma", "oneway:target-client"]);
    expect(variants(["oneway"], true).has("oneway:toma-toma")).toBe(true);
    expect([...variants(["toma-kill"], true)].sort()).toEqual(["toma-kill:leg", "toma-kill:server", "toma-kill:toma"]);
    expect(() => selectFaults(["stop:everything"], false)).toThrow(/not one of/);
    expect(() => selectFaults(["oneway:toma-toma"], false)).toThrow(/--cluster/);
    expect(() => selectFaults(["toma-kill:server"], false)).toThrow(/--cluster/);
    expect(faultSelectors(selectFaults(["toma-kill"], false), false)).toEqual(["toma-kill"]);
    expect(faultSelectors(selectFaults(["toma-kill:toma", "toma-kill:leg"], true), true)).toEqual(["toma-kill:toma", "toma-kill:leg"]);
    expect(faultSelectors(selectFaults(["oneway", "stop:target", "kill", "stop:toma"], false), false)).toEqual(["kill", "stop", "oneway"]);
    expect(faultSelectors(selectFaults(["oneway:client-toma", "toma-kill:toma"], false), false)).toEqual(["toma-kill:toma", "oneway:client-toma"]);
  });

  test("toma-kill:leg names a leg of the volume and holds for orphan_ms", () => {
    const d = new FaultDraw(9, ["toma-kill:leg"], 3, false, DEFAULT_TIMES, 3);
    const legs = new Set<number>();
    for (let i = 0; i < 100; i++) {
      const p = d.next();
      expect(p.hold_ms).toBe(DEFAULT_TIMES.orphan_ms);
      legs.add(p.leg!);
    }
    expect([...legs].sort()).toEqual([0, 1, 2]);
  });
});

describe("stalls and IOPS", () => {
  const times = Float64Array.from([100, 200, 300, 5300, 5400, 9000]);

  test("longest gap among those that begin in the window, open end counted when asked", () => {
    expect(longestGap(times, 0, 10_000)).toEqual({ gap_ms: 5000, from_ms: 300 });
    expect(longestGap(times, 5300, 10_000)).toEqual({ gap_ms: 3600, from_ms: 5400 });
    expect(longestGap(times, 5300, 20_000, true)).toEqual({ gap_ms: 11_000, from_ms: 9000 });
    expect(longestGap(new Float64Array(), 1000, 4000, true)).toEqual({ gap_ms: 3000, from_ms: 1000 });
    // Clipped: the gap from 300 to 5300 counts only up to 1000 (the next fault's stall is its own).
    expect(longestGap(times, 0, 1000, true, true)).toEqual({ gap_ms: 700, from_ms: 300 });
  });

  test("the worst job's stall: a job stuck while the others go on is a stall", () => {
    const busy = Float64Array.from({ length: 100 }, (_, i) => i * 100);
    const stuck = Float64Array.from([100, 200, 300]);
    expect(worstGap([busy, stuck], 0, 9_900)).toEqual({ gap_ms: 100, from_ms: 0, job: 0 });
    expect(worstGap([busy, stuck], 0, 9_900, true)).toEqual({ gap_ms: 9_600, from_ms: 300, job: 1 });
    expect(worstGap([], 0, 1000, true).gap_ms).toBe(0);
  });

  test("every stall over a limit", () => {
    expect(stallsOver(times, 0, 9500, 1000)).toEqual([
      { gap_ms: 5000, from_ms: 300 },
      { gap_ms: 3600, from_ms: 5400 },
    ]);
    expect(stallsOver(times, 0, 9500, 10_000)).toEqual([]);
  });

  test("a stall is charged to the fault in force at its middle, not at its start", () => {
    const f = (n: number, injected_ms: number): FaultRecord => ({ n, kind: "kill", label: "", injected_ms, healed_ms: null, recovered_ms: null });
    const faults = [f(1, 0), f(2, 10_000)];
    // The last completion before fault #2 came 200 ms before it; the stall is #2's.
    expect(faultAt(faults, stallMiddle({ from_ms: 9_800, gap_ms: 50_000 }))!.n).toBe(2);
  });

  test("IOPS per bucket from windowed rates", () => {
    // Two 100 ms windows at 1000 IOPS in the first second (200 I/Os), none in the second.
    expect(iopsSeries([[100, 1000], [200, 1000]], 100, 2000, 1000)).toEqual([200, 0]);
  });
});

describe("leadership", () => {
  const v = (server: number, role: string, term: number) => ({ server, role, term, address: `10.99.0.${server + 1}:4000` });

  test("leaders over time, and two leaders claiming one term caught, whenever each was seen", () => {
    const w = new LeaderWatch();
    expect(w.observe(0, [v(0, "leader", 2), v(1, "follower", 2), null])).toEqual(["leader 10.99.0.1:4000 in term 2"]);
    // A paused ex-leader still says it leads in its old term: the same claim, not a conflict.
    expect(w.observe(1000, [v(0, "leader", 2), v(1, "leader", 3), v(2, "follower", 3)])).toEqual(["leader 10.99.0.2:4000 in term 3"]);
    expect(w.conflicts).toEqual([]);
    expect(w.observe(2000, [v(2, "leader", 2)])).toEqual(["TWO LEADERS in term 2: 10.99.0.1:4000 and 10.99.0.3:4000"]);
    expect(w.conflicts).toEqual([{ at_ms: 2000, term: 2, addresses: ["10.99.0.1:4000", "10.99.0.3:4000"] }]);
    // Reported once.
    expect(w.observe(3000, [v(2, "leader", 2)])).toEqual([]);
    expect(w.terms()).toBe(2);
    expect(w.changes.map((c) => c.term)).toEqual([2, 3]);
    expect(w.polls).toBe(4);
  });
});
