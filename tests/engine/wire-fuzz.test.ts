/**
 * Fuzzing the data path's decoders, as a peer could feed them: the frame decoder on random
 * streams of valid, mutated and junk frames cut at random points, and every CBOR control body
 * (each schema of control.ts) on random bytes, mutated encodings and random CBOR values. The
 * properties: nothing throws, every refusal says why, nothing decoded breaks its own checks, and
 * the decoder's buffer does not outgrow the largest frame. A failure names its seed and the line
 * that replays it (tests/support/fuzz.ts).
 */
import { describe, expect, test } from "bun:test";
import { encode } from "cbor-x";
import * as v from "valibot";
import {
  AuthChallenge,
  AuthRequest,
  ClaimRequest,
  decodeBody,
  DirtyList,
  DriveInfo,
  encodeBody,
  ErrorBody,
  FenceRequest,
  HelloRequest,
  isInvalid,
  LockList,
  MetaSlot,
  TargetInfo,
} from "../../src/engine/wire/control.ts";
import {
  decodeHeader,
  emptyHeader,
  encodeFrame,
  Flag,
  FrameDecoder,
  HEADER_BYTES,
  type Header,
  MAX_PAYLOAD_BYTES,
  Op,
  Status,
} from "../../src/engine/wire/header.ts";
import { decodeState } from "../../src/toma/cluster-state.ts";
import { CorruptStateError } from "../../src/toma/cluster-state.ts";
import { concat, forEachSeed, type Rng, seeds, splitRandomly } from "../support/fuzz.ts";
import { randomHeader } from "../support/fuzz-frames.ts";

const FILE = "tests/engine/wire-fuzz.test.ts";
/** Frames as a peer could send them: valid ones, ones with a payload of the wrong size, junk. */
function randomStream(rng: Rng): Uint8Array {
  const parts: Uint8Array[] = [];
  for (let i = 1 + rng.int(12); i > 0; i--) {
    const k = rng.int(10);
    if (k < 6) {
      const h = randomHeader(rng);
      const n = h.opcode === Op.WRITE && rng.chance(0.7) ? Math.min(h.length, 200_000) : rng.int(300);
      parts.push(encodeFrame(h, rng.bytes(n)));
    } else if (k < 8) {
      parts.push(rng.mutate(encodeFrame(randomHeader(rng), rng.bytes(rng.int(100)))));
    } else if (k < 9) {
      parts.push(rng.bytes(rng.int(200)));
    } else {
      // A header announcing a payload that never (or only partly) comes.
      const h = encodeFrame({ ...randomHeader(rng), opcode: Op.WRITE, length: MAX_PAYLOAD_BYTES }, new Uint8Array(0));
      h[60] = 0;
      h[61] = 0;
      h[62] = 0x40; // payload_len = 4 MiB
      parts.push(h, rng.bytes(rng.int(70_000)));
    }
  }
  return concat(parts);
}

describe("FrameDecoder on random streams", () => {
  test("never throws; frames are whole and valid; one error at most, and nothing after it", async () => {
    await forEachSeed(FILE, seeds(400), (rng) => {
      const stream = randomStream(rng);
      let errors = 0;
      let framesAfterError = 0;
      let delivered = 0;
      const refuseAbove = rng.chance(0.3) ? rng.int(5000) : Number.POSITIVE_INFINITY;
      const d = new FrameDecoder(
        (h, payload, owned) => {
          if (errors > 0) framesAfterError++;
          delivered++;
          expect(payload.length).toBe(h.payload_len);
          // Whatever it hands over passed the header checks: re-encoding decodes to the same.
          const again = new Uint8Array(HEADER_BYTES);
          const { payload_len } = h;
          const re = decodeHeader(encodeFrame({ ...h, payload_len }, payload).subarray(0, HEADER_BYTES));
          expect(typeof re).toBe("object");
          void again;
          void owned;
        },
        (why) => {
          errors++;
          expect(why.length).toBeGreaterThan(0);
        },
        // A sink that sometimes takes a payload (it must be exactly payload_len long).
        (h) => (rng.chance(0.5) ? new Uint8Array(h.payload_len) : null),
        // An admission hook that sometimes refuses (as a connection before authentication does).
        (h) => (h.payload_len > refuseAbove ? `payload of ${h.payload_len} refused` : null),
      );
      for (const chunk of splitRandomly(rng, stream)) d.push(chunk);
      expect(errors).toBeLessThanOrEqual(1);
      expect(framesAfterError).toBe(0);
      // Its buffer holds at most one frame beyond what a chunk brings.
      const buf = (d as unknown as { buf: Uint8Array }).buf;
      expect(buf.length).toBeLessThanOrEqual(2 * (HEADER_BYTES + MAX_PAYLOAD_BYTES) + 70_000);
      d.stop();
      expect((d as unknown as { buf: Uint8Array }).buf.length).toBe(0);
      void delivered;
    });
  });

  test("a refusing admission hook sees the header before any payload byte is buffered", () => {
    let seen = 0;
    const d = new FrameDecoder(
      () => {
        throw new Error("no frame may be delivered");
      },
      () => {},
      null,
      (h) => {
        seen = h.payload_len;
        return "refused";
      },
    );
    const frame = encodeFrame({ ...emptyHeader(), opcode: Op.WRITE, length: MAX_PAYLOAD_BYTES }, new Uint8Array(MAX_PAYLOAD_BYTES));
    d.push(frame.subarray(0, HEADER_BYTES));
    d.push(frame.subarray(HEADER_BYTES));
    expect(seen).toBe(MAX_PAYLOAD_BYTES);
    expect((d as unknown as { buf: Uint8Array }).buf.length).toBe(0);
  });
});

const SCHEMAS = { HelloRequest, AuthChallenge, AuthRequest, DriveInfo, TargetInfo, MetaSlot, ClaimRequest, FenceRequest, LockList, DirtyList, ErrorBody } as const;

/** Valid values of each schema, to mutate. */
const UUID = "0f0e0d0c-0b0a-4908-8706-050403020100";
const drive = {
  drive_uuid: UUID,
  cluster_uuid: UUID,
  path: "/x",
  size_bytes: 1 << 30,
  data_offset_bytes: 1 << 20,
  extent_size_bytes: 1 << 24,
  extent_count: 60,
  format_version: 1,
  state: "ok",
};
const VALID: Record<keyof typeof SCHEMAS, unknown> = {
  HelloRequest: { version: 1, role: "client", name: "c1", nonce: new Uint8Array(16) },
  AuthChallenge: { challenge: new Uint8Array(16), proof: new Uint8Array(32) },
  AuthRequest: { proof: new Uint8Array(32) },
  DriveInfo: drive,
  TargetInfo: { target_name: "t", version: "v", drives: [drive], serving: "abc" },
  MetaSlot: { generation: 3, payload: new Uint8Array([1, 2, 3]) },
  ClaimRequest: { cluster_uuid: UUID },
  FenceRequest: { replace: false, set: [{ client_id: 1, min_generation: 2 }], remove: [3] },
  LockList: [{ client_id: 1, offset: 0, length: 65536 }],
  DirtyList: [0, 1, 5],
  ErrorBody: { error: "x" },
};

/** A random CBOR-encodable value (what a peer that speaks CBOR but not our schemas sends). */
function randomValue(rng: Rng, depth = 0): unknown {
  switch (rng.int(depth > 3 ? 6 : 9)) {
    case 0:
      return rng.int(1000) - 500;
    case 1:
      return rng.pick([0, -1, 1.5, 2 ** 53, Number.NaN, Number.POSITIVE_INFINITY, 2 ** 31]);
    case 2:
      return rng.pick(["", "client", "toma", "admin", "ok", UUID, "x".repeat(300)]);
    case 3:
      return rng.bytes(rng.pick([0, 15, 16, 17, 32, 33]));
    case 4:
      return rng.pick([null, undefined, true, false]);
    case 5:
      return rng.int(2 ** 31);
    case 6:
      return Array.from({ length: rng.int(5) }, () => randomValue(rng, depth + 1));
    default: {
      const keys = ["version", "role", "name", "nonce", "proof", "challenge", "generation", "payload", "cluster_uuid", "replace", "set", "remove", "client_id", "min_generation", "error", "drives", "target_name", "offset", "length", "x"];
      const o: Record<string, unknown> = {};
      for (let i = rng.int(6); i > 0; i--) o[rng.pick(keys)] = randomValue(rng, depth + 1);
      return o;
    }
  }
}

describe("CBOR control bodies", () => {
  test("every schema: random bytes, mutated encodings and random values decode to a valid value or a reason, never a throw", async () => {
    await forEachSeed(FILE, seeds(300), (rng) => {
      for (const [name, schema] of Object.entries(SCHEMAS) as [keyof typeof SCHEMAS, v.GenericSchema][]) {
        const inputs = [rng.bytes(rng.int(64)), rng.mutate(encodeBody(VALID[name])), encode(randomValue(rng))];
        for (const bytes of inputs) {
          let out: unknown;
          try {
            out = decodeBody(schema, bytes);
          } catch (e) {
            throw new Error(`${name}: decodeBody threw ${(e as Error).message} on ${Buffer.from(bytes).toString("hex").slice(0, 80)}`);
          }
          if (isInvalid(out)) expect(out.invalid.length).toBeGreaterThan(0);
          else expect(v.safeParse(schema, out).success).toBe(true);
        }
      }
    });
  });

  test("valid bodies decode to what was encoded", () => {
    for (const [name, schema] of Object.entries(SCHEMAS) as [keyof typeof SCHEMAS, v.GenericSchema][]) {
      const out = decodeBody(schema, encodeBody(VALID[name]));
      expect(isInvalid(out)).toBe(false);
    }
  });

  test("CBOR headers announcing huge arrays, maps, strings, or nesting too deep: a reason, nothing allocated", () => {
    const evil = [
      [0x9a, 0xff, 0xff, 0xff, 0xff],
      [0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
      [0xba, 0xff, 0xff, 0xff, 0xff],
      [0x5a, 0xff, 0xff, 0xff, 0xff],
      [0x7a, 0xff, 0xff, 0xff, 0xff],
      Array(100_000).fill(0x81),
    ];
    for (const b of evil) {
      const out = decodeBody(TargetInfo, new Uint8Array(b));
      expect(isInvalid(out)).toBe(true);
    }
  });
});

describe("cluster state read from a drive's metadata slot (META_READ answers)", () => {
  const state = {
    cluster_uuid: UUID,
    generation: 5,
    drives: [{ drive_uuid: UUID, extent_size_bytes: 1 << 24, extent_count: 60 }],
    volumes: [],
  };
  test("random and mutated payloads: only CorruptStateError", async () => {
    const good = encode(state);
    await forEachSeed(FILE, seeds(2000), (rng) => {
      const bytes = rng.chance(0.5) ? rng.mutate(good) : encode(randomValue(rng));
      try {
        decodeState(bytes);
      } catch (e) {
        if (!(e instanceof CorruptStateError)) throw new Error(`decodeState threw ${(e as Error).constructor.name}: ${(e as Error).message}`);
      }
    });
  });
});
