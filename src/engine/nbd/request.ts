/**
 * Transmission-phase wire codec: the 28-byte request header and the 16-byte simple reply.
 * Structured replies and extended headers are not negotiated, so these are the only two shapes.
 */
import { NBD_REQUEST_MAGIC, NBD_SIMPLE_REPLY_MAGIC, REQUEST_HEADER_BYTES, SIMPLE_REPLY_BYTES } from "./constants.ts";

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
  const v = new DataView(src.buffer, src.byteOffset + at, REQUEST_HEADER_BYTES);
  const magic = v.getUint32(0);
  if (magic !== NBD_REQUEST_MAGIC) return `bad request magic 0x${magic.toString(16)}`;
  return {
    flags: v.getUint16(4),
    type: v.getUint16(6),
    cookie_hi: v.getUint32(8),
    cookie_lo: v.getUint32(12),
    offset: v.getUint32(16) * 0x100000000 + v.getUint32(20),
    length: v.getUint32(24),
  };
}

/** Writes a simple reply header into dst[0..16]. */
export function encodeSimpleReply(dst: Uint8Array, error: number, req: NbdRequest): void {
  const v = new DataView(dst.buffer, dst.byteOffset, SIMPLE_REPLY_BYTES);
  v.setUint32(0, NBD_SIMPLE_REPLY_MAGIC);
  v.setUint32(4, error);
  v.setUint32(8, req.cookie_hi);
  v.setUint32(12, req.cookie_lo);
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
