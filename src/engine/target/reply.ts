/**
 * Response frames. A response echoes the request's header (opcode, request_id, drive, offset,
 * length, fencing fields) with the RESPONSE flag and a status, so a capture of one frame says
 * what it answers.
 */
import { encodeBody } from "../wire/control.ts";
import { Flag, HEADER_BYTES, type Header, Status, encodeHeader } from "../wire/header.ts";
import { COPY_LIMIT_BYTES } from "../wire/send-batcher.ts";

/** Error messages are for people; cap them so an error can never make a frame large. */
const MAX_ERROR_CHARS = 1024;

/** A failure that maps to one wire status; thrown inside an op, answered in one place. */
export class RequestError extends Error {
  constructor(
    readonly status: Status,
    message: string,
  ) {
    super(message);
  }
}

/** Encodes the response header for `req` into dst[0..64). Mutates req (it is ours, per frame). */
function encodeResponseHeader(req: Header, status: Status, payload_len: number, dst: Uint8Array): void {
  req.flags = req.flags | Flag.RESPONSE;
  req.status = status;
  req.payload_len = payload_len;
  encodeHeader(req, dst, 0);
}

export function okResponse(req: Header, payload?: Uint8Array): Uint8Array {
  const n = payload?.length ?? 0;
  const out = new Uint8Array(HEADER_BYTES + n);
  encodeResponseHeader(req, Status.OK, n, out);
  if (payload && n > 0) out.set(payload, HEADER_BYTES);
  return out;
}

export function cborResponse(req: Header, value: unknown): Uint8Array {
  return okResponse(req, encodeBody(value));
}

/**
 * A READ response with its payload still to fill: the drive reads straight into
 * out.subarray(HEADER_BYTES), so the data is never copied on the target before it is sent.
 *
 * Responses the send batcher copies (below COPY_LIMIT_BYTES) come from a pool and go back to it
 * through recycleFrame() once queued: allocating a 4 KiB buffer per read was a top cost in the
 * target's CPU profile.
 */
export function readResponse(req: Header): Uint8Array {
  const n = HEADER_BYTES + req.length;
  const out = n < COPY_LIMIT_BYTES ? (pool.pop() ?? new Uint8Array(COPY_LIMIT_BYTES)).subarray(0, n) : new Uint8Array(n);
  encodeResponseHeader(req, Status.OK, req.length, out);
  return out;
}

const pool: Uint8Array[] = [];
const MAX_POOLED = 256;

/**
 * Gives a frame from readResponse() back to the pool. Only for frames the send batcher has
 * copied (below COPY_LIMIT_BYTES); any other frame is ignored.
 */
export function recycleFrame(frame: Uint8Array): void {
  if (frame.length <= HEADER_BYTES || frame.length >= COPY_LIMIT_BYTES || frame.byteOffset !== 0) return;
  const buf = frame.buffer;
  if (buf.byteLength === COPY_LIMIT_BYTES && pool.length < MAX_POOLED) pool.push(new Uint8Array(buf));
}

export function errorResponse(req: Header, status: Status, message: string): Uint8Array {
  const body = encodeBody({ error: message.slice(0, MAX_ERROR_CHARS) });
  const out = new Uint8Array(HEADER_BYTES + body.length);
  encodeResponseHeader(req, status, body.length, out);
  out.set(body, HEADER_BYTES);
  return out;
}
