import { describe, expect, test } from "bun:test";
import { encode } from "cbor-x";
import { votersConfig } from "../../../src/toma/consensus/config.ts";
import { decodeEnvelope, describeMessage, encodeEnvelope, type Envelope, MAX_ENVELOPE_BYTES } from "../../../src/toma/consensus/messages.ts";
import { MAX_MEMBERS, MAX_SNAPSHOT_CHUNK_BYTES, type Message } from "../../../src/toma/consensus/types.ts";
import { MAX_POSTED_ENVELOPE_BYTES } from "../../../src/toma/cluster/peer-sender.ts";

const CLUSTER = "0c0c0c0c-0000-4000-8000-00000000c1c1";
const A = "s1#00000000000000a1";
const B = "s2#00000000000000b2";

const app: Message = {
  type: "app",
  from: A,
  to: B,
  term: 3,
  prev_index: 4,
  prev_term: 2,
  commit: 4,
  entries: [
    { kind: "normal", term: 3, index: 5, data: new Uint8Array([104, 105]) },
    { kind: "conf", term: 3, index: 6, change: { op: "add_learner", node: "s3#00000000000000c3", address: "10.0.0.3:4000" } },
  ],
};
const snap = { type: "snap", from: A, to: B, term: 3, snapshot: { index: 9, term: 3, config: votersConfig([A, B]) }, total: 100, offset: 40, data: new Uint8Array(10) } satisfies Message;
const env = (msgs: Message[]): Envelope => ({ v: 1, cluster_uuid: CLUSTER, from: A, to: B, msgs });

describe("wire envelope", () => {
  test("round trip of every message type", () => {
    const msgs: Message[] = [
      { type: "pre_vote", from: A, to: B, term: 4, last_index: 9, last_term: 3 },
      { type: "pre_vote_resp", from: A, to: B, term: 4, reject: false },
      { type: "vote", from: A, to: B, term: 4, last_index: 9, last_term: 3 },
      { type: "vote_resp", from: A, to: B, term: 4, reject: true },
      app,
      { type: "app_resp", from: A, to: B, term: 3, index: 4, reject: true, hint_index: 2, hint_term: 1 },
      { type: "heartbeat", from: A, to: B, term: 3, commit: 4, read_round: 7 },
      { type: "heartbeat_resp", from: A, to: B, term: 3, read_round: 7 },
      snap,
      { type: "snap_resp", from: A, to: B, term: 3, index: 9, offset: 50, reject: false },
    ];
    const d = decodeEnvelope(encodeEnvelope(env(msgs)));
    expect(d.ok).toBe(true);
    if (d.ok) expect(d.value).toEqual(env(msgs));
  });

  const bad: [string, unknown, RegExp][] = [
    ["an unknown version", { ...env([app]), v: 2 }, /fails validation at 'v'/],
    ["an unknown message type", { ...env([app]), msgs: [{ ...app, type: "timeout_now" }] }, /fails validation/],
    ["an unknown field", { ...env([app]), msgs: [{ ...app, lease: 5 }] }, /fails validation/],
    ["a negative term", { ...env([app]), msgs: [{ ...app, term: -1 }] }, /fails validation/],
    ["a bad node id", { ...env([app]), from: "s1 x", msgs: [app] }, /fails validation at 'from'/],
    ["no messages", { ...env([]) }, /fails validation at 'msgs'/],
    ["a message from someone else", { ...env([{ ...app, from: "s9" }]) }, /inside an envelope/],
    ["entries not contiguous", env([{ ...app, entries: [app.entries[1]!] } as Message]), /not contiguous/],
    ["an unsorted configuration", env([{ ...snap, snapshot: { ...snap.snapshot, config: { members: [...votersConfig([A, B]).members].reverse() } } } as Message]), /not sorted/],
    ["data that is not bytes", { ...env([app]), msgs: [{ ...app, entries: [{ kind: "normal", term: 3, index: 5, data: "hi" }] }] }, /bytes expected/],
    ["a chunk beyond the snapshot's size", env([{ ...snap, offset: 95 }]), /beyond the snapshot's 100 bytes/],
    ["an empty chunk of a snapshot with data", env([{ ...snap, data: new Uint8Array() }]), /empty chunk/],
    ["a snapshot larger than a metadata slot", env([{ ...snap, total: 2 * 1024 * 1024 }]), /fails validation at 'msgs.0.total'/],
    ["a chunk larger than a chunk may be", env([{ ...snap, total: 64 * 1024, offset: 0, data: new Uint8Array(33 * 1024) }]), /fails validation at 'msgs.0.data'/],
    ["too many messages", env(Array.from({ length: 257 }, () => app)), /fails validation at 'msgs'/],
  ];
  for (const [what, raw, why] of bad) {
    test(`refuses ${what}`, () => {
      const d = decodeEnvelope(encode(raw));
      expect(d.ok).toBe(false);
      if (!d.ok) expect(d.error).toMatch(why);
    });
  }

  test("refuses garbage and oversized input without throwing", () => {
    const g = decodeEnvelope(new Uint8Array([0x9f, 0x9f, 0x9f]));
    expect(g.ok === false && g.error).toMatch(/not valid CBOR|fails validation/);
    const big = decodeEnvelope(new Uint8Array(MAX_ENVELOPE_BYTES + 1));
    expect(big.ok === false && big.error).toMatch(/exceeds/);
  });

  test("a snapshot chunk of the largest size, with the largest configuration, fits one request between TOMAs", () => {
    const id = (i: number) => `${"s".repeat(60)}${String(i).padStart(4, "0")}#${"f".repeat(32)}`;
    const members = Array.from({ length: MAX_MEMBERS }, (_, i) => ({ id: id(i), voter: true, address: "a".repeat(256) }));
    const m: Message = { type: "snap", from: id(0), to: id(1), term: 2 ** 40, snapshot: { index: 2 ** 50, term: 2 ** 40, config: { members } }, total: 1 << 20, offset: (1 << 20) - MAX_SNAPSHOT_CHUNK_BYTES, data: new Uint8Array(MAX_SNAPSHOT_CHUNK_BYTES).fill(0xff) };
    const bytes = encodeEnvelope({ v: 1, cluster_uuid: CLUSTER, from: id(0), to: id(1), msgs: [m] });
    expect(bytes.length).toBeLessThanOrEqual(MAX_POSTED_ENVELOPE_BYTES);
    expect(decodeEnvelope(bytes).ok).toBe(true);
  });

  test("one line per message for logs", () => {
    expect(describeMessage(app)).toBe(`${A}->${B} app term=3 prev=2/4 commit=4 entries=[3/5 "hi", 3/6 conf add_learner s3#00000000000000c3]`);
    expect(describeMessage(snap)).toBe(`${A}->${B} snap term=3 snapshot=3/9 voters=(${A},${B}) bytes=40+10/100`);
  });
});
