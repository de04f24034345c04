/**
 * agreement(): the rule the demo and the end-to-end tests use to say that the TOMAs of a cluster
 * agree on one ready leader. Each case changes one view of an agreeing set.
 */
import { expect, test } from "bun:test";
import { agreement, type Consensus } from "../../src/toma/cluster/agreement.ts";

const ADDRS = ["127.0.0.1:4001", "127.0.0.1:4002", "127.0.0.1:4003"];

function view(i: number, o: Partial<Consensus> = {}): Consensus {
  return {
    toma_id: `s${i}`,
    node_id: `s${i}#0`,
    address: ADDRS[i]!,
    phase: "running",
    reason: null,
    cluster_uuid: "00000000-0000-4000-8000-000000000001",
    role: i === 1 ? "leader" : "follower",
    term: 4,
    leader: { node_id: "s1#0", address: ADDRS[1]! },
    leader_ready: i === 1,
    commit: 7,
    applied: 7,
    last_index: 7,
    peers: [],
    hard_state: null,
    dropped_messages: 0,
    membership: "voter",
    proposals_waiting: 0,
    warnings: [],
    ...o,
  } as Consensus;
}

const agreeing = () => [view(0), view(1), view(2)];

test("three TOMAs naming one ready leader in one term agree on it", () => {
  const a = agreement(ADDRS, agreeing());
  expect(a).not.toBeNull();
  expect([a!.index, a!.address, a!.term, a!.views.length]).toEqual([1, ADDRS[1]!, 4, 3]);
  // A subset of the TOMAs (the others down) agrees just the same.
  expect(agreement(ADDRS, [view(1), view(2)])?.index).toBe(1);
});

test("no agreement while one view is missing, not running, or names another leader or term", () => {
  const cases: [string, (vs: (Consensus | null)[]) => void][] = [
    ["a TOMA does not answer", (vs) => (vs[2] = null)],
    ["a TOMA is still starting", (vs) => (vs[0] = view(0, { phase: "starting" as Consensus["phase"] }))],
    ["the leader has no entry of its term applied", (vs) => (vs[1] = view(1, { leader_ready: false }))],
    ["a follower is a term behind", (vs) => (vs[2] = view(2, { term: 3 }))],
    ["a follower names another leader", (vs) => (vs[0] = view(0, { leader: { node_id: "s2#0", address: ADDRS[2]! } }))],
    ["two leaders", (vs) => (vs[2] = view(2, { role: "leader", leader_ready: true, leader: { node_id: "s2#0", address: ADDRS[2]! } }))],
    ["no leader", (vs) => (vs[1] = view(1, { role: "follower", leader_ready: false }))],
  ];
  for (const [what, change] of cases) {
    const vs: (Consensus | null)[] = agreeing();
    change(vs);
    expect({ what, a: agreement(ADDRS, vs) }).toEqual({ what, a: null });
  }
});
