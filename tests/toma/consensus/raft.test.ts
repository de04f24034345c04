/**
 * Unit tests of the core that the transcripts do not show: what a peer's impossible message does
 * (nothing, and a line saying so), the runtime contract (no call between ready and advance),
 * restarts from the durable state, limits.
 */
import { describe, expect, test } from "bun:test";
import { AssertionError } from "../../../src/engine/assert.ts";
import { votersConfig } from "../../../src/toma/consensus/config.ts";
import { bootstrapDurableState, Raft, type Ready } from "../../../src/toma/consensus/raft.ts";
import type { DurableState, Entry, Message } from "../../../src/toma/consensus/types.ts";

const enc = new TextEncoder();

function node(id: string, start: DurableState, lines: string[] = [], extra: Partial<ConstructorParameters<typeof Raft>[0]> = {}): Raft {
  return new Raft({ id, election_ticks: 10, heartbeat_ticks: 1, random: () => 0, trace: (l) => lines.push(l), ...extra }, start);
}

function drain(r: Raft): Ready[] {
  const out: Ready[] = [];
  while (r.hasReady()) {
    const rd = r.ready();
    out.push(rd);
    r.advance(rd);
  }
  return out;
}

/** Makes "1" of `three` the leader of term 2 (pre-vote, then vote, both granted by 2 and 3). */
function elect(r: Raft): void {
  drain(r);
  r.campaign();
  drain(r);
  for (const m of ["2", "3"]) r.step({ type: "pre_vote_resp", from: m, to: "1", term: 2, reject: false });
  drain(r);
  for (const m of ["2", "3"]) r.step({ type: "vote_resp", from: m, to: "1", term: 2, reject: false });
  drain(r);
  expect(r.basics().role).toBe("leader");
}

const three = bootstrapDurableState(votersConfig(["1", "2", "3"]), enc.encode("s"));
const normal = (term: number, index: number, s = ""): Entry => ({ kind: "normal", term, index, data: enc.encode(s) });

/** A follower "2" at term 2 that holds entries 2..3 and has committed 3. */
function follower(lines: string[] = [], extra: Partial<ConstructorParameters<typeof Raft>[0]> = {}): Raft {
  const r = node("2", three, lines, extra);
  drain(r);
  r.step({ type: "app", from: "1", to: "2", term: 2, prev_index: 1, prev_term: 1, entries: [normal(2, 2), normal(2, 3, "x")], commit: 3 });
  drain(r);
  expect(r.basics()).toMatchObject({ term: 2, lead: "1", commit: 3, applied: 3 });
  return r;
}

describe("a peer's impossible message changes nothing", () => {
  const cases: [string, Message, RegExp][] = [
    ["a heartbeat committing beyond the log", { type: "heartbeat", from: "1", to: "2", term: 2, commit: 9, read_round: 0 }, /commit 9 beyond our last index 3/],
    [
      "an append carrying entries of a later term",
      { type: "app", from: "1", to: "2", term: 2, prev_index: 3, prev_term: 2, entries: [normal(5, 4)], commit: 3 },
      /entries of a later term/,
    ],
    [
      "an impossible configuration change",
      { type: "app", from: "1", to: "2", term: 2, prev_index: 3, prev_term: 2, entries: [{ kind: "conf", term: 2, index: 4, change: { op: "promote", node: "9" } }], commit: 3 },
      /configuration change at 4: 9 is not a member/,
    ],
    [
      "entries whose terms go back",
      { type: "app", from: "1", to: "2", term: 2, prev_index: 3, prev_term: 2, entries: [normal(2, 4), normal(1, 5)], commit: 3 },
      /terms go back/,
    ],
    ["a second leader in the same term", { type: "heartbeat", from: "3", to: "2", term: 2, commit: 3, read_round: 0 }, /3 acts as leader of term 2, which 1 leads/],
  ];
  for (const [what, m, why] of cases) {
    test(what, () => {
      const lines: string[] = [];
      const r = follower(lines);
      const before = JSON.stringify([r.status(), r.entries().map((e) => [e.term, e.index])]);
      r.step(m);
      expect(lines.at(-1)).toMatch(/^ERROR dropped/);
      expect(lines.at(-1)).toMatch(why);
      expect(r.hasReady()).toBe(false);
      expect(JSON.stringify([r.status(), r.entries().map((e) => [e.term, e.index])])).toBe(before);
    });
  }

  test("an append that would rewrite committed entries is answered with the commit, not applied", () => {
    const r = follower();
    r.step({ type: "app", from: "1", to: "2", term: 2, prev_index: 1, prev_term: 1, entries: [normal(1, 2, "other")], commit: 3 });
    const [rd] = drain(r);
    expect(rd!.persist).toBeNull();
    expect(rd!.messages).toEqual([{ type: "app_resp", from: "2", to: "1", term: 2, index: 3, reject: false, hint_index: 0, hint_term: 0 }]);
    expect(r.entries().map((e) => `${e.term}/${e.index}`)).toEqual(["2/2", "2/3"]);
  });

  test("a message for another node is dropped", () => {
    const lines: string[] = [];
    const r = follower(lines);
    r.step({ type: "heartbeat", from: "1", to: "7", term: 9, commit: 3, read_round: 0 });
    expect(r.basics().term).toBe(2);
    expect(lines.at(-1)).toMatch(/addressed to 7/);
  });
});

describe("the runtime contract", () => {
  test("nothing may be called between ready() and advance()", () => {
    const r = follower();
    r.step({ type: "heartbeat", from: "1", to: "2", term: 2, commit: 3, read_round: 0 });
    const rd = r.ready();
    expect(() => r.tick()).toThrow(AssertionError);
    expect(() => r.step({ type: "heartbeat", from: "1", to: "2", term: 2, commit: 3, read_round: 0 })).toThrow(AssertionError);
    expect(() => r.propose(new Uint8Array())).toThrow(AssertionError);
    r.advance(rd);
    expect(() => r.advance(rd)).toThrow(/advance\(\) without ready\(\)/);
  });

  test("a vote is in the same Ready as the state that records it", () => {
    // Its election timeout is 15 ticks: after 10 it no longer hears a leader, but has not pre-voted.
    const r = follower([], { random: () => 5 });
    for (let i = 0; i < 10; i++) r.tick();
    r.step({ type: "vote", from: "3", to: "2", term: 3, last_index: 3, last_term: 2 });
    const [rd] = drain(r);
    expect(rd!.persist).toMatchObject({ term: 3, vote: "3" });
    expect(rd!.messages).toEqual([{ type: "vote_resp", from: "2", to: "3", term: 3, reject: false }]);
  });
});

describe("one voter, restarts, limits", () => {
  test("a single voter elects itself, commits once its entry is durable, and is then ready", () => {
    const r = node("1", bootstrapDurableState(votersConfig(["1"]), enc.encode("s")));
    drain(r);
    r.campaign();
    expect(r.basics().role).toBe("leader");
    expect(r.leaderReady()).toBe(false);
    const first = r.ready();
    expect(first.persist?.entries.length).toBe(1);
    expect(first.committed).toEqual([]);
    r.advance(first);
    drain(r);
    expect(r.leaderReady()).toBe(true);
    expect(r.propose(enc.encode("a"))).toMatchObject({ ok: true, index: 3 });
    const applied = drain(r).flatMap((x) => x.committed);
    expect(applied.map((e) => e.index)).toEqual([3]);
    expect(r.readIndex(1)).toEqual({ ok: true });
    expect(drain(r).flatMap((x) => x.read_states)).toEqual([{ ctx: 1, index: 3 }]);
  });

  test("a restart installs the snapshot, then applies what was committed", () => {
    const start: DurableState = { term: 2, vote: "1", commit: 3, snapshot: three.snapshot, entries: [normal(2, 2), normal(2, 3, "x"), normal(2, 4, "y")] };
    const r = node("2", start);
    const [rd] = drain(r);
    expect(rd!.persist).toBeNull();
    expect(rd!.snapshot?.index).toBe(1);
    expect(rd!.committed.map((e) => e.index)).toEqual([2, 3]);
    expect(r.status()).toMatchObject({ role: "follower", term: 2, vote: "1", commit: 3, applied: 3, last_index: 4 });
  });

  test("compaction drops applied entries and must be persisted", () => {
    const r = follower();
    r.compact(3, enc.encode("state@3"));
    const [rd] = drain(r);
    expect(rd!.persist?.snapshot).toMatchObject({ index: 3, term: 2 });
    expect(rd!.persist?.entries).toEqual([]);
    expect(() => r.compact(3, new Uint8Array())).toThrow(/no such entry|cannot compact/);
  });

  test("a leader refuses proposals past its uncommitted limit", () => {
    const r = node("1", three, [], { max_uncommitted: 3 });
    elect(r);
    expect(r.propose(enc.encode("a")).ok).toBe(true);
    expect(r.propose(enc.encode("b")).ok).toBe(true);
    const no = r.propose(enc.encode("c"));
    expect(no).toMatchObject({ ok: false, reason: "3 entries are not yet committed" });
    expect(r.proposeConfChange({ op: "remove", node: "3" })).toMatchObject({ ok: false, reason: "the leader has not yet committed an entry of its term" });
  });

  test("an append message carries entries of at most 32 KiB of payload beyond its first", () => {
    const r = node("1", three);
    elect(r);
    for (let i = 0; i < 4; i++) expect(r.propose(new Uint8Array(20 * 1024)).ok).toBe(true);
    drain(r);
    // Follower 2 acknowledges the leader's no-op (the probe): the leader sends what fits of the rest.
    r.step({ type: "app_resp", from: "2", to: "1", term: 2, index: 2, reject: false, hint_index: 0, hint_term: 0 });
    const apps = drain(r).flatMap((rd) => rd.messages).filter((m) => m.type === "app" && m.to === "2");
    expect(apps.length).toBeGreaterThan(0);
    for (const m of apps) {
      if (m.type !== "app") continue;
      const bytes = m.entries.slice(1).reduce((n, e) => n + (e.kind === "normal" ? e.data.length : 0), m.entries[0]?.kind === "normal" ? m.entries[0].data.length : 0);
      expect(m.entries.length === 1 || bytes <= 32 * 1024).toBe(true);
    }
    // One 20 KiB entry: a second would pass 32 KiB.
    expect(apps[0]!.type === "app" && apps[0]!.entries.map((e) => (e.kind === "normal" ? e.data.length : -1))).toEqual([20 * 1024]);
  });

  test("a follower refuses proposals and reads and names the leader", () => {
    const r = follower();
    expect(r.propose(enc.encode("a"))).toEqual({ ok: false, reason: "not the leader", lead: "1" });
    expect(r.readIndex(1)).toEqual({ ok: false, reason: "not the leader", lead: "1" });
  });
});
