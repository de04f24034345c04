/**
 * Transmission-phase wire codec: the 28-byte request header and the 16-byte simple reply.
 * Structured replies and extended headers are not negotiated, so these are the only two shapes.
 */
import { NBD_REQUEST_MAGIC, NBD_SIMPLE_REPLY_MAGIC, REQUEST_HEADER_BYTES } from "./constants.ts";

export interface NbdRequest {
  flags: number;
  type: number;
  /** The client's opaque 64-bit cookie, kept as two halves to avoid a BigInt per request. */
  cookie_hi: number;
  cookie_lo: number;
  /** Exact below 2^53; anything larger is far beyond any export and fails the range check. */
  offset: number;
  length: number;
}

/**
 * Decodes the header at src[at..at+28]. Returns the request, or a string saying why the header is
 * invalid (then the stream cannot be trusted any more and the connection must close).
 */
export function decodeRequestHeader(src: Uint8Array, at: number): NbdRequest | string {
  if (src.length - at < REQUEST_HEADER_BYTES) return "short request header";
  // Big-endian fields read straight off the bytes: a DataView per request costs more than the rest.
  const magic = be32(src, at);
  if (magic !== NBD_REQUEST_MAGIC) return `bad request magic 0x${magic.toString(16)}`;
  return {
    flags: (src[at + 4]! << 8) | src[at + 5]!,
    type: (src[at + 6]! << 8) | src[at + 7]!,
    cookie_hi: be32(src, at + 8),
    cookie_lo: be32(src, at + 12),
    offset: be32(src, at + 16) * 0x100000000 + be32(src, at + 20),
    length: be32(src, at + 24),
  };
}

function be32(b: Uint8Array, at: number): number {
  return b[at]! * 0x100_0000 + ((b[at + 1]! << 16) | (b[at + 2]! << 8) | b[at + 3]!);
}

function setBe32(b: Uint8Array, at: number, v: number): void {
  b[at] = v >>> 24;
  b[at + 1] = v >>> 16;
  b[at + 2] = v >>> 8;
  b[at + 3] = v;
}

/** Writes a simple reply header into dst[0..16]. */
export function encodeSimpleReply(dst: Uint8Array, error: number, req: NbdRequest): void {
  setBe32(dst, 0, NBD_SIMPLE_REPLY_MAGIC);
  setBe32(dst, 4, error);
  setBe32(dst, 8, req.cookie_hi);
  setBe32(dst, 12, req.cookie_lo);
}

/** Encodes a request (used by tests and any in-process client). */
export function encodeRequest(
  req: NbdRequest,
  payload?: Uint8Array,
): Uint8Array {
  const b = new Uint8Array(REQUEST_HEADER_BYTES + (payload?.length ?? 0));
  const v = new DataView(b.buffer);
  v.setUint32(0, NBD_REQUEST_MAGIC);
  v.setUint16(4, req.flags);
  v.setUint16(6, req.type);
  v.setUint32(8, req.cookie_hi);
  v.setUint32(12, req.cookie_lo);
  v.setUint32(16, Math.floor(req.offset / 0x100000000));
  v.setUint32(20, req.offset >>> 0);
  v.setUint32(24, req.length);
  if (payload) b.set(payload, REQUEST_HEADER_BYTES);
  return b;
}
