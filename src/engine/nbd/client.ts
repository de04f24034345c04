/**
 * An NBD client over the injected Env: fixed-newstyle handshake with NBD_OPT_GO, then pipelined
 * simple-reply transmission. Structured replies are never requested, so every reply is the 16-byte
 * simple header, followed by exactly the requested bytes for a successful READ.
 *
 *   const nbd = await connectNbd(env, "unix:/run/nvmesh/vol1.sock", "vol1");
 *   await nbd.write(0, data, true);
 *   const back = await nbd.read(0, data.length);
 *   await nbd.close();
 *
 * Everything the server sends is checked before it is trusted; anything a conforming server cannot
 * send fails the connection, and a failed connection rejects every request in flight at once.
 */
import type { Env, TimerHandle } from "../env.ts";
import type { Conn } from "../net/conn.ts";
import {
  CLIENT_FLAGS_BYTES,
  GREETING_BYTES,
  MAX_PAYLOAD_BYTES,
  MAX_STRING_BYTES,
  NBD_CMD_DISC,
  NBD_CMD_FLAG_FUA,
  NBD_CMD_FLUSH,
  NBD_CMD_READ,
  NBD_CMD_TRIM,
  NBD_CMD_WRITE,
  NBD_CMD_WRITE_ZEROES,
  NBD_EINVAL,
  NBD_EIO,
  NBD_ENOMEM,
  NBD_ENOSPC,
  NBD_ENOTSUP,
  NBD_EOVERFLOW,
  NBD_EPERM,
  NBD_ESHUTDOWN,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_FLAG_FIXED_NEWSTYLE,
  NBD_FLAG_HAS_FLAGS,
  NBD_FLAG_NO_ZEROES,
  NBD_FLAG_READ_ONLY,
  NBD_FLAG_SEND_FLUSH,
  NBD_FLAG_SEND_FUA,
  NBD_FLAG_SEND_TRIM,
  NBD_FLAG_SEND_WRITE_ZEROES,
  NBD_INFO_BLOCK_SIZE,
  NBD_INFO_EXPORT,
  NBD_INIT_MAGIC,
  NBD_OPT_GO,
  NBD_OPTS_MAGIC,
  NBD_REP_ACK,
  NBD_REP_ERR_BLOCK_SIZE_REQD,
  NBD_REP_ERR_INVALID,
  NBD_REP_ERR_PLATFORM,
  NBD_REP_ERR_POLICY,
  NBD_REP_ERR_SHUTDOWN,
  NBD_REP_ERR_TLS_REQD,
  NBD_REP_ERR_TOO_BIG,
  NBD_REP_ERR_UNKNOWN,
  NBD_REP_ERR_UNSUP,
  NBD_REP_INFO,
  NBD_REP_MAGIC,
  NBD_SIMPLE_REPLY_MAGIC,
  OPTION_HEADER_BYTES,
  OPTION_REPLY_HEADER_BYTES,
  SIMPLE_REPLY_BYTES,
} from "./constants.ts";
import { Gather } from "./gather.ts";
import { encodeRequest } from "./request.ts";

export interface NbdClientOptions {
  /** A server that has not finished the handshake by then is given up on. */
  handshake_timeout_ms: number;
  /** Requests on the wire at once; more wait here, so the server's own bound is never the brake. */
  max_inflight_requests: number;
  /** Payload bytes (read or write) on the wire at once. */
  max_inflight_bytes: number;
}

export const DEFAULT_NBD_CLIENT_OPTIONS: NbdClientOptions = {
  handshake_timeout_ms: 30_000,
  max_inflight_requests: 64,
  max_inflight_bytes: 2 * MAX_PAYLOAD_BYTES,
};

/** Option reply data we accept; real replies are a few info records or an error message. */
const MAX_OPTION_REPLY_BYTES = 2 * MAX_STRING_BYTES + 64;
/** TRIM and WRITE_ZEROES lengths are u32; larger ranges go in pieces of this size. */
const MAX_ZERO_PIECE_BYTES = 1 << 30;

const ERRNO_NAMES: Record<number, string> = {
  [NBD_EPERM]: "EPERM",
  [NBD_EIO]: "EIO",
  [NBD_ENOMEM]: "ENOMEM",
  [NBD_EINVAL]: "EINVAL",
  [NBD_ENOSPC]: "ENOSPC",
  [NBD_EOVERFLOW]: "EOVERFLOW",
  [NBD_ENOTSUP]: "ENOTSUP",
  [NBD_ESHUTDOWN]: "ESHUTDOWN",
};

const REP_ERR_NAMES: Record<number, string> = {
  [NBD_REP_ERR_UNSUP]: "NBD_REP_ERR_UNSUP",
  [NBD_REP_ERR_POLICY]: "NBD_REP_ERR_POLICY",
  [NBD_REP_ERR_INVALID]: "NBD_REP_ERR_INVALID",
  [NBD_REP_ERR_PLATFORM]: "NBD_REP_ERR_PLATFORM",
  [NBD_REP_ERR_TLS_REQD]: "NBD_REP_ERR_TLS_REQD",
  [NBD_REP_ERR_UNKNOWN]: "NBD_REP_ERR_UNKNOWN",
  [NBD_REP_ERR_SHUTDOWN]: "NBD_REP_ERR_SHUTDOWN",
  [NBD_REP_ERR_BLOCK_SIZE_REQD]: "NBD_REP_ERR_BLOCK_SIZE_REQD",
  [NBD_REP_ERR_TOO_BIG]: "NBD_REP_ERR_TOO_BIG",
};

const COMMAND_NAMES: Record<number, string> = {
  [NBD_CMD_READ]: "READ",
  [NBD_CMD_WRITE]: "WRITE",
  [NBD_CMD_FLUSH]: "FLUSH",
  [NBD_CMD_TRIM]: "TRIM",
  [NBD_CMD_WRITE_ZEROES]: "WRITE_ZEROES",
};

/**
 * A request the server (or this client, for a command the export does not offer) refused.
 * `code` is the errno name, e.g. "EIO"; the connection stays usable.
 */
export class NbdRequestError extends Error {
  constructor(
    message: string,
    readonly code: string,
    readonly errno: number,
  ) {
    super(message);
    this.name = "NbdRequestError";
  }
}

/** The handshake or the connection failed; `code` says which NBD_REP_ERR_* when the server said. */
export class NbdConnectionError extends Error {
  constructor(
    message: string,
    readonly code: string,
  ) {
    super(message);
    this.name = "NbdConnectionError";
  }
}

/** Connects, negotiates `exportName` with NBD_OPT_GO and returns a client in transmission. */
export async function connectNbd(
  env: Env,
  address: string,
  exportName: string,
  options: Partial<NbdClientOptions> = {},
): Promise<NbdClient> {
  const opts = { ...DEFAULT_NBD_CLIENT_OPTIONS, ...options };
  if (opts.max_inflight_requests < 1 || opts.max_inflight_bytes < MAX_PAYLOAD_BYTES) {
    // A single full-size request must always fit, or it would wait forever.
    throw new Error(`NBD client limits too small: need ≥1 request and ≥${MAX_PAYLOAD_BYTES} bytes in flight`);
  }
  const conn = await env.net.connect(address);
  const reader = new HandshakeReader(conn);
  const timer: TimerHandle = env.timers.after(opts.handshake_timeout_ms, () => {
    reader.fail(`handshake with ${address} timed out after ${opts.handshake_timeout_ms} ms`);
    conn.close();
  });
  try {
    const info = await negotiate(conn, reader, address, exportName);
    return new NbdClient(conn, reader.leftover(), address, exportName, info, opts);
  } catch (err) {
    conn.close();
    throw err;
  } finally {
    timer.cancel();
  }
}

/** Collects handshake bytes and hands out exact-length reads. */
class HandshakeReader {
  private chunks: Uint8Array[] = [];
  private buffered = 0;
  private waiter: { n: number; resolve: (b: Uint8Array) => void; reject: (e: Error) => void } | null = null;
  private failure: string | null = null;

  constructor(conn: Conn) {
    conn.onData = (chunk) => {
      this.chunks.push(chunk.slice()); // chunks are only valid during the call
      this.buffered += chunk.length;
      this.wake();
    };
    conn.onClose = (reason) => this.fail(`connection closed during handshake: ${reason}`);
  }

  read(n: number): Promise<Uint8Array> {
    if (this.failure !== null) return Promise.reject(new NbdConnectionError(this.failure, "ECONNRESET"));
    if (this.waiter) throw new Error("HandshakeReader: one read at a time");
    return new Promise((resolve, reject) => {
      this.waiter = { n, resolve, reject };
      this.wake();
    });
  }

  fail(reason: string): void {
    if (this.failure !== null) return;
    this.failure = reason;
    const w = this.waiter;
    this.waiter = null;
    w?.reject(new NbdConnectionError(reason, "ECONNRESET"));
  }

  /** Bytes received past the handshake (a conforming server sends none before our first request). */
  leftover(): Uint8Array {
    return this.take(this.buffered);
  }

  private wake(): void {
    const w = this.waiter;
    if (!w || this.buffered < w.n) return;
    this.waiter = null;
    w.resolve(this.take(w.n));
  }

  private take(n: number): Uint8Array {
    const out = new Uint8Array(n);
    let filled = 0;
    while (filled < n) {
      const head = this.chunks[0]!;
      const k = Math.min(head.length, n - filled);
      out.set(head.subarray(0, k), filled);
      filled += k;
      if (k === head.length) this.chunks.shift();
      else this.chunks[0] = head.subarray(k);
    }
    this.buffered -= n;
    return out;
  }
}

interface ExportInfo {
  size_bytes: number;
  flags: number;
  /** [minimum, preferred, maximum] from NBD_INFO_BLOCK_SIZE, or the protocol defaults. */
  block_sizes: [number, number, number];
}

const utf8 = new TextEncoder();
const utf8Decoder = new TextDecoder();

function view(b: Uint8Array): DataView {
  return new DataView(b.buffer, b.byteOffset, b.byteLength);
}

async function negotiate(conn: Conn, reader: HandshakeReader, address: string, exportName: string): Promise<ExportInfo> {
  const where = `NBD server ${address}, export '${exportName}'`;
  const protocolError = (why: string) => new NbdConnectionError(`${where}: ${why}`, "EPROTO");

  const greeting = view(await reader.read(GREETING_BYTES));
  if (greeting.getBigUint64(0) !== NBD_INIT_MAGIC) throw protocolError("not an NBD server (bad greeting magic)");
  if (greeting.getBigUint64(8) !== NBD_OPTS_MAGIC) throw protocolError("oldstyle NBD server is not supported");
  const handshakeFlags = greeting.getUint16(16);
  if ((handshakeFlags & NBD_FLAG_FIXED_NEWSTYLE) === 0) throw protocolError("server does not speak fixed newstyle");

  const clientFlags = new Uint8Array(CLIENT_FLAGS_BYTES);
  view(clientFlags).setUint32(
    0,
    NBD_FLAG_C_FIXED_NEWSTYLE | (handshakeFlags & NBD_FLAG_NO_ZEROES ? NBD_FLAG_C_NO_ZEROES : 0),
  );
  conn.send(clientFlags);

  // NBD_OPT_GO data: u32 name length, name, u16 info request count, u16 requests.
  const name = utf8.encode(exportName);
  if (name.length > MAX_STRING_BYTES) throw protocolError(`export name longer than ${MAX_STRING_BYTES} bytes`);
  const go = new Uint8Array(OPTION_HEADER_BYTES + 4 + name.length + 4);
  const gv = view(go);
  gv.setBigUint64(0, NBD_OPTS_MAGIC);
  gv.setUint32(8, NBD_OPT_GO);
  gv.setUint32(12, go.length - OPTION_HEADER_BYTES);
  gv.setUint32(16, name.length);
  go.set(name, 20);
  gv.setUint16(20 + name.length, 1);
  gv.setUint16(22 + name.length, NBD_INFO_BLOCK_SIZE);
  conn.send(go);

  let exportInfo: { size_bytes: number; flags: number } | null = null;
  let blockSizes: [number, number, number] = [1, 4096, MAX_PAYLOAD_BYTES];
  for (;;) {
    const header = view(await reader.read(OPTION_REPLY_HEADER_BYTES));
    if (header.getBigUint64(0) !== NBD_REP_MAGIC) throw protocolError("bad option reply magic");
    const option = header.getUint32(8);
    const type = header.getUint32(12);
    const length = header.getUint32(16);
    if (option !== NBD_OPT_GO) throw protocolError(`reply for option ${option}, expected NBD_OPT_GO`);
    if (length > MAX_OPTION_REPLY_BYTES) throw protocolError(`option reply of ${length} bytes is too long`);
    const data = length > 0 ? await reader.read(length) : new Uint8Array(0);

    if (type >= 0x80000000) {
      const code = REP_ERR_NAMES[type] ?? `NBD_REP_ERR 0x${type.toString(16)}`;
      const message = utf8Decoder.decode(data);
      throw new NbdConnectionError(`${where}: refused with ${code}${message ? `: ${message}` : ""}`, code);
    }
    if (type === NBD_REP_ACK) {
      if (length !== 0) throw protocolError("NBD_REP_ACK with data");
      if (!exportInfo) throw protocolError("NBD_OPT_GO acknowledged without NBD_INFO_EXPORT");
      return { ...exportInfo, block_sizes: blockSizes };
    }
    if (type !== NBD_REP_INFO) throw protocolError(`unexpected option reply type ${type}`);
    if (length < 2) throw protocolError("NBD_REP_INFO without an info type");
    const dv = view(data);
    const infoType = dv.getUint16(0);
    if (infoType === NBD_INFO_EXPORT) {
      if (length !== 12) throw protocolError(`NBD_INFO_EXPORT of ${length} bytes, expected 12`);
      const size_bytes = dv.getUint32(2) * 0x100000000 + dv.getUint32(6);
      if (dv.getUint32(2) >= 0x200000) throw protocolError("export size beyond 2^53 bytes");
      const flags = dv.getUint16(10);
      if ((flags & NBD_FLAG_HAS_FLAGS) === 0) throw protocolError("transmission flags lack NBD_FLAG_HAS_FLAGS");
      exportInfo = { size_bytes, flags };
    } else if (infoType === NBD_INFO_BLOCK_SIZE) {
      if (length !== 14) throw protocolError(`NBD_INFO_BLOCK_SIZE of ${length} bytes, expected 14`);
      const min = dv.getUint32(2);
      const preferred = dv.getUint32(6);
      const max = dv.getUint32(10);
      // The spec's constraints: powers of two (min ≤ 64 KiB), min ≤ preferred, max ≥ min.
      const pow2 = (x: number) => x > 0 && (x & (x - 1)) === 0;
      if (!pow2(min) || min > 65536 || !pow2(preferred) || preferred < min || max < min) {
        throw protocolError(`invalid block sizes ${min}/${preferred}/${max}`);
      }
      blockSizes = [min, preferred, max];
    }
    // Other info (name, description) is not needed and is ignored, as the spec allows.
  }
}

/** Only what would corrupt the wire is checked here; the server judges the range against its size. */
function checkRange(offset: number, length: number): void {
  if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(length) || length < 0) {
    throw new NbdRequestError(`bad range ${offset}+${length}`, "EINVAL", NBD_EINVAL);
  }
}

interface Pending {
  cookie: number;
  type: number;
  offset: number;
  length: number;
  /** Where a READ's payload lands. */
  dst: Uint8Array | null;
  payload_bytes: number;
  resolve: () => void;
  reject: (e: Error) => void;
}

export class NbdClient {
  readonly size_bytes: number;
  /** Transmission flags (NBD_FLAG_*) the server advertised for this export. */
  readonly flags: number;
  /** [minimum, preferred, maximum] block sizes the server advertised. */
  readonly block_sizes: [number, number, number];
  /** Largest READ/WRITE payload sent as one request; longer ones are split. */
  readonly max_payload_bytes: number;

  private readonly pending = new Map<number, Pending>();
  /** Admitted requests and their payload bytes, counted from admission until their reply. */
  private admittedRequests = 0;
  private admittedBytes = 0;
  /** Requests waiting for room under the in-flight bounds, in arrival order. */
  private readonly waiting: { bytes: number; go: () => void; fail: (e: Error) => void }[] = [];
  private nextCookie = 1;
  /** Set once the connection is unusable; every later request rejects with it. */
  private failure: Error | null = null;
  private closing = false;
  private idleWaiter: (() => void) | null = null;

  // Reply parsing state: a header, then for a successful READ its payload straight into dst.
  private readonly header = new Gather();
  private readonly headerBytes = new Uint8Array(SIMPLE_REPLY_BYTES);
  private readonly payload = new Gather();
  private reading: Pending | null = null;

  constructor(
    private readonly conn: Conn,
    leftover: Uint8Array,
    readonly address: string,
    readonly export_name: string,
    info: ExportInfo,
    private readonly opts: NbdClientOptions,
  ) {
    this.size_bytes = info.size_bytes;
    this.flags = info.flags;
    this.block_sizes = info.block_sizes;
    this.max_payload_bytes = Math.min(info.block_sizes[2], MAX_PAYLOAD_BYTES);
    this.header.start(this.headerBytes);
    conn.onData = (chunk) => this.onData(chunk);
    conn.onClose = (reason) => this.fail(new NbdConnectionError(`NBD connection to ${address} lost: ${reason}`, "ECONNRESET"));
    if (leftover.length > 0) this.onData(leftover);
  }

  /** Requests sent and not yet answered. */
  get inflight_count(): number {
    return this.pending.size;
  }

  async read(offset: number, length: number): Promise<Uint8Array> {
    // Checked before allocating, so a bad length is an NbdRequestError and not a RangeError.
    checkRange(offset, length);
    const dst = new Uint8Array(length);
    await this.readInto(offset, dst);
    return dst;
  }

  async readInto(offset: number, dst: Uint8Array): Promise<void> {
    await this.pieces(offset, dst.length, this.max_payload_bytes, (at, n) =>
      this.request(NBD_CMD_READ, 0, at, n, dst.subarray(at - offset, at - offset + n)),
    );
  }

  /** With fua, resolves only once the data is durable. */
  async write(offset: number, data: Uint8Array, fua = false): Promise<void> {
    this.requireWritable("WRITE");
    const flags = this.fuaFlag(fua);
    await this.pieces(offset, data.length, this.max_payload_bytes, (at, n) =>
      this.request(NBD_CMD_WRITE, flags, at, n, null, data.subarray(at - offset, at - offset + n)),
    );
    await this.emulateFua(fua);
  }

  /** Makes every write answered before this call durable. */
  async flush(): Promise<void> {
    this.require(NBD_FLAG_SEND_FLUSH, "FLUSH");
    await this.request(NBD_CMD_FLUSH, 0, 0, 0, null);
  }

  /** Discards the range; reads of it afterwards return unspecified data (often zeroes). */
  async trim(offset: number, length: number): Promise<void> {
    this.requireWritable("TRIM");
    this.require(NBD_FLAG_SEND_TRIM, "TRIM");
    await this.pieces(offset, length, MAX_ZERO_PIECE_BYTES, (at, n) => this.request(NBD_CMD_TRIM, 0, at, n, null));
  }

  async writeZeroes(offset: number, length: number, fua = false): Promise<void> {
    this.requireWritable("WRITE_ZEROES");
    this.require(NBD_FLAG_SEND_WRITE_ZEROES, "WRITE_ZEROES");
    const flags = this.fuaFlag(fua);
    await this.pieces(offset, length, MAX_ZERO_PIECE_BYTES, (at, n) =>
      this.request(NBD_CMD_WRITE_ZEROES, flags, at, n, null),
    );
    await this.emulateFua(fua);
  }

  /**
   * Waits for the requests in flight to be answered, sends NBD_CMD_DISC and closes. Requests made
   * after close() began are rejected.
   */
  async close(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    if (this.failure) return;
    if (this.admittedRequests > 0 || this.waiting.length > 0) {
      await new Promise<void>((resolve) => (this.idleWaiter = resolve));
    }
    if (this.failure) return;
    // DISC has no reply; a cookie outside our counter's use keeps it distinct from any request.
    this.conn.send(encodeRequest({ flags: 0, type: NBD_CMD_DISC, cookie_hi: 0, cookie_lo: 0, offset: 0, length: 0 }));
    this.failure = new NbdConnectionError(`NBD connection to ${this.address} closed by the client`, "ECLOSED");
    this.conn.onClose = null;
    this.conn.onData = null;
    this.conn.close();
  }

  // ---- sending ----

  private require(flag: number, command: string): void {
    if ((this.flags & flag) === 0) {
      throw new NbdRequestError(`export '${this.export_name}' does not offer ${command}`, "ENOTSUP", NBD_ENOTSUP);
    }
  }

  private requireWritable(command: string): void {
    if (this.flags & NBD_FLAG_READ_ONLY) {
      throw new NbdRequestError(`export '${this.export_name}' is read-only: ${command} refused`, "EPERM", NBD_EPERM);
    }
  }

  /** The spec forbids FUA unless advertised; then a FLUSH afterwards gives the same durability. */
  private fuaFlag(fua: boolean): number {
    return fua && this.flags & NBD_FLAG_SEND_FUA ? NBD_CMD_FLAG_FUA : 0;
  }

  private async emulateFua(fua: boolean): Promise<void> {
    if (fua && (this.flags & NBD_FLAG_SEND_FUA) === 0) await this.flush();
  }

  /** Runs one request per piece of at most max_bytes, all pipelined. */
  private async pieces(
    offset: number,
    length: number,
    max_bytes: number,
    one: (at: number, n: number) => Promise<void>,
  ): Promise<void> {
    checkRange(offset, length);
    // A zero-length request is legal but useless, and some servers answer it with EINVAL.
    if (length === 0) return;
    const all: Promise<void>[] = [];
    for (let at = offset; at < offset + length; at += max_bytes) {
      all.push(one(at, Math.min(max_bytes, offset + length - at)));
    }
    await Promise.all(all);
  }

  private async request(
    type: number,
    flags: number,
    offset: number,
    length: number,
    dst: Uint8Array | null,
    payload?: Uint8Array,
  ): Promise<void> {
    const payload_bytes = dst ? length : payload ? payload.length : 0;
    await this.admit(payload_bytes);
    // The connection may have failed between admission and this continuation.
    if (this.failure) throw this.failure;
    const cookie = this.takeCookie();
    // encodeRequest copies the payload, so the caller may reuse its buffer as soon as we return.
    const bytes = encodeRequest({ flags, type, cookie_hi: 0, cookie_lo: cookie, offset, length }, payload);
    return await new Promise<void>((resolve, reject) => {
      this.pending.set(cookie, { cookie, type, offset, length, dst, payload_bytes, resolve, reject });
      if (!this.conn.send(bytes)) {
        this.fail(new NbdConnectionError(`NBD connection to ${this.address} is closed`, "ECONNRESET"));
      }
    });
  }

  /** Resolves once the request fits under the in-flight bounds; FIFO so big requests don't starve. */
  private admit(bytes: number): Promise<void> {
    if (this.failure) return Promise.reject(this.failure);
    if (this.closing) {
      return Promise.reject(new NbdConnectionError(`NBD connection to ${this.address} is closing`, "ECLOSED"));
    }
    if (this.waiting.length === 0 && this.fits(bytes)) {
      this.reserve(bytes);
      return Promise.resolve();
    }
    return new Promise((go, fail) => this.waiting.push({ bytes, go, fail }));
  }

  private fits(bytes: number): boolean {
    return (
      this.admittedRequests < this.opts.max_inflight_requests && this.admittedBytes + bytes <= this.opts.max_inflight_bytes
    );
  }

  /** Counted at admission, not at send, so requests admitted in one tick cannot overshoot together. */
  private reserve(bytes: number): void {
    this.admittedRequests++;
    this.admittedBytes += bytes;
  }

  private takeCookie(): number {
    // Cookie 0 is DISC's. Wrapping after 2^32 requests cannot hit a live one: at most
    // max_inflight_requests are live, and they are far younger than 2^32 requests.
    const cookie = this.nextCookie;
    this.nextCookie = this.nextCookie === 0xffffffff ? 1 : this.nextCookie + 1;
    if (this.pending.has(cookie)) throw new Error(`NBD client: cookie ${cookie} reused while in flight`);
    return cookie;
  }

  /** A request left the wire: let waiting ones in, and wake close() once nothing is in flight. */
  private settled(p: Pending): void {
    this.admittedRequests--;
    this.admittedBytes -= p.payload_bytes;
    while (this.waiting.length > 0 && this.fits(this.waiting[0]!.bytes)) {
      const w = this.waiting.shift()!;
      this.reserve(w.bytes);
      w.go();
    }
    if (this.admittedRequests === 0 && this.waiting.length === 0 && this.idleWaiter) {
      const wake = this.idleWaiter;
      this.idleWaiter = null;
      wake();
    }
  }

  // ---- receiving ----

  private onData(chunk: Uint8Array): void {
    let pos = 0;
    while (pos < chunk.length && this.failure === null) {
      if (this.reading) {
        pos += this.payload.take(chunk, pos);
        if (!this.payload.done) return;
        const p = this.reading;
        this.reading = null;
        this.header.start(this.headerBytes);
        this.finish(p);
        continue;
      }
      pos += this.header.take(chunk, pos);
      if (this.header.done) this.onReplyHeader();
    }
  }

  private onReplyHeader(): void {
    const v = view(this.headerBytes);
    const magic = v.getUint32(0);
    if (magic !== NBD_SIMPLE_REPLY_MAGIC) {
      return this.protocolFailure(`bad reply magic 0x${magic.toString(16)} (structured replies were not negotiated)`);
    }
    const error = v.getUint32(4);
    const cookie_hi = v.getUint32(8);
    const cookie = v.getUint32(12);
    const p = cookie_hi === 0 ? this.pending.get(cookie) : undefined;
    if (!p) return this.protocolFailure(`reply for unknown cookie ${cookie_hi}:${cookie}`);
    this.header.start(this.headerBytes);
    if (error !== 0) {
      // No payload follows an error, READ included: the spec's text is ambiguous, but nbdkit,
      // qemu-nbd, the kernel, libnbd and our server all send none, and clients rely on it.
      this.pending.delete(p.cookie);
      const code = ERRNO_NAMES[error] ?? `errno ${error}`;
      const what = `${COMMAND_NAMES[p.type] ?? `command ${p.type}`} ${p.offset}+${p.length}`;
      p.reject(new NbdRequestError(`NBD ${what} on export '${this.export_name}' failed: ${code}`, code, error));
      this.settled(p);
      // The spec: a client receiving ESHUTDOWN must initiate a soft disconnect.
      if (error === NBD_ESHUTDOWN) void this.close();
      return;
    }
    if (p.dst && p.dst.length > 0) {
      this.reading = p;
      this.payload.start(p.dst);
      return;
    }
    this.finish(p);
  }

  private finish(p: Pending): void {
    this.pending.delete(p.cookie);
    p.resolve();
    this.settled(p);
  }

  private protocolFailure(why: string): void {
    this.fail(new NbdConnectionError(`NBD server ${this.address}, export '${this.export_name}': ${why}`, "EPROTO"));
    this.conn.close();
  }

  /** The connection is unusable: every request in flight or waiting is rejected now. */
  private fail(err: Error): void {
    if (this.failure) return;
    this.failure = err;
    this.conn.onData = null;
    this.conn.onClose = null;
    const pending = [...this.pending.values()];
    this.pending.clear();
    this.admittedRequests = 0;
    this.admittedBytes = 0;
    const waiting = this.waiting.splice(0);
    for (const p of pending) p.reject(err);
    for (const w of waiting) w.fail(err);
    const wake = this.idleWaiter;
    this.idleWaiter = null;
    wake?.();
  }
}
