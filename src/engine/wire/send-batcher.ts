/**
 * Coalesces the frames queued on one connection during a tick into as few conn.send() calls as
 * possible: each send is a syscall on the real runtime, and a pipelined requester issues dozens of
 * small frames per tick. Small parts are copied into one buffer; large parts (data payloads) are
 * sent as they are, because copying megabytes costs more than the syscall saved.
 *
 * The flush runs on a microtask, not a timer: it adds no latency and stays deterministic under
 * the simulator.
 */
import type { Conn } from "../net/conn.ts";

/** Parts at least this big are sent without copying. */
const COPY_LIMIT_BYTES = 16 * 1024;

export class SendBatcher {
  private parts: Uint8Array[] = [];
  private scheduled = false;
  private readonly flushBound = () => this.flush();

  constructor(private readonly conn: Conn) {}

  /** Queues bytes; the caller must not modify them afterwards (Conn.send's contract). */
  push(bytes: Uint8Array): void {
    this.parts.push(bytes);
    if (!this.scheduled) {
      this.scheduled = true;
      queueMicrotask(this.flushBound);
    }
  }

  /** Sends everything queued now. Safe to call at any time (e.g. before close). */
  flush(): void {
    this.scheduled = false;
    const parts = this.parts;
    if (parts.length === 0) return;
    this.parts = [];
    let runStart = 0;
    let runBytes = 0;
    for (let i = 0; i <= parts.length; i++) {
      const p = i < parts.length ? parts[i]! : null;
      if (p !== null && p.length < COPY_LIMIT_BYTES) {
        runBytes += p.length;
        continue;
      }
      this.sendRun(parts, runStart, i, runBytes);
      if (p !== null) this.conn.send(p);
      runStart = i + 1;
      runBytes = 0;
    }
  }

  private sendRun(parts: Uint8Array[], from: number, to: number, bytes: number): void {
    if (to - from === 0) return;
    if (to - from === 1) {
      this.conn.send(parts[from]!);
      return;
    }
    const out = new Uint8Array(bytes);
    let at = 0;
    for (let i = from; i < to; i++) {
      out.set(parts[i]!, at);
      at += parts[i]!.length;
    }
    this.conn.send(out);
  }
}
