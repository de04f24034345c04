/**
 * Payload buffers with room for a frame header in front of them, so that a large WRITE leaves in
 * one socket write (header and payload contiguous) instead of two. Without the room the header
 * goes out alone, as its own TCP segment: a syscall more for the sender and often a wakeup more
 * for the receiver, per 128 KiB write.
 *
 * Only the exact view take() returned is marked (a WeakSet of views, not of ArrayBuffers): a
 * subarray of it (one segment of a write split over extents) starts in the middle of another
 * segment's data, and the bytes before it are not free. The room is written only by a link that
 * is done with the frame when its send returns (SendBatcher.copies), so the same payload sent to
 * two mirror legs one after the other reuses the room safely.
 */
import type { BufferPool } from "./buffer-pool.ts";
import { HEADER_BYTES } from "./header.ts";

const withRoom = new WeakSet<Uint8Array>();

/** A buffer of n bytes from the pool, with HEADER_BYTES free in front of it. */
export function takeWithRoom(pool: BufferPool, n: number): Uint8Array {
  const p = pool.take(HEADER_BYTES + n).subarray(HEADER_BYTES);
  withRoom.add(p);
  return p;
}

/** Gives back a buffer from takeWithRoom, whole; only once nothing references it. */
export function giveWithRoom(pool: BufferPool, p: Uint8Array): void {
  if (!withRoom.has(p)) throw new Error("invariant: giveWithRoom of a buffer takeWithRoom did not return");
  pool.give(new Uint8Array(p.buffer, p.byteOffset - HEADER_BYTES, HEADER_BYTES + p.length));
}

/**
 * The frame around payload (header room + payload) when payload came from takeWithRoom, else
 * null. The caller encodes the header into its first HEADER_BYTES and must be done with the
 * frame before anyone else may use the room (send it and let the link copy what it keeps).
 */
export function frameAround(payload: Uint8Array): Uint8Array | null {
  if (!withRoom.has(payload)) return null;
  return new Uint8Array(payload.buffer, payload.byteOffset - HEADER_BYTES, HEADER_BYTES + payload.length);
}
