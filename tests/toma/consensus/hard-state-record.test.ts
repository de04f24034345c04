import { describe, expect, test } from "bun:test";
import { encode } from "cbor-x";
import { emptyState, encodeState } from "../../../src/toma/cluster-state.ts";
import { decodeRecord, durableOf, encodeRecord, nodeIdOf } from "../../../src/toma/consensus/hard-state-record.ts";
import { CLUSTER, drive, record } from "./record-fixtures.ts";
import { MAX_RECORD_DRIVES } from "../../../src/toma/consensus/hard-state-record.ts";
import { MAX_MEMBERS } from "../../../src/toma/consensus/types.ts";
import { MAX_STATE_BYTES } from "../../../src/toma/consensus/proposal.ts";
import { MAX_COMMAND_BYTES } from "../../../src/toma/cluster/volume-ops.ts";
import { COMPACT_AFTER_ENTRIES } from "../../../src/toma/cluster/node.ts";
import { maxMetaPayloadBytes } from "../../../src/engine/drive/meta-slot.ts";
import { META_SLOT_BYTES } from "../../../src/engine/drive/superblock.ts";

const at = (seq: number, n = 1) => ({ slot_generation: seq, drive_uuid: drive(n) });

describe("hard-state record codec", () => {
  test("round trip, and the same record is the same bytes", () => {
    const r = record(7, [1, 2]);
    const bytes = encodeRecord(r);
    const d = decodeRecord(bytes, at(7));
    expect(d.kind).toBe("record");
    if (d.kind !== "record") return;
    expect(encodeRecord(d.record)).toEqual(bytes);
    expect(durableOf(d.record)).toEqual({ term: 3, vote: r.vote, commit: 2, snapshot: r.snapshot, entries: r.entries });
    expect(nodeIdOf(r)).toBe("s1#00000000000000a1");
    // Key order in the source object does not change the bytes.
    const shuffled = Object.fromEntries(Object.entries(r).reverse()) as typeof r;
    expect(encodeRecord(shuffled)).toEqual(bytes);
  });

  test("the largest record the size bounds allow fits a 1 MiB metadata slot", () => {
    // The state at its bound, the log tail compaction keeps plus one, every entry a command at its
    // bound, the most drives and members, the longest ids and addresses.
    const id = (i: number) => `${"s".repeat(60)}${String(i).padStart(4, "0")}#${"f".repeat(32)}`;
    const members = Array.from({ length: MAX_MEMBERS }, (_, i) => ({ id: id(i), voter: true, address: "a".repeat(256) })).sort((a, b) => (a.id < b.id ? -1 : 1));
    const big = 2 ** 50;
    const entries = Array.from({ length: COMPACT_AFTER_ENTRIES + 1 }, (_, i) => ({ kind: "normal" as const, term: big, index: big + 1 + i, data: new Uint8Array(MAX_COMMAND_BYTES).fill(0xff) }));
    const r = record(big, Array.from({ length: MAX_RECORD_DRIVES }, (_, i) => i + 1), {
      term: big,
      vote: id(0),
      commit: big,
      anchor_seq: big - 1,
      snapshot: { index: big, term: big, config: { members }, data: new Uint8Array(MAX_STATE_BYTES).fill(0xff) },
      entries,
    });
    const bytes = encodeRecord(r);
    expect(bytes.length).toBeLessThanOrEqual(maxMetaPayloadBytes(META_SLOT_BYTES));
    console.log(`largest record: ${bytes.length} of ${maxMetaPayloadBytes(META_SLOT_BYTES)} bytes`);
  });

  test("a cluster state of the single-TOMA format is 'other', not corrupt", () => {
    expect(decodeRecord(encodeState(emptyState(CLUSTER)), at(1)).kind).toBe("other");
  });

  const corrupt: [string, Uint8Array, RegExp][] = [
    ["not CBOR", new Uint8Array([0xff, 0x00, 0x13]), /not valid CBOR/],
    ["unknown key", encode({ ...record(7, [1]), extra: 1 }), /fails validation/],
    ["bad incarnation", encode({ ...record(7, [1]), incarnation: "xyz" }), /fails validation at 'incarnation'/],
    ["seq 0", encode({ ...record(7, [1]), seq: 0 }), /fails validation at 'seq'/],
    ["drives unsorted", encode({ ...record(7, [1]), drives: [drive(2), drive(1)] }), /not sorted/],
    ["anchor not below seq", encode({ ...record(7, [1]), anchor_seq: 7 }), /anchor seq 7/],
    [
      "entries not after the snapshot",
      encode({ ...record(7, [1]), entries: [{ kind: "normal", term: 2, index: 3, data: new Uint8Array() }] }),
      /does not follow/,
    ],
    ["log term above the record's", encode({ ...record(7, [1]), term: 1 }), /above the record's term/],
    ["commit beyond the log", encode({ ...record(7, [1]), commit: 9 }), /commit 9 outside/],
    [
      "an impossible configuration change",
      encode({ ...record(7, [1]), entries: [{ kind: "conf", term: 2, index: 2, change: { op: "promote", node: "s9" } }], commit: 1 }),
      /entry 2: s9 is not a member/,
    ],
  ];
  for (const [what, bytes, why] of corrupt) {
    test(`corrupt: ${what}`, () => {
      const d = decodeRecord(bytes, at(7));
      expect(d.kind).toBe("corrupt");
      if (d.kind === "corrupt") expect(d.error).toMatch(why);
    });
  }

  test("corrupt: seq differs from the slot generation (a record not written there by its owner)", () => {
    const d = decodeRecord(encodeRecord(record(7, [1])), at(8));
    expect(d.kind === "corrupt" && d.error).toMatch(/seq 7 in a slot of generation 8/);
  });

  test("corrupt: read from a drive it does not list", () => {
    const d = decodeRecord(encodeRecord(record(7, [1])), at(7, 2));
    expect(d.kind === "corrupt" && d.error).toMatch(/does not list/);
  });

  test("encodeRecord refuses an invalid record instead of writing it", () => {
    expect(() => encodeRecord({ ...record(7, [1]), commit: 9 })).toThrow(/invalid hard-state record/);
  });
});
