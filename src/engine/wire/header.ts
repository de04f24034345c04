/**
 * The data-path frame header: fixed 64 bytes, little-endian, followed by `payload_len` bytes.
 * Every header type of the data path is defined here, once, with the checks that decide whether
 * a frame may be trusted (TigerBeetle's invalid_header()). See docs/protocol.md for the table.
 *
 *  off size field
 *   0   4   magic           "NVM1" (0x314d564e)
 *   4   1   version         1
 *   5   1   opcode          Op
 *   6   2   flags           Flag bits
 *   8   4   request_id      chosen by the requester, echoed in the response
 *  12   4   length          range length in bytes (READ/WRITE/TRIM/WRITE_ZEROES/LOCK/UNLOCK/DIRTY_*)
 *  16   8   offset          byte offset into the drive's data area
 *  24  16   drive_uuid      the drive addressed (all-zero for target-wide ops)
 *  40   8   client_id       requester's id (fencing, from the mirroring issue on)
 *  48   8   generation      requester's topology generation (fencing)
 *  56   4   status          Status, responses only (0 in requests)
 *  60   4   payload_len     bytes that follow the header
 */
export const HEADER_BYTES = 64;
export const MAGIC = 0x314d564e; // "NVM1" little-endian
export const VERSION = 1;
/** Largest I/O one frame may carry; larger NBD requests are split by the client. */
export const MAX_IO_BYTES = 4 * 1024 * 1024;
/** Largest control (CBOR) payload: metadata slots and drive lists. */
export const MAX_CONTROL_BYTES = 1024 * 1024;
export const MAX_PAYLOAD_BYTES = Math.max(MAX_IO_BYTES, MAX_CONTROL_BYTES);
/** Locks are taken per unit of this many bytes of a drive's data area (unit i = [i*U, (i+1)*U)). */
export const LOCK_UNIT_BYTES = 64 * 1024;
/** Largest range one LOCK may name (1024 units); callers split larger ranges. */
export const MAX_LOCK_BYTES = 64 * 1024 * 1024;

export enum Op {
  /** CBOR {role, name, proof?} → CBOR target info. Must be the first frame on a connection. */
  HELLO = 1,
  READ = 2,
  WRITE = 3,
  FLUSH = 4,
  TRIM = 5,
  WRITE_ZEROES = 6,
  /**
   * Second frame when the HELLO answer carried a challenge: CBOR AuthRequest → TargetInfo. A
   * wrong proof is answered NOT_AUTHENTICATED and the connection closed.
   */
  AUTH = 7,
  /** → CBOR list of drives served. */
  LIST_DRIVES = 16,
  /** Reads the newest valid metadata slot of a drive → CBOR {generation, payload}. */
  META_READ = 17,
  /** Writes a metadata slot: CBOR {generation, payload}; generation must exceed the stored one. */
  META_WRITE = 18,
  /** Assigns an unclaimed drive to a cluster: CBOR {cluster_uuid}. Refused if already claimed. */
  CLAIM = 19,
  /**
   * Sets the drive's client registration table (fencing): CBOR FenceRequest. Role "toma" only.
   * Registrations live in the target's RAM: after a target restart every client is refused until
   * the TOMA sends FENCE again.
   */
  FENCE = 20,
  /** Locks every lock unit the range touches, all or nothing, for header client_id; waits while any is held. */
  LOCK = 21,
  /** Releases the units of the range that header client_id holds; always OK. */
  UNLOCK = 22,
  /** → CBOR list of the locks held on the drive, {client_id, offset, length}. Role "toma" only. */
  LOCK_LIST = 23,
  /** → CBOR list of the indices of the dirty bitmap regions the range touches. */
  DIRTY_GET = 24,
  /** Sets the dirty bit of every region the range touches; durable before OK. */
  DIRTY_SET = 25,
  /** Clears the dirty bit of every region the range touches; durable before OK. */
  DIRTY_CLEAR = 26,
  /**
   * → CBOR list of the indices of the regions the range touches whose bits were set when this
   * serving of the drive began (a restart, a plug) and that no DIRTY_SET or DIRTY_CLEAR touched
   * since: the locks held then are lost. Role "toma" only.
   */
  DIRTY_INHERITED = 27,
}

export const Flag = {
  /** WRITE, WRITE_ZEROES: answered only once durable. */
  FUA: 1 << 0,
  /**
   * READ: answer LOCKED instead of data if any lock unit of the range is, or was while being read,
   * locked. LOCK: answer LOCKED at once, taking nothing, instead of waiting (a unit is held, or
   * wanted by a waiting LOCK).
   */
  TEST_LOCK: 1 << 1,
  /** WRITE, WRITE_ZEROES, TRIM: the dirty bits of the range are durable before the data op runs. */
  DIRTY: 1 << 2,
  /**
   * WRITE, WRITE_ZEROES, TRIM of a mirror leg: the dirty bits of the range are durable before the
   * data op runs, and the target clears them itself once flushes have made the region's writes
   * durable (a lost cache then leaves every region that may differ from the other legs marked).
   */
  INTENT: 1 << 3,
  /**
   * WRITE from a TOMA only: a copy from a mirror leg that lost its cache (it may lack writes that
   * were acknowledged). The drive's cache epoch in answers changes first, so every client with
   * unflushed writes here learns at its next FLUSH that they may be gone.
   */
  LOSSY_COPY: 1 << 4,
  /**
   * WRITE, WRITE_ZEROES, TRIM: take the lock of the range's units for header client_id first,
   * exactly as LOCK does (waiting while any is held, range at most MAX_LOCK_BYTES), then run the
   * op. The lock stays held after the answer, until UNLOCK: a mirror write's lock-leg write,
   * which saves the separate LOCK round trip before it.
   */
  LOCK: 1 << 5,
  RESPONSE: 1 << 15,
} as const;
const KNOWN_FLAGS = Flag.FUA | Flag.TEST_LOCK | Flag.DIRTY | Flag.INTENT | Flag.LOSSY_COPY | Flag.LOCK | Flag.RESPONSE;

export enum Status {
  OK = 0,
  /** The drive is not served here (moved, unplugged, unknown UUID). */
  NO_SUCH_DRIVE = 1,
  /** offset/length outside the drive's data area, or misaligned. */
  OUT_OF_RANGE = 2,
  /** The drive returned an I/O error. */
  IO_ERROR = 3,
  /** The request is malformed for its opcode (bad CBOR, wrong payload length). */
  INVALID = 4,
  /** Refused by policy: stale generation, unregistered client, drive claimed by another cluster. */
  REFUSED = 5,
  /** The connection has not completed HELLO, or failed authentication. */
  NOT_AUTHENTICATED = 6,
  /** META_WRITE generation not newer than the stored one. */
  STALE = 7,
  /** Target is shutting down or overloaded; retry elsewhere or later. */
  BUSY = 8,
  /** The range is locked, or was locked while being read (READ with TEST_LOCK): read again later. */
  LOCKED = 9,
}

export interface Header {
  opcode: Op;
  flags: number;
  request_id: number;
  length: number;
  offset: number;
  drive_uuid: Uint8Array; // 16 bytes
  client_id: number;
  generation: number;
  status: Status;
  payload_len: number;
}

const ZERO_UUID = new Uint8Array(16);

export function emptyHeader(): Header {
  return {
    opcode: Op.HELLO,
    flags: 0,
    request_id: 0,
    length: 0,
    offset: 0,
    drive_uuid: ZERO_UUID,
    client_id: 0,
    generation: 0,
    status: Status.OK,
    payload_len: 0,
  };
}

// Little-endian field access straight on the bytes: a DataView per header would force JSC to
// materialise the typed array's ArrayBuffer (`.buffer`), which the profile showed as a top cost.
function setU32(b: Uint8Array, at: number, v: number): void {
  b[at] = v;
  b[at + 1] = v >>> 8;
  b[at + 2] = v >>> 16;
  b[at + 3] = v >>> 24;
}

function getU32(b: Uint8Array, at: number): number {
  return (b[at]! | (b[at + 1]! << 8) | (b[at + 2]! << 16)) + b[at + 3]! * 0x100_0000;
}

function setU64(b: Uint8Array, at: number, v: number): void {
  setU32(b, at, v >>> 0);
  setU32(b, at + 4, Math.floor(v / 0x1_0000_0000));
}

function getU64(b: Uint8Array, at: number): number {
  // Values above 2^53 cannot be represented exactly; they are rejected by validation.
  return getU32(b, at + 4) * 0x1_0000_0000 + getU32(b, at);
}

/** Writes h into dst[at .. at+64). */
export function encodeHeader(h: Header, dst: Uint8Array, at = 0): void {
  setU32(dst, at, MAGIC);
  dst[at + 4] = VERSION;
  dst[at + 5] = h.opcode;
  dst[at + 6] = h.flags;
  dst[at + 7] = h.flags >>> 8;
  setU32(dst, at + 8, h.request_id >>> 0);
  setU32(dst, at + 12, h.length >>> 0);
  setU64(dst, at + 16, h.offset);
  const u = h.drive_uuid.length === 16 ? h.drive_uuid : ZERO_UUID;
  for (let i = 0; i < 16; i++) dst[at + 24 + i] = u[i]!;
  setU64(dst, at + 40, h.client_id);
  setU64(dst, at + 48, h.generation);
  setU32(dst, at + 56, h.status >>> 0);
  setU32(dst, at + 60, h.payload_len >>> 0);
}

/** A frame: header plus payload in one buffer, ready to send. */
export function encodeFrame(h: Header, payload?: Uint8Array): Uint8Array {
  const n = payload?.length ?? 0;
  const out = new Uint8Array(HEADER_BYTES + n);
  encodeHeader({ ...h, payload_len: n }, out, 0);
  if (payload && n) out.set(payload, HEADER_BYTES);
  return out;
}

function sameBytes16(a: Uint8Array, b: Uint8Array, at: number): boolean {
  for (let i = 0; i < 16; i++) if (a[i] !== b[at + i]) return false;
  return true;
}

/**
 * Decodes and validates a header. Returns the header, or a string that says why it cannot be
 * trusted; the caller closes the connection on a string (the stream cannot be resynchronised).
 * When the drive uuid equals lastUuid's bytes, that array is reused rather than copied: header
 * drive_uuid arrays are shared and must be treated as read-only.
 */
export function decodeHeader(src: Uint8Array, at = 0, lastUuid: Uint8Array | null = null): Header | string {
  if (src.length - at < HEADER_BYTES) return "short header";
  if (getU32(src, at) !== MAGIC) return "bad magic";
  const version = src[at + 4]!;
  if (version !== VERSION) return `unsupported version ${version}`;
  const opcode = src[at + 5]!;
  if (!(opcode in Op)) return `unknown opcode ${opcode}`;
  const flags = src[at + 6]! | (src[at + 7]! << 8);
  if (flags & ~KNOWN_FLAGS) return `unknown flags 0x${flags.toString(16)}`;
  if (getU32(src, at + 20) > 0x1fffff) return "offset above 2^53";
  if (getU32(src, at + 44) > 0x1fffff) return "client_id above 2^53";
  if (getU32(src, at + 52) > 0x1fffff) return "generation above 2^53";
  const payload_len = getU32(src, at + 60);
  if (payload_len > MAX_PAYLOAD_BYTES) return `payload_len ${payload_len} above limit`;
  const length = getU32(src, at + 12);
  const status = getU32(src, at + 56);
  if (!(status in Status)) return `unknown status ${status}`;
  const isResponse = (flags & Flag.RESPONSE) !== 0;
  if (!isResponse && status !== Status.OK) return "status set in a request";
  const writesData = opcode === Op.WRITE && !isResponse;
  const readsData = opcode === Op.READ && isResponse && status === Status.OK;
  if ((writesData || readsData) && payload_len !== length) {
    return `payload_len ${payload_len} does not match length ${length}`;
  }
  if ((opcode === Op.READ || opcode === Op.WRITE) && length > MAX_IO_BYTES) {
    return `length ${length} above the ${MAX_IO_BYTES}-byte I/O limit`;
  }
  return {
    opcode,
    flags,
    request_id: getU32(src, at + 8),
    length,
    offset: getU64(src, at + 16),
    drive_uuid: lastUuid !== null && sameBytes16(lastUuid, src, at + 24) ? lastUuid : src.slice(at + 24, at + 40),
    client_id: getU64(src, at + 40),
    generation: getU64(src, at + 48),
    status,
    payload_len,
  };
}

/**
 * Splits a byte stream into frames. Bytes arrive in arbitrary chunks; complete frames are handed
 * to onFrame with a payload view that is valid only during the call. A header that fails
 * validation calls onError once and stops the decoder (the connection must be closed).
 *
 * Large payloads that span chunks can skip the decoder's buffer: for a frame whose payload is at
 * least DIRECT_MIN_BYTES and not yet complete, `sink(h)` may return the buffer the payload should
 * land in (exactly payload_len bytes); the decoder then copies each chunk straight into it and
 * hands it to onFrame with `owned` true. Returning null keeps the buffered path.
 *
 * `admit(h)`, when given, sees every header as soon as it is whole, before a byte of its payload
 * is waited for, buffered or sunk: a reason string fails the decoder there (onError). This is
 * how a connection that has not authenticated refuses a frame announcing a large payload
 * without ever holding it.
 */
export const DIRECT_MIN_BYTES = 16 * 1024;
const EMPTY = new Uint8Array(0);
/** The decoder's buffer starts this small and goes back to it once a burst has passed. */
const DECODER_IDLE_BYTES = 64 * 1024;

export class FrameDecoder {
  /** Allocated at the first partial frame: a connection that sends nothing holds nothing. */
  private buf: Uint8Array = EMPTY;
  private len = 0;
  private failed = false;
  /** The frame whose payload is being copied into a sink buffer, if any. */
  private direct: Header | null = null;
  private directDst: Uint8Array = EMPTY;
  private directFilled = 0;
  /** The drive uuid of the last header, shared with the next header that names the same drive. */
  private lastUuid: Uint8Array | null = null;

  constructor(
    private readonly onFrame: (h: Header, payload: Uint8Array, owned: boolean) => void,
    private readonly onError: (why: string) => void,
    private readonly sink: ((h: Header) => Uint8Array | null) | null = null,
    private readonly admit: ((h: Header) => string | null) | null = null,
  ) {}

  push(chunk: Uint8Array): void {
    if (this.failed) return;
    if (this.direct !== null) {
      const used = this.fillDirect(chunk);
      if (this.direct !== null || this.failed || used === chunk.length) return;
      chunk = chunk.subarray(used);
    }
    // Fast path: nothing buffered, consume frames straight out of the chunk.
    let src = chunk;
    let pos = 0;
    if (this.len > 0) {
      this.append(chunk);
      src = this.buf;
    }
    const end = this.len > 0 ? this.len : chunk.length;
    while (end - pos >= HEADER_BYTES) {
      const h = decodeHeader(src, pos, this.lastUuid);
      if (typeof h === "string") {
        this.fail(h);
        return;
      }
      this.lastUuid = h.drive_uuid;
      if (this.admit !== null) {
        const refused = this.admit(h);
        if (refused !== null) {
          this.fail(refused);
          return;
        }
      }
      const total = HEADER_BYTES + h.payload_len;
      if (end - pos < total) {
        if (h.payload_len >= DIRECT_MIN_BYTES && this.sink !== null) {
          const dst = this.sink(h);
          if (dst !== null && dst.length === h.payload_len) {
            dst.set(src.subarray(pos + HEADER_BYTES, end), 0);
            this.direct = h;
            this.directDst = dst;
            this.directFilled = end - pos - HEADER_BYTES;
            pos = end;
          }
        }
        break;
      }
      this.onFrame(h, h.payload_len === 0 ? EMPTY : src.subarray(pos + HEADER_BYTES, pos + total), false);
      if (this.failed) return;
      pos += total;
    }
    if (src === this.buf) {
      this.buf.copyWithin(0, pos, this.len);
      this.len -= pos;
      // A buffer grown for a large frame is not kept for the life of the connection.
      if (this.len === 0 && this.buf.length > DECODER_IDLE_BYTES) this.buf = new Uint8Array(DECODER_IDLE_BYTES);
    } else if (pos < chunk.length) {
      this.append(chunk.subarray(pos));
    }
  }

  /** A frame cannot be trusted: nothing more is decoded, and nothing buffered is kept. */
  private fail(why: string): void {
    this.failed = true;
    this.buf = EMPTY;
    this.len = 0;
    this.onError(why);
  }

  /** Stops decoding (used when the owner closes the connection). */
  stop(): void {
    this.failed = true;
    this.direct = null;
    this.directDst = EMPTY;
    this.buf = EMPTY; // nothing more is decoded: the memory goes with the connection's end
    this.len = 0;
  }

  /** Copies what the sink frame still needs from chunk; delivers it when complete. */
  private fillDirect(chunk: Uint8Array): number {
    const dst = this.directDst;
    const n = Math.min(dst.length - this.directFilled, chunk.length);
    dst.set(n === chunk.length ? chunk : chunk.subarray(0, n), this.directFilled);
    this.directFilled += n;
    if (this.directFilled === dst.length) {
      const h = this.direct!;
      this.direct = null;
      this.directDst = EMPTY;
      this.onFrame(h, dst, true);
    }
    return n;
  }

  private append(bytes: Uint8Array): void {
    if (this.len + bytes.length > this.buf.length) {
      let cap = Math.max(this.buf.length, DECODER_IDLE_BYTES);
      while (cap < this.len + bytes.length) cap *= 2;
      const next = new Uint8Array(cap);
      next.set(this.buf.subarray(0, this.len));
      this.buf = next;
    }
    this.buf.set(bytes, this.len);
    this.len += bytes.length;
  }
}
