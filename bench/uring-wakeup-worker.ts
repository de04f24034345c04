/**
 * bench/uring-wakeup.ts's waker thread: blocks in io_uring_enter(GETEVENTS, min 1) on the main
 * thread's ring while the main thread says it waits (state[0] = 1), then wakes it by a message
 * or by Atomics.notify on state[1]. state[0] = 2 ends it.
 */
import { dlopen, FFIType } from "bun:ffi";

declare const self: Worker;

const SYS_io_uring_enter = 426;
const IORING_ENTER_GETEVENTS = 1;
const libc = dlopen("libc.so.6", {
  syscall: { args: [FFIType.i64, FFIType.i64, FFIType.i64, FFIType.i64, FFIType.i64, FFIType.i64, FFIType.i64], returns: FFIType.i64_fast },
});

self.onmessage = (e: MessageEvent<{ state: SharedArrayBuffer; ring_fd: number; atomics: boolean }>) => {
  const state = new Int32Array(e.data.state);
  for (;;) {
    Atomics.wait(state, 0, 0);
    if (Atomics.load(state, 0) === 2) return;
    libc.symbols.syscall(SYS_io_uring_enter, e.data.ring_fd, 0, 1, IORING_ENTER_GETEVENTS, 0, 0);
    if (Atomics.load(state, 0) === 2) return;
    Atomics.store(state, 0, 0);
    if (e.data.atomics) {
      Atomics.add(state, 1, 1);
      Atomics.notify(state, 1);
    } else self.postMessage(0);
  }
};
