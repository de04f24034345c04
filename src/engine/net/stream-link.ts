/**
 * A FrameLink over a byte stream (TCP, a unix socket, a simulated link): frames are cut out of
 * the stream by FrameDecoder, and the frames queued during one tick leave in as few sends as
 * possible (SendBatcher). A stream cannot be resynchronised after a header that fails validation,
 * so such a header stops the decoder and is reported through onMalformed.
 */
import type { Conn } from "./conn.ts";
import type { FrameLink, Transport } from "./frame-link.ts";
import { FrameDecoder, HEADER_BYTES, type Header, encodeHeader } from "../wire/header.ts";
import { COPY_LIMIT_BYTES, SendBatcher, type CopyingConn } from "../wire/send-batcher.ts";
import { frameAround } from "../wire/headroom.ts";

export interface StreamLinkOptions {
  /** Coalesce the frames of one tick into one send (on by default; off for measurements). */
  batch?: boolean;
  /** Defaults to tcp, or unix for a unix socket's remote. */
  transport?: Transport;
}

class StreamLink implements FrameLink {
  onFrame: FrameLink["onFrame"] = null;
  sink: FrameLink["sink"] = null;
  admit: FrameLink["admit"] = null;
  onMalformed: FrameLink["onMalformed"] = null;
  onClose: FrameLink["onClose"] = null;
  onDrain: FrameLink["onDrain"] = null;
  readonly transport: Transport;
  private readonly decoder: FrameDecoder;
  private readonly out: SendBatcher | null;
  private paused = false;
  private ended = false;

  constructor(
    private readonly conn: Conn,
    opts: StreamLinkOptions,
  ) {
    this.transport = opts.transport ?? (conn.remote === "unix" ? { kind: "unix", why: "unix socket" } : { kind: "tcp", why: "tcp" });
    this.out = opts.batch === false ? null : new SendBatcher(conn);
    this.decoder = new FrameDecoder(
      (h, payload, owned) => this.onFrame?.(h, payload, owned),
      (why) => this.onMalformed?.(why),
      (h) => (this.sink === null ? null : this.sink(h)),
      (h) => (this.admit === null ? null : this.admit(h)),
    );
    // Conn.pause() stops onData itself: the decoder sees nothing while the link is paused.
    conn.onData = (chunk) => this.decoder.push(chunk);
    conn.onClose = (reason) => {
      if (this.ended) return;
      this.ended = true;
      this.decoder.stop();
      const cb = this.onClose;
      this.onClose = null;
      cb?.(reason);
    };
    conn.onDrain = () => this.onDrain?.();
  }

  get remote(): string {
    return this.conn.remote;
  }

  get copies(): boolean {
    return this.out !== null ? this.out.copies : (this.conn as Partial<CopyingConn>).send_copies === true;
  }

  get queued_bytes(): number {
    return this.conn.queued_bytes ?? 0;
  }

  send(h: Header, payload: Uint8Array | null): boolean {
    const n = payload?.length ?? 0;
    if (h.payload_len !== n) throw new Error(`frame header says ${h.payload_len} payload bytes, ${n} given`);
    if (this.ended) return false;
    const out = this.out;
    if (out !== null) {
      // A large payload with room for the header in front: one write for the whole frame.
      if (n >= COPY_LIMIT_BYTES && out.copies) {
        const frame = frameAround(payload!);
        if (frame !== null) {
          encodeHeader(h, frame, 0);
          out.push(frame);
          return true;
        }
      }
      // Encoded straight into the batcher's staging buffer: no allocation per frame.
      const at = out.reserve(HEADER_BYTES);
      encodeHeader(h, out.buffer, at);
      if (n > 0) out.push(payload!);
      return true;
    }
    const head = new Uint8Array(HEADER_BYTES);
    encodeHeader(h, head, 0);
    this.conn.send(head);
    return n === 0 || this.conn.send(payload!);
  }

  sendFrame(frame: Uint8Array): boolean {
    if (this.ended) return false;
    if (this.out !== null) this.out.push(frame);
    else return this.conn.send(frame);
    return true;
  }

  sendFrameOwned(frame: Uint8Array, give: (frame: Uint8Array) => void): boolean {
    if (this.ended) return false;
    if (this.out !== null) this.out.pushOwned(frame, give);
    else return this.conn.send(frame); // kept by the Conn: never given back
    return true;
  }

  pause(): void {
    if (this.paused) return;
    this.paused = true;
    this.conn.pause();
  }

  resume(): void {
    if (!this.paused) return;
    this.paused = false;
    this.conn.resume();
  }

  close(): void {
    this.out?.flush();
    this.decoder.stop();
    this.conn.close();
  }
}

/** Frames over a byte-stream connection. The link takes over conn's callbacks. */
export function streamLink(conn: Conn, opts: StreamLinkOptions = {}): FrameLink {
  return new StreamLink(conn, opts);
}
