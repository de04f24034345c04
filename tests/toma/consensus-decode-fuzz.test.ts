/**
 * Fuzzing the consensus decoders that read bytes from the outside: a peer TOMA's envelope of Raft
 * messages (POST /v1/raft), a log entry's proposal, and a hard-state record read from a drive's
 * metadata slot (META_READ). Random bytes, mutated valid encodings and valid CBOR of the wrong
 * shape: each decoder answers a value or a reason, and never throws. A failure names its seed and
 * the line that replays it (tests/support/fuzz.ts).
 */
import { describe, expect, test } from "bun:test";
import { encode } from "cbor-x";
import { decodeRecord, encodeRecord } from "../../src/toma/consensus/hard-state-record.ts";
import { decodeEnvelope } from "../../src/toma/consensus/messages.ts";
import { decodeProposal } from "../../src/toma/consensus/proposal.ts";
import { forEachSeed, type Rng, seeds } from "../support/fuzz.ts";
import { drive, record } from "./consensus/record-fixtures.ts";

const FILE = "tests/toma/consensus-decode-fuzz.test.ts";
const UUID = "0f0e0d0c-0b0a-4908-8706-050403020100";

/** CBOR values with the keys these schemas use, in shapes that are sometimes right. */
function randomValue(rng: Rng, depth = 0): unknown {
  switch (rng.int(depth > 3 ? 6 : 9)) {
    case 0:
      return rng.int(10);
    case 1:
      return rng.pick([-1, 0, 1.5, 2 ** 53, Number.NaN]);
    case 2:
      return rng.pick(["", UUID, "s1#00000000000000a1", "app", "vote", "snap", "normal", "conf", "x".repeat(300)]);
    case 3:
      return rng.bytes(rng.int(40));
    case 4:
      return rng.pick([null, true, false]);
    case 5:
      return rng.int(2 ** 31);
    case 6:
      return Array.from({ length: rng.int(4) }, () => randomValue(rng, depth + 1));
    default: {
      const keys = ["v", "cluster_uuid", "from", "to", "msgs", "type", "term", "index", "entries", "prev_index", "prev_term", "commit", "snapshot", "config", "kind", "data", "seq", "anchor_seq", "drives", "toma_id", "incarnation", "vote", "x"];
      const o: Record<string, unknown> = {};
      for (let i = rng.int(7); i > 0; i--) o[rng.pick(keys)] = randomValue(rng, depth + 1);
      return o;
    }
  }
}

function never<T>(what: string, fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    throw new Error(`${what} threw: ${(e as Error).message}`);
  }
}

describe("consensus decoders on bytes from peers and drives", () => {
  test("envelopes, proposals and hard-state records: a value or a reason, never a throw", async () => {
    const good = encodeRecord(record(7, [1, 2]));
    await forEachSeed(FILE, seeds(2000), (rng) => {
      const inputs = [rng.bytes(rng.int(80)), encode(randomValue(rng)), rng.mutate(good)];
      for (const bytes of inputs) {
        const e = never("decodeEnvelope", () => decodeEnvelope(bytes));
        if (!e.ok) expect(e.error.length).toBeGreaterThan(0);
        const p = never("decodeProposal", () => decodeProposal(bytes));
        if (!p.ok) expect(p.error.length).toBeGreaterThan(0);
        const r = never("decodeRecord", () => decodeRecord(bytes, { slot_generation: 7, drive_uuid: drive(1) }));
        if (r.kind === "corrupt") expect(r.error.length).toBeGreaterThan(0);
      }
    });
  });
});
