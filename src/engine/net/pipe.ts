/**
 * A connection inside one process: the client daemon's path to a target it hosts itself
 * (`client serve --drive`). Both ends speak the same wire protocol as over TCP (HELLO, AUTH,
 * fencing, locks: nothing is skipped); only the kernel is left out, which on a 2-core machine is
 * most of the cost of a request (two socket hops and the wakeups they cause).
 *
 * send() hands the bytes to the peer's onData at once, so nothing is copied. A send made while a
 * delivery is already running (the peer answering from inside its onData, or a nested send) is
 * copied and delivered on a microtask, after what came before it: the caller's buffer may be
 * reused as soon as send() returns (CopyingConn), and no onData runs inside another.
 *
 * pause() on one end holds what its peer sends (copied) until resume(): there is no kernel
 * buffer to push back with, but the sender is this process's own requester, which bounds what
 * it has in flight.
 */
import type { Conn } from "./conn.ts";
import type { CopyingConn } from "../wire/send-batcher.ts";

interface Pair {
  delivering: boolean;
}

class PipeEnd implements CopyingConn {
  readonly send_copies = true as const;
  onData: ((chunk: Uint8Array) => void) | null = null;
  onClose: ((reason: string) => void) | null = null;
  peer!: PipeEnd;
  private closed = false;
  /** Copies of sends that could not be delivered at once, in order. */
  private backlog: Uint8Array[] = [];
  private draining = false;
  /** This end's pause(): its peer's sends wait in the peer's backlog. */
  paused = false;

  constructor(
    private readonly pair: Pair,
    readonly remote: string,
  ) {}

  pause(): void {
    this.paused = true;
  }

  resume(): void {
    if (!this.paused) return;
    this.paused = false;
    this.peer.scheduleDrain();
  }

  send(bytes: Uint8Array): boolean {
    if (this.closed) return false;
    if (this.pair.delivering || this.backlog.length > 0 || this.peer.paused) {
      this.backlog.push(bytes.slice());
      this.scheduleDrain();
      return true;
    }
    this.deliver(bytes);
    return true;
  }

  close(): void {
    if (this.closed) return;
    // What was sent before close still arrives (as on a socket), then both ends hear the close.
    const pending = this.backlog;
    this.backlog = [];
    this.closed = true;
    queueMicrotask(() => {
      for (const b of pending) this.deliver(b);
      this.closedBy("closed");
      this.peer.closedBy("closed by peer");
    });
  }

  scheduleDrain(): void {
    if (this.draining || this.backlog.length === 0) return;
    this.draining = true;
    queueMicrotask(() => this.drain());
  }

  private drain(): void {
    this.draining = false;
    if (this.pair.delivering) return this.scheduleDrain();
    // One part at a time: the receiver may pause in the middle of the backlog.
    while (this.backlog.length > 0 && !this.peer.paused && !this.pair.delivering) this.deliver(this.backlog.shift()!);
    if (this.pair.delivering) this.scheduleDrain();
  }

  private deliver(bytes: Uint8Array): void {
    const to = this.peer;
    if (to.closed && to.onData === null) return;
    this.pair.delivering = true;
    try {
      to.onData?.(bytes);
    } catch (e) {
      // A bug on the receiving side: the connection ends there, as a socket would, for both.
      const why = `receiver failed: ${(e as Error).message}`;
      queueMicrotask(() => {
        to.closedBy(why);
        this.closedBy("closed by peer");
      });
    } finally {
      this.pair.delivering = false;
    }
  }

  private closedBy(reason: string): void {
    this.closed = true;
    this.backlog = [];
    const cb = this.onClose;
    this.onClose = null;
    this.onData = null;
    cb?.(reason);
  }
}

/** Two connected ends: what one sends, the other receives. `a` and `b` name each end's peer. */
export function connPair(a = "in-process", b = "in-process"): [Conn, Conn] {
  const pair: Pair = { delivering: false };
  const x = new PipeEnd(pair, a);
  const y = new PipeEnd(pair, b);
  x.peer = y;
  y.peer = x;
  return [x, y];
}
