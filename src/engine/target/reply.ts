/**
 * Response frames. A response echoes the request's header (opcode, request_id, drive, offset,
 * length, fencing fields) with the RESPONSE flag and a status, so a capture of one frame says
 * what it answers.
 */
import { encodeBody } from "../wire/control.ts";
import { Flag, HEADER_BYTES, type Header, Status, encodeHeader } from "../wire/header.ts";
import { BufferPool } from "../wire/buffer-pool.ts";

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
 * The buffer comes from a pool; the connection gives it back (recycleFrame) once it is queued
 * and copied.
 */
export function readResponse(req: Header): Uint8Array {
  const out = pool.take(HEADER_BYTES + req.length);
  encodeResponseHeader(req, Status.OK, req.length, out);
  return out;
}

/** One pool for the process: its size bounds what every connection together keeps for reuse. */
const pool = new BufferPool();

/** Called periodically (the target's writeback tick): an idle pool gives its memory back. */
export function trimBuffers(): void {
  pool.trim();
}

/** Gives a frame back to the pool: only once nothing references it any more (sent or copied). */
export function recycleFrame(frame: Uint8Array): void {
  pool.give(frame);
}

/** A buffer for WRITE data, from the same pool; unspecified contents. */
export function takeBuffer(length: number): Uint8Array {
  return pool.take(length);
}

/** Gives back a buffer nothing references any more. */
export const giveBuffer = recycleFrame;

export function errorResponse(req: Header, status: Status, message: string): Uint8Array {
  const body = encodeBody({ error: message.slice(0, MAX_ERROR_CHARS) });
  const out = new Uint8Array(HEADER_BYTES + body.length);
  encodeResponseHeader(req, status, body.length, out);
  out.set(body, HEADER_BYTES);
  return out;
}
