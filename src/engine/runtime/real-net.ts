/**
 * Network over Bun's TCP and unix sockets. Bun's socket.write may accept only part of a buffer;
 * the rest is queued here and written on drain, so protocol code can treat send() as reliable.
 */
import type { Socket, TCPSocketListener, UnixSocketListener } from "bun";
import { chmodSync, chownSync, unlinkSync } from "node:fs";
import { type Address, type Conn, type Listener, type ListenOptions, type Network, parseAddress } from "../net/conn.ts";
import type { CopyingConn } from "../wire/send-batcher.ts";

/** Bytes queued beyond this on one connection are a bug or a stuck peer: close it. */
const MAX_QUEUED_BYTES = 256 * 1024 * 1024;
/**
 * An accepted (server side) connection stops reading while more than this waits to be sent: a
 * peer that does not read its answers may not send more requests. Only servers do it: if both
 * ends stopped reading while their sends wait, each would wait for the other forever. A
 * requester bounds what it has in flight instead (wire/session.ts).
 */
export const SERVER_UNSENT_PAUSE_BYTES = 4 * 1024 * 1024;

/**
 * send() never keeps the caller's bytes: what the kernel does not take at once is copied into the
 * queue, so callers that know this (CopyingConn) reuse their buffers.
 */
class BunConn implements CopyingConn {
  readonly send_copies = true as const;
  onData: ((chunk: Uint8Array) => void) | null = null;
  onClose: ((reason: string) => void) | null = null;
  onDrain: (() => void) | null = null;
  private queue: Uint8Array[] = [];
  /**
   * Per queue entry: for a buffer sent with sendOwned(), the whole buffer and what to give it
   * back to once written; null for the copies send() makes.
   */
  private owned: (Uint8Array | null)[] = [];
  private givers: (((b: Uint8Array) => void) | null)[] = [];
  private queued = 0;
  private closed = false;
  private closing = false;
  /** pause() was called (the protocol's bounds are reached). */
  private appPaused = false;
  /** Server side: the peer is not reading what we send (SERVER_UNSENT_PAUSE_BYTES). */
  private sendPaused = false;
  /** Whether the socket itself is told not to read. */
  private sockPaused = false;
  /** Chunks Bun had read already when the socket was paused: handed over on resume, in order. */
  private held: Uint8Array[] = [];
  private delivering = false;

  constructor(
    private readonly sock: Socket<BunConn | undefined>,
    readonly remote: string,
    private readonly server: boolean,
  ) {}

  pause(): void {
    if (this.appPaused) return;
    this.appPaused = true;
    this.applyPause();
  }

  resume(): void {
    if (!this.appPaused) return;
    this.appPaused = false;
    this.applyPause();
    // Never re-entrantly: resume() is called from inside the protocol's own completion paths.
    if (this.held.length > 0 && !this.delivering) {
      this.delivering = true;
      queueMicrotask(() => this.deliverHeld());
    }
  }

  /** A chunk from the socket: to the protocol, or held while paused. */
  received(chunk: Uint8Array): void {
    if (this.closed) return;
    if (this.appPaused || this.held.length > 0) this.held.push(chunk.slice()); // only lent to us
    else this.onData?.(chunk);
  }

  private deliverHeld(): void {
    this.delivering = false;
    while (this.held.length > 0 && !this.appPaused && !this.closed) this.onData?.(this.held.shift()!);
  }

  private applyPause(): void {
    const want = this.appPaused || this.sendPaused;
    if (want === this.sockPaused || this.closed) return;
    this.sockPaused = want;
    if (want) this.sock.pause();
    else this.sock.resume();
  }

  send(bytes: Uint8Array): boolean {
    if (this.closed || this.closing) return false;
    if (this.queue.length === 0) {
      const n = this.sock.write(bytes);
      if (n === bytes.length) return true;
      if (n < 0) {
        this.closeNow("write failed");
        return false;
      }
      bytes = bytes.subarray(Math.max(0, n));
    }
    return this.enqueue(bytes.slice(), null, null); // the caller may reuse its buffer as soon as we return
  }

  /**
   * send() without the copy: what the kernel does not take at once is queued by reference, and
   * give(bytes) is called once all of it is written (at once when the kernel took it all; never
   * if the connection ends first). The caller must not touch bytes until then. For large reply
   * buffers from a pool: copying the part a unix socket to fio does not take cost 10 % of the
   * client daemon at 128k reads.
   */
  sendOwned(bytes: Uint8Array, give: (b: Uint8Array) => void): boolean {
    if (this.closed || this.closing) return false;
    let rest = bytes;
    if (this.queue.length === 0) {
      const n = this.sock.write(bytes);
      if (n === bytes.length) {
        give(bytes);
        return true;
      }
      if (n < 0) {
        this.closeNow("write failed");
        return false;
      }
      rest = bytes.subarray(Math.max(0, n));
    }
    return this.enqueue(rest, bytes, give);
  }

  private enqueue(bytes: Uint8Array, whole: Uint8Array | null, give: ((b: Uint8Array) => void) | null): boolean {
    this.queue.push(bytes);
    this.owned.push(whole);
    this.givers.push(give);
    this.queued += bytes.length;
    if (this.queued > MAX_QUEUED_BYTES) {
      this.closeNow("send queue over limit");
      return false;
    }
    if (this.server && !this.sendPaused && this.queued > SERVER_UNSENT_PAUSE_BYTES) {
      this.sendPaused = true;
      this.applyPause();
    }
    return true;
  }

  get queued_bytes(): number {
    return this.queued;
  }

  drain(): void {
    const had = this.queue.length > 0;
    while (this.queue.length > 0) {
      const head = this.queue[0]!;
      const n = this.sock.write(head);
      if (n < 0) return this.closeNow("write failed");
      this.queued -= Math.max(0, n);
      if (n < head.length) {
        this.queue[0] = head.subarray(Math.max(0, n));
        return;
      }
      this.queue.shift();
      const whole = this.owned.shift()!;
      const give = this.givers.shift()!;
      if (give !== null) give(whole!);
    }
    if (this.sendPaused) {
      this.sendPaused = false;
      this.applyPause();
    }
    if (this.closing) this.sock.end();
    else if (had) this.onDrain?.();
  }

  close(): void {
    if (this.closed || this.closing) return;
    this.closing = true;
    if (this.queue.length === 0) this.sock.end();
  }

  private closeNow(reason: string): void {
    if (this.closed) return;
    this.sock.terminate();
    this.closedBy(reason);
  }

  closedBy(reason: string): void {
    if (this.closed) return;
    this.closed = true;
    this.queue = [];
    this.owned = [];
    this.givers = []; // buffers still queued are left to the GC, never given back
    this.queued = 0;
    this.held = [];
    const cb = this.onClose;
    this.onClose = null;
    this.onData = null;
    cb?.(reason);
  }
}

function handlers(onOpen: (c: BunConn) => void, server: boolean) {
  return {
    open(sock: Socket<BunConn | undefined>) {
      const remote = sock.remoteAddress ? `${sock.remoteAddress}:${sock.remotePort}` : "unix";
      // Frames are batched per tick already; Nagle would only hold the last one back.
      if (sock.remoteAddress) sock.setNoDelay?.(true);
      const c = new BunConn(sock, remote, server);
      sock.data = c;
      onOpen(c);
    },
    data(sock: Socket<BunConn | undefined>, chunk: Uint8Array) {
      sock.data?.received(chunk);
    },
    drain(sock: Socket<BunConn | undefined>) {
      sock.data?.drain();
    },
    close(sock: Socket<BunConn | undefined>, err?: Error) {
      sock.data?.closedBy(err ? `closed: ${err.message}` : "closed by peer");
    },
    error(sock: Socket<BunConn | undefined>, err: Error) {
      sock.data?.closedBy(`socket error: ${err.message}`);
    },
    end(sock: Socket<BunConn | undefined>) {
      sock.end();
    },
  };
}

export class BunNetwork implements Network {
  async connect(address: Address): Promise<Conn> {
    const a = parseAddress(address);
    return await new Promise<Conn>((resolve, reject) => {
      let opened = false;
      const h = handlers((c) => {
        opened = true;
        resolve(c);
      }, false);
      const opts = {
        socket: {
          ...h,
          connectError(_s: unknown, err: Error) {
            if (!opened) reject(new Error(`cannot connect to ${address}: ${err.message}`));
          },
        },
        data: undefined,
      };
      const p =
        "unix" in a
          ? Bun.connect<BunConn | undefined>({ unix: a.unix, ...opts })
          : Bun.connect<BunConn | undefined>({ hostname: a.host, port: a.port, ...opts });
      p.then(
        (sock) => sock.setNoDelay?.(true),
        (err: Error) => reject(new Error(`cannot connect to ${address}: ${err.message}`)),
      );
    });
  }

  async listen(address: Address, onConn: (conn: Conn) => void, options: ListenOptions = {}): Promise<Listener> {
    const a = parseAddress(address);
    const socket = handlers(onConn, true);
    let l: TCPSocketListener<BunConn | undefined> | UnixSocketListener<BunConn | undefined>;
    if ("unix" in a) {
      try {
        unlinkSync(a.unix); // a stale socket file from a crashed run would make bind fail
      } catch {}
    } else if (options.mode !== undefined || options.gid !== undefined) {
      throw new Error(`socket mode and group apply to unix sockets, not to ${address}`);
    }
    try {
      l = "unix" in a
        ? bindUnix(a.unix, socket, options)
        : Bun.listen<BunConn | undefined>({ hostname: a.host, port: a.port, socket, data: undefined });
    } catch (e) {
      if (e instanceof SocketModeError) throw e;
      throw new Error(listenFailure(address, e));
    }
    const bound = "unix" in a ? address : `${a.host}:${(l as TCPSocketListener<BunConn | undefined>).port}`;
    return {
      address: bound,
      close: () => l.stop(true),
    };
  }
}

/**
 * Why a socket could not listen on `address`, in words with what to do: Bun says only "Failed to
 * listen at HOST", with the errno in `code`.
 */
export function listenFailure(address: string, e: unknown): string {
  const code = (e as { code?: unknown }).code;
  const why =
    code === "EADDRINUSE" ? "the address is in use by another process (another nvmesh daemon?): stop it or choose another port"
    : code === "EADDRNOTAVAIL" ? "that is not an address of this host: use one of its addresses, or 0.0.0.0 for all of them"
    : code === "EACCES" ? "permission denied (ports below 1024 need root)"
    : code === "ENOENT" ? "its directory does not exist"
    : code === undefined ? `${(e as Error).message} (is the host name right?)`
    : (e as Error).message;
  return `cannot listen on ${address}: ${why}`;
}

/**
 * Binds a unix socket that nobody but its owner can connect to until its mode and group are the
 * ones asked for: bound under umask 0177 (mode 0600 from the start; connecting needs write
 * permission), then chowned and chmodded. Without `mode`, the socket keeps the umask's mode as
 * before. bind() is synchronous in Bun.listen, so no other JavaScript runs under the narrow umask.
 */
function bindUnix(path: string, socket: ReturnType<typeof handlers>, options: ListenOptions): UnixSocketListener<BunConn | undefined> {
  if (options.mode === undefined && options.gid === undefined) return Bun.listen<BunConn | undefined>({ unix: path, socket, data: undefined });
  const old = process.umask(0o177);
  let l: UnixSocketListener<BunConn | undefined>;
  try {
    l = Bun.listen<BunConn | undefined>({ unix: path, socket, data: undefined });
  } finally {
    process.umask(old);
  }
  try {
    if (options.gid !== undefined) chownSync(path, process.getuid?.() ?? 0, options.gid);
    if (options.mode !== undefined) chmodSync(path, options.mode);
  } catch (e) {
    l.stop(true);
    throw new SocketModeError(`cannot set the permissions of ${path}: ${(e as Error).message}`);
  }
  return l;
}

/** The socket was bound but its mode or group could not be set (it is closed again). */
class SocketModeError extends Error {}
