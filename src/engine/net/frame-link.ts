/**
 * Frames over a link, not a byte stream: the seam between the data-path protocol (the target's
 * connections, the requester's sessions) and whatever carries its frames. TCP and unix sockets
 * (a byte stream cut into frames by a decoder, sends batched per tick: stream-link.ts), the
 * in-process pipe (frames handed over as they are: pipe.ts) and RDMA (one frame, or several small
 * ones, per SEND into the peer's registered receive slots: runtime/rdma-link.ts) each implement
 * it. Nothing above it knows which one it runs on; a payload may land in a buffer the transport
 * registered, and is then only valid during the onFrame call, exactly as a payload that points
 * into a socket decoder's buffer.
 *
 * Backpressure both ways:
 * - receiving: pause() stops the delivery of frames until resume() (a socket stops being read and
 *   the kernel's window closes; RDMA stops returning receive credits, so the peer stops sending);
 *   frames already on their way may still be delivered after pause(), but no more than one
 *   transport unit's worth (a socket chunk, an RDMA message).
 * - sending: send() never refuses for lack of room (a link queues what the wire cannot take at
 *   once, up to a hard cap beyond which it closes: a bounded peer never gets there); `queued_bytes`
 *   says how much waits, and onDrain fires when it has gone back to zero.
 */
import type { Header } from "../wire/header.ts";

/** How frames travel on a link, and why that transport was chosen (shown by `client show`). */
export interface Transport {
  kind: "tcp" | "unix" | "rdma" | "in-process";
  /** For people: the reason for this choice, e.g. "tcp: no RDMA device on this host". */
  why: string;
}

export interface FrameLink {
  readonly remote: string;
  readonly transport: Transport;
  /**
   * True when send() and sendFrame() are done with the bytes they were given when they return
   * (written, or copied into the transport's own buffers): the caller may reuse them at once.
   * Otherwise the caller must leave them unchanged (the simulator's links keep references).
   * Either way a frame smaller than COPY_LIMIT_BYTES (16 KiB) is done with when send returns.
   */
  readonly copies: boolean;
  /** Bytes queued for sending that the wire has not taken yet (send backpressure). */
  readonly queued_bytes: number;
  /**
   * Queues one frame: the header is encoded now (with payload_len = payload's length), the
   * payload after it. Returns false once the link is closed.
   */
  send(h: Header, payload: Uint8Array | null): boolean;
  /** Queues one frame already encoded: a header at frame[0..64) followed by its payload. */
  sendFrame(frame: Uint8Array): boolean;
  /**
   * Optional: sendFrame() for a buffer the caller wants back (a pooled READ response): the link
   * may keep it by reference instead of copying it, and calls give(frame) once nothing of its
   * own references it any more (at once when it was written or copied; never if the link ends
   * first). The caller must not touch frame until then.
   */
  sendFrameOwned?(frame: Uint8Array, give: (frame: Uint8Array) => void): boolean;
  /** Stops delivering received frames until resume() (receive backpressure). */
  pause(): void;
  resume(): void;
  /** Closes the link; frames queued before are sent first where the transport can. */
  close(): void;
  /**
   * Each frame received, in order. `payload` is valid only during the call unless `owned` (it
   * then belongs to the receiver: a sink's buffer, or one the link allocated for it).
   */
  onFrame: ((h: Header, payload: Uint8Array, owned: boolean) => void) | null;
  /**
   * Optional: for a large payload (≥ 16 KiB) the receiver may name the buffer it should land in
   * (exactly payload_len bytes); the frame is then delivered with that buffer and `owned` true.
   * A transport that holds the whole payload anyway (the in-process pipe) may deliver it as it is,
   * not owned, instead: the receiver copies what it keeps, as for any small payload.
   */
  sink: ((h: Header) => Uint8Array | null) | null;
  /**
   * Optional: sees each header as soon as it is whole, before its payload is waited for, buffered
   * or sunk (a connection that has not authenticated refuses a frame that announces a large
   * payload without ever holding it). A reason refuses the frame: the link stops delivering and
   * calls onMalformed with it.
   */
  admit: ((h: Header) => string | null) | null;
  /** A frame that cannot be trusted arrived: the link stops delivering; the owner closes it. */
  onMalformed: ((why: string) => void) | null;
  /** The link ended (closed by either side, or failed); called once. */
  onClose: ((reason: string) => void) | null;
  /** Fires when queued_bytes has gone back to zero after being above it. */
  onDrain: (() => void) | null;
}
