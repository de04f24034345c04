/**
 * The thread of ffi/fd-watch.ts: blocks in poll(2) on the fds the main thread asked for and on an
 * eventfd the main thread writes to when that set changes, and posts the fds that became readable.
 * A reported fd is not watched again until the main thread re-arms it (one-shot), so a level-
 * triggered fd that the main thread has not read yet does not make this loop spin.
 *
 * Shared state (Int32Array over a SharedArrayBuffer, see fd-watch.ts): [0] stop flag, then per
 * entry i: fds[1 + 2i] = fd (-1: free), fds[2 + 2i] = 1 while armed.
 */
import { dlopen, FFIType, ptr } from "bun:ffi";

declare const self: Worker;

const l = dlopen("libc.so.6", {
  poll: { args: [FFIType.ptr, FFIType.u64, FFIType.i32], returns: FFIType.i32 },
  read: { args: [FFIType.i32, FFIType.ptr, FFIType.u64], returns: FFIType.i64 },
});
const POLLIN = 1;

self.onmessage = (e: MessageEvent<{ shared: SharedArrayBuffer; wake_fd: number; max: number }>) => {
  const state = new Int32Array(e.data.shared);
  const wake = e.data.wake_fd;
  const max = e.data.max;
  const pfd = new Int32Array(2 * (max + 1));
  const slots = new Int32Array(max + 1);
  const sink = new BigUint64Array(1);
  for (;;) {
    if (Atomics.load(state, 0) !== 0) break;
    pfd[0] = wake;
    pfd[1] = POLLIN;
    let n = 1;
    for (let i = 0; i < max; i++) {
      const fd = Atomics.load(state, 1 + 2 * i);
      if (fd < 0 || Atomics.load(state, 2 + 2 * i) !== 1) continue;
      pfd[2 * n] = fd;
      pfd[2 * n + 1] = POLLIN;
      slots[n] = i;
      n++;
    }
    const r = l.symbols.poll(ptr(pfd), n, -1);
    if (r < 0) continue; // EINTR
    if ((pfd[1]! >>> 16) !== 0) l.symbols.read(wake, ptr(sink), 8);
    const ready: number[] = [];
    for (let k = 1; k < n; k++) {
      if ((pfd[2 * k + 1]! >>> 16) === 0) continue;
      const i = slots[k]!;
      // Disarmed before the main thread hears of it: it re-arms once it has read the fd.
      if (Atomics.compareExchange(state, 2 + 2 * i, 1, 0) === 1) ready.push(pfd[2 * k]!);
    }
    if (ready.length > 0) postMessage(ready);
  }
};
