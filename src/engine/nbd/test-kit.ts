/**
 * In-memory plumbing for testing the NBD server without sockets: a connected pair of Conns and a
 * minimal byte-level client. Deterministic: delivery uses microtasks only, no timers.
 */
import type { Env } from "../env.ts";
import type { Conn } from "../net/conn.ts";
import {
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_INFO_BLOCK_SIZE,
  NBD_OPT_GO,
  NBD_OPTS_MAGIC,
  NBD_REP_ACK,
  OPTION_REPLY_HEADER_BYTES,
  SIMPLE_REPLY_BYTES,
} from "./constants.ts";
import { encodeRequest, type NbdRequest } from "./request.ts";

class MemConn implements Conn {
  onData: ((chunk: Uint8Array) => void) | null = null;
  onClose: ((reason: string) => void) | null = null;
  peer!: MemConn;
  closed = false;
  /** Chunks held while paused, delivered in order on resume. */
  private held: Uint8Array[] = [];
  paused = false;

  constructor(
    readonly remote: string,
    /** Splits each send into pieces of at most this many bytes, to exercise reassembly. */
    private readonly max_chunk_bytes: number,
  ) {}

  send(bytes: Uint8Array): boolean {
    if (this.closed) return false;
    const copy = bytes.slice();
    for (let at = 0; at < copy.length; at += this.max_chunk_bytes) {
      const piece = copy.subarray(at, at + this.max_chunk_bytes);
      queueMicrotask(() => this.peer.arrive(piece));
    }
    return true;
  }

  pause(): void {
    this.paused = true;
  }

  resume(): void {
    if (!this.paused) return;
    this.paused = false;
    queueMicrotask(() => {
      while (this.held.length > 0 && !this.paused && !this.closed) this.onData?.(this.held.shift()!);
    });
  }

  private arrive(piece: Uint8Array): void {
    if (this.closed) return;
    if (this.paused || this.held.length > 0) this.held.push(piece);
    else this.onData?.(piece);
  }

  close(): void {
    if (this.closed) return;
    // Queued bytes are delivered first, as a real transport flushes before it ends (held ones are
    // dropped with the connection).
    queueMicrotask(() => {
      this.shut("closed");
      this.peer.shut("closed by peer");
    });
  }

  private shut(reason: string): void {
    if (this.closed) return;
    this.closed = true;
    const cb = this.onClose;
    this.onClose = null;
    this.onData = null;
    cb?.(reason);
  }
}

/** Two connected in-memory Conns: [client side, server side]. */
export function memConnPair(max_chunk_bytes = 1 << 30): [Conn & { closed: boolean }, Conn & { closed: boolean }] {
  const a = new MemConn("mem-client", max_chunk_bytes);
  const b = new MemConn("mem-server", max_chunk_bytes);
  a.peer = b;
  b.peer = a;
  return [a, b];
}

/**
 * Bytes received in chunks, read back in exact counts: what a test client needs to take a
 * protocol's fixed-size fields off a stream. One read at a time.
 */
export class ExactReader {
  private chunks: Uint8Array[] = [];
  private buffered = 0;
  private waiter: { n: number; resolve: (b: Uint8Array) => void; reject: (e: Error) => void } | null = null;
  private failure: string | null = null;

  /** A received chunk (copied: a chunk is only lent for the call). */
  push(chunk: Uint8Array): void {
    this.chunks.push(chunk.slice());
    this.buffered += chunk.length;
    this.wake();
  }

  /** The stream ended: a read waiting for bytes that will never come is rejected. */
  end(reason: string): void {
    this.failure = reason;
    this.wake();
  }

  /** Resolves with exactly n bytes, or rejects if the stream ends first. */
  read(n: number): Promise<Uint8Array> {
    if (this.waiter) throw new Error("one read at a time");
    return new Promise((resolve, reject) => {
      this.waiter = { n, resolve, reject };
      this.wake();
    });
  }

  get pending_bytes(): number {
    return this.buffered;
  }

  private wake(): void {
    const w = this.waiter;
    if (!w) return;
    if (this.buffered < w.n) {
      if (this.failure !== null) {
        this.waiter = null;
        w.reject(new Error(`connection closed (${this.failure}) while waiting for ${w.n} bytes`));
      }
      return;
    }
    const out = new Uint8Array(w.n);
    let filled = 0;
    while (filled < w.n) {
      const head = this.chunks[0]!;
      const take = Math.min(head.length, w.n - filled);
      out.set(head.subarray(0, take), filled);
      filled += take;
      if (take === head.length) this.chunks.shift();
      else this.chunks[0] = head.subarray(take);
    }
    this.buffered -= w.n;
    this.waiter = null;
    w.resolve(out);
  }
}

/** A raw NBD client for tests: reads exact byte counts and speaks just enough protocol. */
export class RawNbdClient {
  private readonly reader = new ExactReader();
  closeReason: string | null = null;
  readonly closed: Promise<string>;

  constructor(readonly conn: Conn) {
    let onClosed!: (r: string) => void;
    this.closed = new Promise((r) => (onClosed = r));
    conn.onData = (chunk) => this.reader.push(chunk);
    conn.onClose = (reason) => {
      this.closeReason = reason;
      onClosed(reason);
      this.reader.end(reason);
    };
  }

  send(bytes: Uint8Array): void {
    this.conn.send(bytes);
  }

  /** Resolves with exactly n bytes, or rejects if the connection closes first. */
  read(n: number): Promise<Uint8Array> {
    return this.reader.read(n);
  }

  get pending_bytes(): number {
    return this.reader.pending_bytes;
  }

  /** Reads the greeting and answers with fixed-newstyle + no-zeroes client flags. */
  async greet(): Promise<{ handshake_flags: number }> {
    const g = await this.read(18);
    const flags = new DataView(g.buffer).getUint16(16);
    const f = new Uint8Array(4);
    new DataView(f.buffer).setUint32(0, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
    this.send(f);
    return { handshake_flags: flags };
  }

  sendOption(option: number, data: Uint8Array = new Uint8Array(0)): void {
    const b = new Uint8Array(16 + data.length);
    const v = new DataView(b.buffer);
    v.setBigUint64(0, NBD_OPTS_MAGIC);
    v.setUint32(8, option);
    v.setUint32(12, data.length);
    b.set(data, 16);
    this.send(b);
  }

  async readOptionReply(): Promise<{ option: number; type: number; data: Uint8Array }> {
    const h = await this.read(OPTION_REPLY_HEADER_BYTES);
    const v = new DataView(h.buffer);
    const length = v.getUint32(16);
    return { option: v.getUint32(8), type: v.getUint32(12), data: await this.read(length) };
  }

  /** NBD_OPT_GO for name; returns the size and transmission flags from NBD_INFO_EXPORT. */
  async go(name: string): Promise<{ size: number; flags: number }> {
    const n = new TextEncoder().encode(name);
    const d = new Uint8Array(4 + n.length + 2 + 2);
    const v = new DataView(d.buffer);
    v.setUint32(0, n.length);
    d.set(n, 4);
    v.setUint16(4 + n.length, 1);
    v.setUint16(6 + n.length, NBD_INFO_BLOCK_SIZE);
    this.sendOption(NBD_OPT_GO, d);
    let size = -1;
    let flags = -1;
    for (;;) {
      const r = await this.readOptionReply();
      if (r.type === NBD_REP_ACK) break;
      if (r.type >= 0x80000000) throw new Error(`GO failed with reply type 0x${r.type.toString(16)}`);
      const rv = new DataView(r.data.buffer);
      if (rv.getUint16(0) === 0) {
        size = rv.getUint32(2) * 0x100000000 + rv.getUint32(6);
        flags = rv.getUint16(10);
      }
    }
    return { size, flags };
  }

  request(req: Partial<NbdRequest> & { type: number; cookie: number }, payload?: Uint8Array): void {
    this.send(
      encodeRequest(
        {
          flags: req.flags ?? 0,
          type: req.type,
          cookie_hi: 0,
          cookie_lo: req.cookie,
          offset: req.offset ?? 0,
          length: req.length ?? payload?.length ?? 0,
        },
        payload,
      ),
    );
  }

  /** Reads one simple reply; read_length is the payload to expect if the reply is a successful READ. */
  async reply(read_length = 0): Promise<{ error: number; cookie: number; data: Uint8Array | null }> {
    const h = await this.read(SIMPLE_REPLY_BYTES);
    const v = new DataView(h.buffer);
    if (v.getUint32(0) !== 0x67446698) throw new Error("bad reply magic");
    const error = v.getUint32(4);
    const data = error === 0 && read_length > 0 ? await this.read(read_length) : null;
    return { error, cookie: v.getUint32(12), data };
  }
}

export interface TestEnv extends Env {
  /** Every log line, for assertions ("the server logged why it closed"). */
  logged: { level: string; msg: string; fields?: Record<string, unknown> }[];
  /** Runs every pending timer now, as if its delay had passed. */
  fireTimers(): void;
}

/** An Env whose timers fire only on fireTimers(), with a capturing logger and no network. */
export function testEnv(): TestEnv {
  const logged: TestEnv["logged"] = [];
  let timers: { fn: () => void; live: boolean }[] = [];
  let seed = 0x9e3779b9;
  const u32 = () => {
    seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0;
    return seed;
  };
  const logAt = (level: string) => (msg: string, fields?: Record<string, unknown>) => {
    logged.push({ level, msg, fields });
  };
  return {
    logged,
    fireTimers() {
      const due = timers;
      timers = [];
      for (const t of due) if (t.live) t.fn();
    },
    clock: { now_ms: () => 0 },
    timers: {
      after(_delay_ms, fn) {
        const t = { fn, live: true };
        timers.push(t);
        return { cancel: () => (t.live = false) };
      },
      every(_period_ms, fn) {
        const t = { fn, live: true };
        timers.push(t);
        return { cancel: () => (t.live = false) };
      },
    },
    random: {
      u32,
      fill(b) {
        for (let i = 0; i < b.length; i++) b[i] = u32() & 0xff;
      },
    },
    net: {
      connect: () => Promise.reject(new Error("no network in testEnv")),
      listen: () => Promise.reject(new Error("no network in testEnv")),
    },
    log: { debug: logAt("debug"), info: logAt("info"), warn: logAt("warn"), error: logAt("error") },
  };
}
