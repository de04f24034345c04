/**
 * Byte-stream connections as protocol code sees them. Real: TCP or unix sockets through Bun.
 * Simulated: links with per-direction faults. Framing is not the transport's job: the data path
 * reads frames through a FrameLink (frame-link.ts; stream-link.ts cuts a Conn's bytes into frames),
 * NBD decodes its own.
 */

/** "host:port" for TCP, "unix:/path" for a unix socket. */
export type Address = string;

export interface Conn {
  readonly remote: string;
  /**
   * Queues bytes for sending. The transport may keep a reference to `bytes` until it is written,
   * so callers must not reuse the buffer after passing it. Returns false once the conn is closed.
   */
  send(bytes: Uint8Array): boolean;
  /** Closes the connection; pending queued bytes are flushed first where possible. */
  close(): void;
  /**
   * Stops handing received bytes to onData until resume(). On a socket the kernel buffer then
   * fills and the peer meets TCP backpressure: that, not a queue of ours, is how a server slows a
   * client that sends faster than it is served. A chunk or two already read may still arrive
   * after pause(). Idempotent.
   */
  pause(): void;
  /** Hands received bytes to onData again (those that waited first, in order). Idempotent. */
  resume(): void;
  /** Called with each chunk received. The chunk is only valid during the call (copy to keep). */
  onData: ((chunk: Uint8Array) => void) | null;
  onClose: ((reason: string) => void) | null;
  /** Bytes accepted by send() that the kernel has not taken yet. Optional (0 when absent). */
  readonly queued_bytes?: number;
  /** Called when queued bytes have all been written. Optional. */
  onDrain?: (() => void) | null;
}

export interface Listener {
  readonly address: Address;
  close(): void;
}

export interface Network {
  connect(address: Address): Promise<Conn>;
  listen(address: Address, onConn: (conn: Conn) => void): Promise<Listener>;
}

export function parseAddress(address: Address): { unix: string } | { host: string; port: number } {
  if (address.startsWith("unix:")) return { unix: address.slice(5) };
  const i = address.lastIndexOf(":");
  if (i <= 0) throw new Error(`invalid address '${address}': expected HOST:PORT or unix:/path`);
  const host = address.slice(0, i).replace(/^\[(.*)\]$/, "$1");
  const port = Number(address.slice(i + 1));
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    throw new Error(`invalid port in address '${address}'`);
  }
  return { host, port };
}
