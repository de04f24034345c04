/**
 * The data-path frames over an RDMA reliable-connected queue pair, as pure code: which bytes go
 * in which registered send slot, when a SEND may be posted (credits), how received slots become
 * frames again, and when a receive slot is given back. The runtime (runtime/rdma-link.ts) owns
 * the queue pair and calls in here with completions; tests drive it with a simulated wire.
 *
 * Transfer: SEND/RECV only. Each side posts `recv_slots` receive buffers of `slot_bytes`, and
 * every SEND fills at most one of the peer's slots. A message is:
 *
 *  off size
 *   0   1   kind      1 FRAMES, 2 FRAGMENT, 3 CREDITS
 *   1   3   reserved  0
 *   4   4   credits   receive slots the sender re-posted since its previous message
 *   8   ..  body
 *
 * - FRAMES: whole frames back to back (64-byte header, then its payload), as many as fit; only the
 *   last may be cut short, and only when it is larger than a message: its payload then goes on
 *   in FRAGMENT messages, which carry nothing else, until it is complete. A frame smaller than a
 *   message is never split, and a header never is.
 * - CREDITS: no body; sent when the receiver owes many credits and has nothing to send.
 *
 * Payloads are copied into registered send slots (a copy the kernel makes on TCP too); on
 * receipt a frame's payload is a view of the receive slot, valid during onFrame, after which the
 * slot is posted again. A payload that spans messages is collected into the receiver's sink
 * buffer (a READ's destination, a WRITE's drive buffer), or one allocated for it. RDMA READ/WRITE
 * would avoid the send-side copy only if every caller's buffer were registered (or staged, which
 * is this copy again) and would need an extra exchange of keys per request; it is not used.
 *
 * Credits: a sender may post a SEND only into a receive slot the peer has posted. It starts with
 * the peer's recv_slots (from the connection's private data), spends one per message, and gets
 * them back in the `credits` field of the peer's messages. The last credit is kept for a CREDITS
 * message, and one is sent when at least max(2, recv_slots / 4) are owed and nothing else goes out,
 * so two peers can never both wait for credits the other cannot send (tested with random runs).
 * A paused receiver re-posts nothing: its peer runs out of credits and stops (backpressure).
 */
import { DIRECT_MIN_BYTES, HEADER_BYTES, type Header, decodeHeader, encodeHeader } from "../wire/header.ts";

export const MSG_HEADER_BYTES = 8;
export const Kind = { FRAMES: 1, FRAGMENT: 2, CREDITS: 3 } as const;
/** Bytes queued beyond this (no credits for a long time: a stuck peer) close the link. */
export const MAX_QUEUED_BYTES = 256 * 1024 * 1024;

export interface RdmaShape {
  send_slots: number;
  recv_slots: number;
  slot_bytes: number;
}

/** What the peer said in its connection private data. */
export interface PeerShape {
  recv_slots: number;
  slot_bytes: number;
}

/** The queue pair as this code sees it (the runtime's Endpoint; a simulated wire in tests). */
export interface RdmaPort {
  sendSlot(i: number): Uint8Array;
  postSend(i: number, length: number): void;
  recvSlot(i: number): Uint8Array;
  postRecv(i: number): void;
}

export interface FramingHandlers {
  onFrame(h: Header, payload: Uint8Array, owned: boolean): void;
  sink(h: Header): Uint8Array | null;
  /** Sees each header before its payload is collected; a reason refuses it (FrameLink.admit). */
  admit(h: Header): string | null;
  /** The peer broke the protocol (a bad header, a message that cannot be): close the link. */
  onMalformed(why: string): void;
  /** Queued bytes went back to zero. */
  onDrain(): void;
  /** Runs fn after the current tick's sends (queueMicrotask in the runtime). */
  later(fn: () => void): void;
}

/** Connection private data: magic, version, this side's receive slots and slot size. */
export const PRIVATE_DATA_BYTES = 16;
const PD_MAGIC = 0x3152_564e; // "NVR1" little-endian
export const MIN_SLOT_BYTES = 4096;
export const MIN_RECV_SLOTS = 4;

export function encodePrivateData(recv_slots: number, slot_bytes: number): Uint8Array {
  const b = new Uint8Array(PRIVATE_DATA_BYTES);
  const v = new DataView(b.buffer);
  v.setUint32(0, PD_MAGIC, true);
  b[4] = 1;
  v.setUint32(8, recv_slots, true);
  v.setUint32(12, slot_bytes, true);
  return b;
}

/** The peer's shape, or why its private data cannot be used. */
export function decodePrivateData(b: Uint8Array): PeerShape | string {
  if (b.length < PRIVATE_DATA_BYTES) return `private data of ${b.length} bytes (not an nvmesh peer?)`;
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  if (v.getUint32(0, true) !== PD_MAGIC) return "bad private data magic (not an nvmesh peer?)";
  if (b[4] !== 1) return `unsupported RDMA framing version ${b[4]}`;
  const recv_slots = v.getUint32(8, true);
  const slot_bytes = v.getUint32(12, true);
  if (recv_slots < MIN_RECV_SLOTS) return `peer posts ${recv_slots} receive slots, fewer than ${MIN_RECV_SLOTS}`;
  if (slot_bytes < MIN_SLOT_BYTES) return `peer's slots of ${slot_bytes} bytes are below ${MIN_SLOT_BYTES}`;
  return { recv_slots, slot_bytes };
}

/** A frame waiting for a send slot or a credit (copies: the caller's buffers are free). */
interface Pending {
  head: Uint8Array;
  payload: Uint8Array;
  /** Payload bytes already placed in messages; -1 while the header has not been. */
  sent: number;
}

/** A frame being received across FRAGMENT messages. */
interface Partial {
  h: Header;
  dst: Uint8Array;
  filled: number;
}

const EMPTY = new Uint8Array(0);

export class RdmaFraming {
  /** Credits: peer receive slots we may still fill. */
  private credits: number;
  /** Receive slots re-posted since our last message told the peer. */
  private owed = 0;
  private readonly freeSend: number[] = [];
  /** The message being filled: its send slot, or -1. */
  private open = -1;
  private openKind = 0;
  private fill = 0;
  /** Frames waiting, in order, with the bytes they hold. */
  private pending: Pending[] = [];
  private pendingHead = 0;
  private queued = 0;
  private flushScheduled = false;
  private readonly flushBound = () => this.flush();
  /** Largest message: our slot or the peer's, whichever is smaller. */
  private readonly msg_bytes: number;
  private readonly return_min: number;
  /** Receive side. */
  private partial: Partial | null = null;
  private paused = false;
  /** Received slots not processed yet (paused), in order: [slot, byte_len]. */
  private held: number[] = [];
  private failed = false;
  private lastUuid: Uint8Array | null = null;
  private readonly head = new Uint8Array(HEADER_BYTES);

  constructor(
    private readonly port: RdmaPort,
    readonly shape: RdmaShape,
    peer: PeerShape,
    private readonly on: FramingHandlers,
  ) {
    for (let i = shape.send_slots - 1; i >= 0; i--) this.freeSend.push(i);
    this.credits = peer.recv_slots;
    this.msg_bytes = Math.min(shape.slot_bytes, peer.slot_bytes);
    if (this.msg_bytes < MIN_SLOT_BYTES) throw new Error(`RDMA message size ${this.msg_bytes} below ${MIN_SLOT_BYTES}`);
    // At least 2: a CREDITS message returns its credits and costs the peer one slot, which it
    // re-posts and then owes; with 1, two idle peers would trade CREDITS messages forever.
    this.return_min = Math.max(2, Math.floor(shape.recv_slots / 4));
  }

  /** Bytes of frames not placed in a message yet. */
  get queued_bytes(): number {
    return this.queued;
  }

  /** For tests and status: credits held, credits owed, free send slots. */
  get state(): { credits: number; owed: number; free_send: number; held: number } {
    return { credits: this.credits, owed: this.owed, free_send: this.freeSend.length, held: this.held.length / 2 };
  }

  /** Posts every receive slot (before connecting: the peer may send at once). */
  postAllReceives(): void {
    for (let i = 0; i < this.shape.recv_slots; i++) this.port.postRecv(i);
  }

  send(h: Header, payload: Uint8Array | null): void {
    const n = payload?.length ?? 0;
    if (h.payload_len !== n) throw new Error(`frame header says ${h.payload_len} payload bytes, ${n} given`);
    encodeHeader(h, this.head, 0);
    this.queue(this.head, n === 0 ? EMPTY : payload!);
  }

  sendFrame(frame: Uint8Array): void {
    if (frame.length < HEADER_BYTES) throw new Error(`a frame of ${frame.length} bytes has no header`);
    this.queue(frame.subarray(0, HEADER_BYTES), frame.subarray(HEADER_BYTES));
  }

  private queue(head: Uint8Array, payload: Uint8Array): void {
    if (this.failed) return;
    if (this.pendingHead === this.pending.length) {
      // Nothing waits: straight into send slots; what does not fit is copied and waits.
      const sent = this.place(head, payload, -1);
      if (sent === payload.length) return this.schedule();
      this.hold(head.slice(), payload.subarray(Math.max(0, sent)).slice(), sent < 0 ? -1 : 0);
    } else {
      this.hold(head.slice(), payload.slice(), -1);
    }
    this.schedule();
  }

  private hold(head: Uint8Array, payload: Uint8Array, sent: number): void {
    this.pending.push({ head, payload, sent });
    this.queued += (sent < 0 ? HEADER_BYTES : 0) + payload.length;
    if (this.queued > MAX_QUEUED_BYTES) {
      this.failed = true;
      this.on.onMalformed(`send queue over ${MAX_QUEUED_BYTES} bytes: the peer takes nothing`);
    }
  }

  /**
   * Places a frame (its header unless sent ≥ 0, then payload from `sent`) into messages, opening
   * and posting them as credits and slots allow. Returns the payload bytes placed in the end
   * (payload.length: all), or -1 when not even the header could be placed.
   */
  private place(head: Uint8Array, payload: Uint8Array, sent: number): number {
    const max = this.msg_bytes;
    if (sent < 0) {
      const whole = HEADER_BYTES + payload.length;
      // A frame that fits in a message never straddles two: close the open one if it lacks room.
      if (this.open >= 0 && (this.openKind !== Kind.FRAMES || this.fill + whole > max)) this.post();
      if (this.open < 0 && !this.openMessage(Kind.FRAMES)) return -1;
      const slot = this.port.sendSlot(this.open);
      slot.set(head, this.fill);
      this.fill += HEADER_BYTES;
      const n = Math.min(payload.length, max - this.fill);
      if (n > 0) slot.set(n === payload.length ? payload : payload.subarray(0, n), this.fill);
      this.fill += n;
      sent = n;
      if (sent < payload.length) this.post(); // full: the rest goes in FRAGMENTs
    }
    while (sent < payload.length) {
      if (!this.openMessage(Kind.FRAGMENT)) return sent;
      const n = Math.min(payload.length - sent, max - this.fill);
      this.port.sendSlot(this.open).set(payload.subarray(sent, sent + n), this.fill);
      this.fill += n;
      sent += n;
      this.post(); // a FRAGMENT carries nothing else
    }
    return sent;
  }

  /** Opens a message of `kind` if a send slot and a credit (beyond the reserve) are free. */
  private openMessage(kind: number): boolean {
    if (this.open >= 0) return true;
    if (this.credits < 2 || this.freeSend.length === 0) return false;
    this.open = this.freeSend.pop()!;
    this.openKind = kind;
    this.fill = MSG_HEADER_BYTES;
    return true;
  }

  /** Posts the open message, returning our owed credits with it. */
  private post(): void {
    const i = this.open;
    if (i < 0) return;
    this.open = -1;
    this.postMessage(i, this.openKind, this.fill);
  }

  private postMessage(i: number, kind: number, length: number): void {
    const slot = this.port.sendSlot(i);
    const owed = this.owed;
    slot[0] = kind;
    slot[1] = slot[2] = slot[3] = 0;
    slot[4] = owed;
    slot[5] = owed >>> 8;
    slot[6] = owed >>> 16;
    slot[7] = owed >>> 24;
    this.owed = 0;
    this.credits--;
    this.port.postSend(i, length);
  }

  private schedule(): void {
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    this.on.later(this.flushBound);
  }

  /** End of tick: places waiting frames, posts the open message, returns credits if owed. */
  flush(): void {
    this.flushScheduled = false;
    if (this.failed) return;
    const hadQueue = this.queued > 0;
    while (this.pendingHead < this.pending.length) {
      const p = this.pending[this.pendingHead]!;
      const before = p.sent;
      const sent = this.place(p.head, p.payload, p.sent);
      if (sent !== p.payload.length) {
        if (sent >= 0) {
          this.queued -= (before < 0 ? HEADER_BYTES : 0) + (sent - Math.max(0, before));
          p.sent = sent;
        }
        break;
      }
      this.queued -= (before < 0 ? HEADER_BYTES : 0) + (p.payload.length - Math.max(0, before));
      this.pending[this.pendingHead++] = undefined as unknown as Pending;
    }
    if (this.pendingHead === this.pending.length) {
      this.pending = [];
      this.pendingHead = 0;
    }
    this.post();
    if (this.owed >= this.return_min && this.credits >= 1 && this.freeSend.length > 0) {
      this.postMessage(this.freeSend.pop()!, Kind.CREDITS, MSG_HEADER_BYTES);
    }
    if (hadQueue && this.queued === 0) this.on.onDrain();
  }

  /** A SEND completed: its slot is free again. */
  sendCompleted(slot: number): void {
    this.freeSend.push(slot);
    if (this.pendingHead < this.pending.length || this.owed >= this.return_min) this.schedule();
  }

  /** A receive completed in `slot` with `byte_len` bytes. */
  received(slot: number, byte_len: number): void {
    if (this.failed) return;
    if (this.paused || this.held.length > 0) {
      this.held.push(slot, byte_len);
      // The credits it carries are ours at once: only frames wait for resume().
      this.takeCredits(this.port.recvSlot(slot));
      return;
    }
    this.process(slot, byte_len, true);
  }

  private takeCredits(m: Uint8Array): void {
    const c = (m[4]! | (m[5]! << 8) | (m[6]! << 16)) + m[7]! * 0x100_0000;
    if (c > 0) {
      this.credits += c;
      if (this.pendingHead < this.pending.length) this.schedule();
    }
  }

  private process(slot: number, byte_len: number, credits: boolean): void {
    const m = this.port.recvSlot(slot);
    const why = byte_len < MSG_HEADER_BYTES ? `a message of ${byte_len} bytes` : this.deliver(m.subarray(0, byte_len), credits);
    if (why !== null) {
      this.failed = true;
      this.on.onMalformed(why);
      return;
    }
    if (this.failed) return; // closed from inside onFrame: the queue pair is going away
    // Every frame of the slot was handed over during the calls above: the slot is free again.
    this.port.postRecv(slot);
    this.owed++;
    if (this.owed >= this.return_min) this.schedule();
  }

  /** Hands the frames of one message to onFrame; returns why the message is bad, or null. */
  private deliver(m: Uint8Array, credits: boolean): string | null {
    if (credits) this.takeCredits(m);
    const kind = m[0]!;
    if (m[1] !== 0 || m[2] !== 0 || m[3] !== 0) return "reserved message bytes are not zero";
    if (kind === Kind.CREDITS) return m.length === MSG_HEADER_BYTES ? null : "a CREDITS message with a body";
    if (kind === Kind.FRAGMENT) {
      const p = this.partial;
      if (p === null) return "a FRAGMENT with no frame to continue";
      const n = m.length - MSG_HEADER_BYTES;
      if (n === 0 || p.filled + n > p.dst.length) return "a FRAGMENT longer than its frame's payload";
      p.dst.set(m.subarray(MSG_HEADER_BYTES), p.filled);
      p.filled += n;
      if (p.filled === p.dst.length) {
        this.partial = null;
        this.on.onFrame(p.h, p.dst, true);
      }
      return null;
    }
    if (kind !== Kind.FRAMES) return `unknown message kind ${kind}`;
    if (this.partial !== null) return "a FRAMES message before the last frame's payload was complete";
    let pos = MSG_HEADER_BYTES;
    if (pos === m.length) return "an empty FRAMES message";
    while (pos < m.length) {
      const h = decodeHeader(m, pos, this.lastUuid);
      if (typeof h === "string") return `${h} (at byte ${pos} of a ${m.length}-byte message)`;
      this.lastUuid = h.drive_uuid;
      const refused = this.on.admit(h);
      if (refused !== null) return refused;
      pos += HEADER_BYTES;
      const have = m.length - pos;
      // Read before onFrame: the receiver owns the header and may reuse it (the target turns a
      // request's header into its answer's).
      const n = h.payload_len;
      if (have >= n) {
        this.on.onFrame(h, n === 0 ? EMPTY : m.subarray(pos, pos + n), false);
        if (this.failed) return null;
        pos += n;
        continue;
      }
      // Cut short: only the last frame, and only one larger than a message may be.
      if (MSG_HEADER_BYTES + HEADER_BYTES + h.payload_len <= this.msg_bytes || pos - HEADER_BYTES > MSG_HEADER_BYTES) {
        return "a frame was split that did not need to be";
      }
      let dst = h.payload_len >= DIRECT_MIN_BYTES ? this.on.sink(h) : null;
      if (dst === null || dst.length !== h.payload_len) dst = new Uint8Array(h.payload_len);
      dst.set(m.subarray(pos), 0);
      this.partial = { h, dst, filled: have };
      return null;
    }
    return null;
  }

  pause(): void {
    this.paused = true;
  }

  resume(): void {
    if (!this.paused) return;
    this.paused = false;
    while (this.held.length > 0 && !this.paused && !this.failed) {
      const slot = this.held.shift()!;
      const len = this.held.shift()!;
      this.process(slot, len, false);
    }
  }

  /** The link failed or closed: nothing more is sent or delivered. */
  stop(): void {
    this.failed = true;
    this.pending = [];
    this.pendingHead = 0;
    this.queued = 0;
  }
}
