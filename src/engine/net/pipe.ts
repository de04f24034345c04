/**
 * A frame link inside one process: the client daemon's path to a target it hosts itself
 * (`client serve --drive`). Both ends speak the same protocol as over TCP (HELLO, AUTH, fencing,
 * locks: nothing is skipped, and every header is encoded and checked by decodeHeader as if it had
 * crossed a wire); only the kernel is left out, which on a 2-core machine is most of the cost of
 * a request (two socket hops and the wakeups they cause).
 *
 * send() hands the frame to the peer's onFrame at once, so the payload is not copied; nor is a
 * large one copied into the receiver's sink (see deliver). A frame
 * sent while a delivery is already running (the peer answering from inside its onFrame, or a
 * nested send), or while the peer is paused, is copied into the peer's backlog and delivered
 * later, in order: the caller may reuse its buffers as soon as send() returns, and no onFrame
 * runs inside another. The backlog is two byte arenas per end, used in turn (one being delivered
 * while the other fills), so a burst of answers costs copies but no allocation per frame; a
 * large frame sent with sendFrameOwned waits there by reference instead, and is given back to
 * its sender once delivered.
 */
import type { FrameLink, Transport } from "./frame-link.ts";
import { HEADER_BYTES, type Header, decodeHeader, encodeHeader } from "../wire/header.ts";

interface Pair {
  delivering: boolean;
}

/**
 * Frames waiting for delivery, in order: copies back to back in one growable buffer (header, then
 * payload), or large frames kept by reference (sendFrameOwned), given back once delivered.
 */
class Arena {
  buf = new Uint8Array(64 * 1024);
  used = 0;
  /** Start of each frame in buf (copies), or -1 (a frame kept by reference). */
  starts: number[] = [];
  /** End of each frame in buf; unused for frames kept by reference. */
  ends: number[] = [];
  /** Per frame: the frame kept by reference and where it goes once delivered, or null (a copy). */
  frames: (Uint8Array | null)[] = [];
  gives: (((frame: Uint8Array) => void) | null)[] = [];

  add(head: Uint8Array, payload: Uint8Array): void {
    const n = HEADER_BYTES + payload.length;
    if (this.used + n > this.buf.length) {
      let cap = this.buf.length;
      while (cap < this.used + n) cap *= 2;
      const next = new Uint8Array(cap);
      next.set(this.buf.subarray(0, this.used));
      this.buf = next;
    }
    this.buf.set(head.subarray(0, HEADER_BYTES), this.used);
    this.buf.set(payload, this.used + HEADER_BYTES);
    this.starts.push(this.used);
    this.used += n;
    this.ends.push(this.used);
    this.frames.push(null);
    this.gives.push(null);
  }

  /** A whole encoded frame, by reference. */
  keep(frame: Uint8Array, give: (frame: Uint8Array) => void): void {
    this.starts.push(-1);
    this.ends.push(-1);
    this.frames.push(frame);
    this.gives.push(give);
  }

  /** Appends frames i.. of `from`, in order. */
  addFrom(from: Arena, i: number): void {
    for (let k = i; k < from.starts.length; k++) {
      const f = from.frames[k]!;
      if (f !== null) {
        this.keep(f, from.gives[k]!);
        continue;
      }
      const at = from.starts[k]!;
      this.add(from.buf.subarray(at, at + HEADER_BYTES), from.buf.subarray(at + HEADER_BYTES, from.ends[k]!));
    }
  }

  clear(): void {
    this.used = 0;
    this.starts.length = 0;
    this.ends.length = 0;
    this.frames.length = 0;
    this.gives.length = 0;
  }
}

const EMPTY = new Uint8Array(0);
const TRANSPORT: Transport = { kind: "in-process", why: "in-process: the target runs in this process" };

class PipeLink implements FrameLink {
  readonly copies = true as const;
  readonly queued_bytes = 0;
  readonly transport = TRANSPORT;
  onFrame: FrameLink["onFrame"] = null;
  sink: FrameLink["sink"] = null;
  admit: FrameLink["admit"] = null;
  onMalformed: FrameLink["onMalformed"] = null;
  onClose: FrameLink["onClose"] = null;
  onDrain: FrameLink["onDrain"] = null;
  peer!: PipeLink;
  private closed = false;
  private paused = false;
  /** Frames for this end that could not be delivered at once (copies), in order. */
  private backlog = new Arena();
  /** The other arena: the one being delivered from, or empty. */
  private spare = new Arena();
  private draining = false;
  /** One header encoding, reused: decodeHeader makes the receiver's own copy. */
  private readonly scratch = new Uint8Array(HEADER_BYTES);
  private lastUuid: Uint8Array | null = null;

  constructor(
    private readonly pair: Pair,
    readonly remote: string,
  ) {}

  send(h: Header, payload: Uint8Array | null): boolean {
    const n = payload?.length ?? 0;
    if (h.payload_len !== n) throw new Error(`frame header says ${h.payload_len} payload bytes, ${n} given`);
    if (this.closed) return false;
    encodeHeader(h, this.scratch, 0);
    this.peer.receive(this.scratch, n === 0 ? EMPTY : payload!);
    return true;
  }

  sendFrame(frame: Uint8Array): boolean {
    if (this.closed) return false;
    this.peer.receive(frame, frame.subarray(HEADER_BYTES));
    return true;
  }

  /**
   * A frame the sender wants back: delivered at once when it can be, else kept by reference in
   * the backlog (no copy) and given back once delivered. The target's READ answers come here,
   * and most are sent from inside the delivery of their request, so they wait for the next turn:
   * copying each into the backlog cost a 128 KiB read one of its four copies.
   */
  sendFrameOwned(frame: Uint8Array, give: (frame: Uint8Array) => void): boolean {
    if (this.closed) return false;
    this.peer.receiveOwned(frame, give);
    return true;
  }

  pause(): void {
    this.paused = true;
  }

  resume(): void {
    if (!this.paused) return;
    this.paused = false;
    this.schedule();
  }

  close(): void {
    if (this.closed) return;
    // What was sent before close still arrives (as on a socket), then both ends hear the close.
    this.closed = true;
    queueMicrotask(() => {
      this.peer.flushBacklog();
      this.closedBy("closed");
      this.peer.closedBy("closed by peer");
    });
  }

  /** A frame from the peer: its header bytes at head[0..64), its payload. */
  private receive(head: Uint8Array, payload: Uint8Array): void {
    if (this.closed && this.onFrame === null) return;
    if (this.pair.delivering || this.paused || this.backlog.starts.length > 0) {
      this.backlog.add(head, payload);
      this.schedule();
      return;
    }
    this.decodeAndDeliver(head, 0, payload);
  }

  private receiveOwned(frame: Uint8Array, give: (frame: Uint8Array) => void): void {
    if (this.closed && this.onFrame === null) return;
    if (this.pair.delivering || this.paused || this.backlog.starts.length > 0) {
      this.backlog.keep(frame, give);
      this.schedule();
      return;
    }
    this.decodeAndDeliver(frame, 0, frame.subarray(HEADER_BYTES));
    give(frame); // delivered not owned: the receiver kept no reference
  }

  /** Checks the header at head[at..] as a receiver of wire bytes would, then delivers. */
  private decodeAndDeliver(head: Uint8Array, at: number, payload: Uint8Array): void {
    // Consecutive frames naming one drive share its uuid array, as FrameDecoder's do.
    const h = decodeHeader(head, at, this.lastUuid);
    if (typeof h === "string") return this.malformed(h);
    this.lastUuid = h.drive_uuid;
    if (h.payload_len !== payload.length) return this.malformed(`payload_len ${h.payload_len} but ${payload.length} bytes follow`);
    const refused = this.admit === null ? null : this.admit(h);
    if (refused !== null) return this.malformed(refused);
    this.deliver(h, payload, false);
  }

  private malformed(why: string): void {
    const cb = this.onMalformed;
    this.onFrame = null;
    cb?.(why);
  }

  private schedule(): void {
    if (this.draining || this.backlog.starts.length === 0) return;
    this.draining = true;
    queueMicrotask(() => {
      this.draining = false;
      if (this.pair.delivering) return this.schedule();
      this.flushBacklog();
    });
  }

  private flushBacklog(): void {
    while (this.backlog.starts.length > 0 && !this.paused && this.onFrame !== null) {
      // Deliver from one arena while frames sent meanwhile fill the other.
      const a = this.backlog;
      this.backlog = this.spare;
      this.spare = a;
      let i = 0;
      for (; i < a.starts.length && !this.paused; i++) {
        const f = a.frames[i]!;
        if (f !== null) {
          this.decodeAndDeliver(f, 0, f.subarray(HEADER_BYTES));
          a.gives[i]!(f);
          continue;
        }
        const at = a.starts[i]!;
        this.decodeAndDeliver(a.buf, at, a.buf.subarray(at + HEADER_BYTES, a.ends[i]!));
      }
      if (i < a.starts.length) {
        // Paused part way: what is left goes first, before what arrived meanwhile.
        const later = this.backlog;
        this.backlog = new Arena();
        this.backlog.addFrom(a, i);
        this.backlog.addFrom(later, 0);
      }
      a.clear();
    }
  }

  /**
   * The receiver's sink is not used: a socket needs it to collect a large payload spread over
   * chunks, here the payload is whole and valid during onFrame, and the receiver copies it only if
   * it must keep it (a target writing it into the page cache at once does not). Copying into the
   * sink regardless cost every 128 KiB in-process WRITE one more copy on the one busy thread.
   */
  private deliver(h: Header, payload: Uint8Array, owned: boolean): void {
    const to = this.onFrame;
    if (to === null) return;
    this.pair.delivering = true;
    try {
      to(h, payload, owned);
    } catch (e) {
      // A bug on the receiving side: the link ends there, as a socket would, for both ends.
      const why = `receiver failed: ${(e as Error).message}`;
      queueMicrotask(() => {
        this.closedBy(why);
        this.peer.closedBy("closed by peer");
      });
    } finally {
      this.pair.delivering = false;
    }
  }

  private closedBy(reason: string): void {
    this.closed = true;
    this.backlog.clear();
    const cb = this.onClose;
    this.onClose = null;
    this.onFrame = null;
    cb?.(reason);
  }
}

/** Two connected ends: what one sends, the other receives. `a` and `b` name each end's peer. */
export function linkPair(a = "in-process", b = "in-process"): [FrameLink, FrameLink] {
  const pair: Pair = { delivering: false };
  const x = new PipeLink(pair, a);
  const y = new PipeLink(pair, b);
  x.peer = y;
  y.peer = x;
  return [x, y];
}
