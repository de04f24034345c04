import { describe, expect, test } from "bun:test";
import { type PeerAnswer, bootstrapDecision } from "../../../src/toma/consensus/bootstrap.ts";
import { votersConfig } from "../../../src/toma/consensus/config.ts";

const uuid = (n: number) => `00000000-0000-4000-8000-${n.toString(16).padStart(12, "0")}`;
const blank = (t: string, inc: string, proposal: number): PeerAnswer => ({
  toma_id: t,
  incarnation: inc,
  address: `${t}:4000`,
  proposal_uuid: uuid(proposal),
  status: { kind: "blank" },
  single_toma: { heard: [], states: [] },
});
const peers = ["s1", "s2", "s3"];
const a1 = blank("s1", "00000000000000a1", 7);
const a2 = blank("s2", "00000000000000a2", 3);
const a3 = blank("s3", "00000000000000a3", 9);

describe("bootstrap", () => {
  test("waits until every configured peer answered", () => {
    const d = bootstrapDecision(a1, peers, [a2]);
    expect(d).toEqual({ kind: "wait", reason: "waiting for s3 to answer" });
  });

  test("every peer blank: every founder forms the same cluster", () => {
    const from1 = bootstrapDecision(a1, peers, [a2, a3]);
    const from3 = bootstrapDecision(a3, peers, [a1, a2]);
    expect(from1).toEqual(from3);
    expect(from1.kind).toBe("form");
    if (from1.kind !== "form") return;
    expect(from1.cluster_uuid).toBe(uuid(3));
    expect(from1.config.members.map((m) => `${m.id}@${m.address}`)).toEqual([
      "s1#00000000000000a1@s1:4000",
      "s2#00000000000000a2@s2:4000",
      "s3#00000000000000a3@s3:4000",
    ]);
  });

  test("a peer already formed it with my current node id: adopt", () => {
    const config = votersConfig(["s1#00000000000000a1", "s2#00000000000000a2", "s3#00000000000000a3"]);
    const formed: PeerAnswer = { ...a1, status: { kind: "member", cluster_uuid: uuid(3), config } };
    expect(bootstrapDecision(a3, peers, [formed, a2])).toEqual({ kind: "adopt", cluster_uuid: uuid(3), config, takeover: null });
  });

  test("I restarted during bootstrap (new incarnation): join as a learner", () => {
    const config = votersConfig(["s1#00000000000000a1", "s2#00000000000000a2", "s3#00000000000000a3"]);
    const formed: PeerAnswer = { ...a1, status: { kind: "member", cluster_uuid: uuid(3), config } };
    const me = blank("s3", "00000000000000b3", 11);
    expect(bootstrapDecision(me, peers, [formed, a2])).toEqual({ kind: "join", cluster_uuid: uuid(3) });
  });

  test("peers of two different clusters: wait for the operator", () => {
    const x: PeerAnswer = { ...a1, status: { kind: "member", cluster_uuid: uuid(3), config: votersConfig([]) } };
    const y: PeerAnswer = { ...a2, status: { kind: "member", cluster_uuid: uuid(4), config: votersConfig([]) } };
    expect(bootstrapDecision(a3, peers, [x, y]).kind).toBe("wait");
  });

  test("an answer from a TOMA that is not configured: wait", () => {
    expect(bootstrapDecision(a1, peers, [a2, a3, blank("s9", "00000000000000a9", 1)]).kind).toBe("wait");
  });
});
