import { describe, expect, test } from "bun:test";
import { votersConfig } from "../../../src/toma/consensus/config.ts";
import { type Announced, membershipWarnings, nextMembershipChange, nodeId, tomaIdOf } from "../../../src/toma/consensus/membership.ts";
import type { Config } from "../../../src/toma/consensus/types.ts";

const id = (t: string, inc = "0000000000000001") => nodeId(t, inc);
const ann = (t: string, inc = "0000000000000001", has_drives = true): Announced => ({ toma_id: t, incarnation: inc, address: `${t}:4000`, has_drives });
const three = votersConfig([id("s1"), id("s2"), id("s3")]);

function step(config: Config, announced: Announced[], opts: { remove?: string[]; match?: Record<string, number>; commit?: number } = {}) {
  return nextMembershipChange({ config, announced, remove: opts.remove ?? [], match: (n) => opts.match?.[n] ?? 0, commit: opts.commit ?? 10 });
}

describe("membership policy", () => {
  test("nothing to do when every server is a voter under its announced identity", () => {
    expect(step(three, [ann("s1"), ann("s2"), ann("s3")])).toBeNull();
  });

  test("node ids are toma id and incarnation", () => {
    expect(tomaIdOf(id("s2", "00000000000000ff"))).toBe("s2");
    expect(tomaIdOf("3b")).toBe("3b");
  });

  test("a new server joins as a learner, then is promoted once caught up", () => {
    const s4 = id("s4");
    const add = step(three, [ann("s1"), ann("s4")]);
    expect(add).toEqual({ op: "add_learner", node: s4, address: "s4:4000" });
    const withLearner: Config = { members: [...three.members, { id: s4, voter: false, address: "s4:4000" }] };
    expect(step(withLearner, [ann("s4")], { match: { [s4]: 9 }, commit: 10 })).toBeNull();
    expect(step(withLearner, [ann("s4")], { match: { [s4]: 10 }, commit: 10 })).toEqual({ op: "promote", node: s4 });
  });

  test("an amnesic TOMA's new incarnation replaces the old one: learner, then remove old, then promote", () => {
    const fresh = id("s3", "00000000000000b2");
    expect(step(three, [ann("s3", "00000000000000b2")])).toEqual({ op: "add_learner", node: fresh, address: "s3:4000" });
    const c1: Config = { members: [...three.members, { id: fresh, voter: false, address: "s3:4000" }].sort((a, b) => (a.id < b.id ? -1 : 1)) };
    expect(step(c1, [ann("s3", "00000000000000b2")], { match: { [fresh]: 3 } })).toBeNull();
    expect(step(c1, [ann("s3", "00000000000000b2")], { match: { [fresh]: 10 } })).toEqual({ op: "remove", node: id("s3") });
    const c2: Config = { members: c1.members.filter((m) => m.id !== id("s3")) };
    expect(step(c2, [ann("s3", "00000000000000b2")], { match: { [fresh]: 10 } })).toEqual({ op: "promote", node: fresh });
  });

  test("a TOMA without drives is never added", () => {
    expect(step(three, [ann("s4", "0000000000000001", false)])).toBeNull();
  });

  test("the operator's removal goes first, learners before voters, never the last voter", () => {
    const c: Config = { members: [...three.members, { id: id("s4"), voter: false, address: "" }] };
    expect(step(c, [], { remove: ["s4", "s2"] })).toEqual({ op: "remove", node: id("s4") });
    expect(step(three, [], { remove: ["s2"] })).toEqual({ op: "remove", node: id("s2") });
    expect(step(votersConfig([id("s1")]), [], { remove: ["s1"] })).toBeNull();
  });

  test("warnings under three voters, and for an even number", () => {
    expect(membershipWarnings(three)).toEqual([]);
    expect(membershipWarnings(votersConfig([id("s1"), id("s2")]))[0]).toMatch(/at least 3 TOMAs; with 2, both must be up/);
    expect(membershipWarnings(votersConfig([id("s1")]))[0]).toMatch(/single point of failure/);
    expect(membershipWarnings(votersConfig(["a", "b", "c", "d"]))[0]).toMatch(/as many server losses as 3/);
  });
});
