/** Random data-path frame headers for the fuzz tests: often valid, often a field or two out of range. */
import { emptyHeader, Flag, type Header, Op, Status } from "../../src/engine/wire/header.ts";
import type { Rng } from "./fuzz.ts";

export const OPS = Object.values(Op).filter((x): x is number => typeof x === "number");
const STATUSES = Object.values(Status).filter((x): x is number => typeof x === "number");

/**
 * A header of any plausibility. `drive` and `span` (bytes addressable on it) make half of the
 * headers name a real drive and a range inside it, so that requests get past the first checks.
 */
export function randomHeader(rng: Rng, drive?: { uuid: Uint8Array; span: number }): Header {
  const opcode = rng.chance(0.9) ? rng.pick(OPS) : rng.int(256);
  const real = drive !== undefined && rng.chance(0.5);
  const length = real ? rng.int(Math.min(drive.span, 256 * 1024)) : rng.length(4 * 1024 * 1024);
  return {
    ...emptyHeader(),
    opcode,
    flags: rng.chance(0.7) ? (rng.chance(0.6) ? 0 : rng.int(64)) | (rng.chance(0.05) ? Flag.RESPONSE : 0) : rng.int(0x10000),
    request_id: rng.u32(),
    length,
    offset: real ? rng.int(Math.max(1, drive.span - length)) : rng.chance(0.8) ? rng.int(1 << 30) : rng.pick([2 ** 53 - 1, 2 ** 53, 0]),
    drive_uuid: real ? drive.uuid : rng.bytes(16),
    client_id: rng.int(4),
    generation: rng.int(4),
    status: rng.chance(0.95) ? Status.OK : rng.pick(STATUSES),
    payload_len: 0,
  };
}

/** Opcodes a requester sends after HELLO. */
const REQUEST_OPS = [
  Op.READ, Op.WRITE, Op.FLUSH, Op.TRIM, Op.WRITE_ZEROES, Op.LIST_DRIVES, Op.META_READ, Op.LOCK, Op.UNLOCK,
  Op.LOCK_LIST, Op.DIRTY_GET, Op.DIRTY_SET, Op.DIRTY_CLEAR, Op.DIRTY_INHERITED, Op.HELLO, Op.AUTH,
];
const REQUEST_FLAGS = [Flag.FUA, Flag.TEST_LOCK, Flag.DIRTY, Flag.INTENT, Flag.LOCK];

/**
 * A request that passes the header checks (so the connection stays open) but may still be wrong
 * for its op: flags on the wrong op, ranges out of the drive, an unknown drive.
 */
export function validRequestHeader(rng: Rng, drive: { uuid: Uint8Array; span: number }): Header {
  const h = randomHeader(rng, drive);
  h.opcode = rng.pick(REQUEST_OPS);
  h.flags = 0;
  for (const f of REQUEST_FLAGS) if (rng.chance(0.1)) h.flags |= f;
  h.status = Status.OK;
  h.offset = Math.min(h.offset, 2 ** 53 - 1);
  if (h.opcode === Op.READ || h.opcode === Op.WRITE) h.length = Math.min(h.length, 4 * 1024 * 1024);
  return h;
}
