/**
 * The fixed-newstyle handshake as a push-driven state machine: feed() it bytes, it calls send()
 * with replies and sets `outcome` once the connection should enter transmission or be closed.
 * It never throws on client input: every length is checked before it is trusted, and anything a
 * conforming client cannot send ends in outcome "close".
 */
import {
  CLIENT_FLAGS_BYTES,
  EXPORT_NAME_PADDING_BYTES,
  GREETING_BYTES,
  MAX_PAYLOAD_BYTES,
  MAX_STRING_BYTES,
  MIN_BLOCK_BYTES,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_FLAG_CAN_MULTI_CONN,
  NBD_FLAG_FIXED_NEWSTYLE,
  NBD_FLAG_HAS_FLAGS,
  NBD_FLAG_NO_ZEROES,
  NBD_FLAG_READ_ONLY,
  NBD_FLAG_SEND_FLUSH,
  NBD_FLAG_SEND_FUA,
  NBD_FLAG_SEND_TRIM,
  NBD_FLAG_SEND_WRITE_ZEROES,
  NBD_INFO_BLOCK_SIZE,
  NBD_INFO_DESCRIPTION,
  NBD_INFO_EXPORT,
  NBD_INFO_NAME,
  NBD_INIT_MAGIC,
  NBD_OPT_ABORT,
  NBD_OPT_EXPORT_NAME,
  NBD_OPT_GO,
  NBD_OPT_INFO,
  NBD_OPT_LIST,
  NBD_OPTS_MAGIC,
  NBD_REP_ACK,
  NBD_REP_ERR_INVALID,
  NBD_REP_ERR_UNKNOWN,
  NBD_REP_ERR_UNSUP,
  NBD_REP_INFO,
  NBD_REP_MAGIC,
  NBD_REP_SERVER,
  OPTION_HEADER_BYTES,
  OPTION_REPLY_HEADER_BYTES,
  PREFERRED_BLOCK_BYTES,
} from "./constants.ts";
import type { ExportLookup, NbdExport } from "./exports.ts";
import { Gather } from "./gather.ts";

export interface HandshakeLimits {
  /** Option data longer than this closes the connection (real options are a few KiB at most). */
  max_option_bytes: number;
  /** Options per connection before we call it a denial of service and close. */
  max_options: number;
}

export type HandshakeOutcome =
  | { kind: "transmit"; name: string; exp: NbdExport }
  | { kind: "close"; reason: string; /** true when the client broke the protocol */ misbehaved: boolean };

/** The transmission flags an export advertises. */
export function transmissionFlags(exp: NbdExport): number {
  // CAN_MULTI_CONN: every connection to an export shares one DriveStore, and the store's flush()
  // makes durable every write that resolved before it, whichever connection issued it. So a FLUSH
  // or FUA answered on one connection covers writes answered on all of them (docs/nbd.md).
  const common = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA | NBD_FLAG_CAN_MULTI_CONN;
  if (exp.read_only) return common | NBD_FLAG_READ_ONLY;
  return common | NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES;
}

/** [minimum, preferred, maximum] block sizes advertised for an export. */
export function blockSizes(exp: NbdExport): [number, number, number] {
  // qemu refuses an export whose size is not a multiple of the advertised minimum, so an odd-sized
  // store advertises byte granularity. We accept any alignment either way: the minimum is a hint.
  const min = exp.store.size_bytes % MIN_BLOCK_BYTES === 0 ? MIN_BLOCK_BYTES : 1;
  return [min, PREFERRED_BLOCK_BYTES, MAX_PAYLOAD_BYTES];
}

const utf8 = new TextEncoder();
const utf8Decoder = new TextDecoder();

function putU64(view: DataView, at: number, value: number): void {
  view.setUint32(at, Math.floor(value / 0x100000000));
  view.setUint32(at + 4, value >>> 0);
}

export function encodeGreeting(): Uint8Array {
  const b = new Uint8Array(GREETING_BYTES);
  const v = new DataView(b.buffer);
  v.setBigUint64(0, NBD_INIT_MAGIC);
  v.setBigUint64(8, NBD_OPTS_MAGIC);
  v.setUint16(16, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
  return b;
}

export function encodeOptionReply(option: number, type: number, data: Uint8Array = new Uint8Array(0)): Uint8Array {
  const b = new Uint8Array(OPTION_REPLY_HEADER_BYTES + data.length);
  const v = new DataView(b.buffer);
  v.setBigUint64(0, NBD_REP_MAGIC);
  v.setUint32(8, option);
  v.setUint32(12, type);
  v.setUint32(16, data.length);
  b.set(data, OPTION_REPLY_HEADER_BYTES);
  return b;
}

type State = "client-flags" | "option-header" | "option-data";

export class Handshake {
  outcome: HandshakeOutcome | null = null;
  private state: State = "client-flags";
  private readonly field = new Gather();
  private noZeroes = false;
  private option = 0;
  private optionCount = 0;

  constructor(
    private readonly exports: ExportLookup,
    private readonly send: (bytes: Uint8Array) => void,
    private readonly limits: HandshakeLimits,
  ) {
    this.field.start(new Uint8Array(CLIENT_FLAGS_BYTES));
  }

  /** The bytes the server sends first. */
  greeting(): Uint8Array {
    return encodeGreeting();
  }

  /** Consumes bytes from src[pos..] until it needs more or has an outcome; returns bytes consumed. */
  feed(src: Uint8Array, pos: number): number {
    const start = pos;
    while (this.outcome === null && pos < src.length) {
      pos += this.field.take(src, pos);
      if (this.field.done) this.onField(this.field.bytes);
    }
    return pos - start;
  }

  private close(reason: string, misbehaved = true): void {
    this.outcome = { kind: "close", reason, misbehaved };
  }

  private onField(bytes: Uint8Array): void {
    const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    switch (this.state) {
      case "client-flags": {
        const flags = v.getUint32(0);
        if ((flags & ~(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES)) !== 0) {
          return this.close(`unknown client flags 0x${flags.toString(16)}`);
        }
        this.noZeroes = (flags & NBD_FLAG_C_NO_ZEROES) !== 0;
        return this.expectOptionHeader();
      }
      case "option-header": {
        if (v.getBigUint64(0) !== NBD_OPTS_MAGIC) return this.close("bad option magic");
        this.option = v.getUint32(8);
        const length = v.getUint32(12);
        if (++this.optionCount > this.limits.max_options) {
          return this.close(`more than ${this.limits.max_options} options`);
        }
        if (length > this.limits.max_option_bytes) {
          return this.close(`option ${this.option} data of ${length} bytes exceeds ${this.limits.max_option_bytes}`);
        }
        if (length === 0) return this.onOption(this.option, new Uint8Array(0));
        this.state = "option-data";
        this.field.start(new Uint8Array(length));
        return;
      }
      case "option-data":
        return this.onOption(this.option, bytes);
    }
  }

  private expectOptionHeader(): void {
    this.state = "option-header";
    this.field.start(new Uint8Array(OPTION_HEADER_BYTES));
  }

  private reply(type: number, data?: Uint8Array): void {
    this.send(encodeOptionReply(this.option, type, data));
  }

  private replyError(type: number, message: string): void {
    this.reply(type, utf8.encode(message));
  }

  private onOption(option: number, data: Uint8Array): void {
    // Every branch either sets an outcome or replies and waits for the next option.
    switch (option) {
      case NBD_OPT_EXPORT_NAME:
        this.exportName(data);
        break;
      case NBD_OPT_ABORT:
        this.reply(NBD_REP_ACK);
        this.close("client aborted the handshake", false);
        break;
      case NBD_OPT_LIST:
        this.list(data);
        break;
      case NBD_OPT_INFO:
      case NBD_OPT_GO:
        this.infoOrGo(option, data);
        break;
      default:
        // STARTTLS, STRUCTURED_REPLY, meta contexts, extended headers and anything newer: we speak
        // simple replies only, which every client must accept (qemu and libnbd fall back cleanly).
        this.replyError(NBD_REP_ERR_UNSUP, `option ${option} is not supported`);
    }
    if (this.outcome === null) this.expectOptionHeader();
  }

  private exportName(data: Uint8Array): void {
    if (data.length > MAX_STRING_BYTES) return this.close("export name too long");
    const name = utf8Decoder.decode(data);
    const exp = this.exports.get(name);
    // NBD_OPT_EXPORT_NAME has no error reply: the spec's only answer to an unknown name is to close.
    if (!exp) return this.close(`unknown export '${name}' requested by NBD_OPT_EXPORT_NAME`, false);
    const b = new Uint8Array(10 + (this.noZeroes ? 0 : EXPORT_NAME_PADDING_BYTES));
    const v = new DataView(b.buffer);
    putU64(v, 0, exp.store.size_bytes);
    v.setUint16(8, transmissionFlags(exp));
    this.send(b);
    this.outcome = { kind: "transmit", name, exp };
  }

  private list(data: Uint8Array): void {
    if (data.length !== 0) return this.replyError(NBD_REP_ERR_INVALID, "NBD_OPT_LIST takes no data");
    for (const name of this.exports.names()) {
      const exp = this.exports.get(name);
      if (!exp) continue;
      const n = utf8.encode(name);
      const d = utf8.encode(exp.description ?? "");
      const body = new Uint8Array(4 + n.length + d.length);
      new DataView(body.buffer).setUint32(0, n.length);
      body.set(n, 4);
      body.set(d, 4 + n.length);
      this.reply(NBD_REP_SERVER, body);
    }
    this.reply(NBD_REP_ACK);
  }

  private infoOrGo(option: number, data: Uint8Array): void {
    // Data: u32 name length, name, u16 request count, u16 requests[count].
    const v = new DataView(data.buffer, data.byteOffset, data.byteLength);
    if (data.length < 6) return this.replyError(NBD_REP_ERR_INVALID, "option data too short");
    const nameLength = v.getUint32(0);
    if (nameLength > data.length - 6 || nameLength > MAX_STRING_BYTES) {
      return this.replyError(NBD_REP_ERR_INVALID, "export name length out of bounds");
    }
    const count = v.getUint16(4 + nameLength);
    if (data.length !== 4 + nameLength + 2 + 2 * count) {
      return this.replyError(NBD_REP_ERR_INVALID, "information request count does not match length");
    }
    const name = utf8Decoder.decode(data.subarray(4, 4 + nameLength));
    const exp = this.exports.get(name);
    if (!exp) return this.replyError(NBD_REP_ERR_UNKNOWN, `unknown export '${name}'`);

    const requested = new Set<number>();
    for (let i = 0; i < count; i++) requested.add(v.getUint16(4 + nameLength + 2 + 2 * i));

    const info = new Uint8Array(12);
    const iv = new DataView(info.buffer);
    iv.setUint16(0, NBD_INFO_EXPORT);
    putU64(iv, 2, exp.store.size_bytes);
    iv.setUint16(10, transmissionFlags(exp));
    this.reply(NBD_REP_INFO, info);

    // Block sizes are sent unasked: they only state the defaults plus a hint, which is allowed.
    const [min, preferred, max] = blockSizes(exp);
    const bs = new Uint8Array(14);
    const bv = new DataView(bs.buffer);
    bv.setUint16(0, NBD_INFO_BLOCK_SIZE);
    bv.setUint32(2, min);
    bv.setUint32(6, preferred);
    bv.setUint32(10, max);
    this.reply(NBD_REP_INFO, bs);

    if (requested.has(NBD_INFO_NAME)) this.reply(NBD_REP_INFO, infoString(NBD_INFO_NAME, name));
    if (requested.has(NBD_INFO_DESCRIPTION) && exp.description !== undefined) {
      this.reply(NBD_REP_INFO, infoString(NBD_INFO_DESCRIPTION, exp.description));
    }
    this.reply(NBD_REP_ACK);
    if (option === NBD_OPT_GO) this.outcome = { kind: "transmit", name, exp };
  }
}

function infoString(type: number, text: string): Uint8Array {
  const s = utf8.encode(text);
  const b = new Uint8Array(2 + s.length);
  new DataView(b.buffer).setUint16(0, type);
  b.set(s, 2);
  return b;
}
