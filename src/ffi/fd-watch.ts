/**
 * Readiness of arbitrary fds (an RDMA completion channel, the rdma_cm event channel) on Bun's event
 * loop, which has no public API to watch one: a Worker blocks in poll(2) on them
 * (fd-watch-worker.ts) and posts the ones that became readable; the callback runs on the main
 * thread. One-shot: after a report the fd is not watched until rearm(), so the callback reads
 * what it can (non-blocking) first. The data path does not wait for this thread while it is
 * busy: it polls its completion queue on every event-loop turn and arms the fd only when idle
 * (runtime/rdma-poller.ts).
 *
 * The worker holds the event loop only while at least one fd is watched (ref/unref), so a command
 * that is done can exit.
 */
import { dlopen, FFIType, ptr } from "bun:ffi";

/** Fds watched at most at once (two per RDMA connection at most: completion + rdma_cm). */
const MAX_FDS = 4096;

type Ready = () => void;

const lc = () =>
  dlopen("libc.so.6", {
    eventfd: { args: [FFIType.u32, FFIType.i32], returns: FFIType.i32 },
    write: { args: [FFIType.i32, FFIType.ptr, FFIType.u64], returns: FFIType.i64 },
  });

const EFD_NONBLOCK = 0o4000;
const EFD_CLOEXEC = 0o2000000;

export class FdWatch {
  private readonly worker: Worker;
  private readonly state: Int32Array;
  private readonly callbacks = new Map<number, { slot: number; ready: Ready }>();
  private readonly free: number[] = [];
  private readonly wake_fd: number;
  private readonly libc = lc();
  private readonly one = new BigUint64Array([1n]);
  private referenced = false;

  constructor() {
    this.wake_fd = this.libc.symbols.eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (this.wake_fd < 0) throw new Error("eventfd failed");
    this.state = new Int32Array(new SharedArrayBuffer(4 * (1 + 2 * MAX_FDS)));
    for (let i = 0; i < MAX_FDS; i++) {
      this.state[1 + 2 * i] = -1;
      this.free.push(MAX_FDS - 1 - i);
    }
    // Compiled (`bun build --compile src/cmd/main.ts src/ffi/fd-watch-worker.ts`: package.json),
    // the worker is an entry point of its own, stored under the entry points' common folder (src/)
    // in the executable's file system; from source, it is resolved against this file.
    this.worker = import.meta.url.includes("/$bunfs/")
      ? new Worker("/$bunfs/root/ffi/fd-watch-worker.js")
      : new Worker(new URL("./fd-watch-worker.ts", import.meta.url).href);
    this.worker.onerror = (e) => {
      // Without this thread no RDMA link ever wakes up again: stop loudly.
      throw new Error(`the fd watcher thread failed: ${e.message}`);
    };
    this.worker.onmessage = (e: MessageEvent<number[]>) => {
      for (const fd of e.data) this.callbacks.get(fd)?.ready();
    };
    this.worker.postMessage({ shared: this.state.buffer, wake_fd: this.wake_fd, max: MAX_FDS });
    this.worker.unref();
  }

  /** Calls `ready` (on this thread) once fd is readable; armed at once. */
  watch(fd: number, ready: Ready): void {
    if (this.callbacks.has(fd)) throw new Error(`fd ${fd} is watched already`);
    const slot = this.free.pop();
    if (slot === undefined) throw new Error(`more than ${MAX_FDS} fds watched`);
    this.callbacks.set(fd, { slot, ready });
    Atomics.store(this.state, 2 + 2 * slot, 1);
    Atomics.store(this.state, 1 + 2 * slot, fd);
    this.ref();
    this.wake();
  }

  /** Watches fd again after a report (its callback has read what was there). */
  rearm(fd: number): void {
    const c = this.callbacks.get(fd);
    if (c === undefined) return;
    if (Atomics.exchange(this.state, 2 + 2 * c.slot, 1) === 0) this.wake();
  }

  /** Stops watching fd (before it is closed). */
  unwatch(fd: number): void {
    const c = this.callbacks.get(fd);
    if (c === undefined) return;
    this.callbacks.delete(fd);
    Atomics.store(this.state, 2 + 2 * c.slot, 0);
    Atomics.store(this.state, 1 + 2 * c.slot, -1);
    this.free.push(c.slot);
    this.wake();
    if (this.callbacks.size === 0) this.unref();
  }

  private wake(): void {
    this.libc.symbols.write(this.wake_fd, ptr(this.one), 8);
  }

  private ref(): void {
    if (!this.referenced) {
      this.referenced = true;
      this.worker.ref();
    }
  }

  private unref(): void {
    if (this.referenced) {
      this.referenced = false;
      this.worker.unref();
    }
  }
}

let shared: FdWatch | null = null;

/** The process's watcher (its thread is started on first use). */
export function fdWatch(): FdWatch {
  shared ??= new FdWatch();
  return shared;
}
