/**
 * How should the event loop learn that an io_uring op completed, when the op does not complete
 * inside the submission (a buffered write on ext4 goes to the kernel's io-wq workers, an O_DIRECT
 * op to the device)? Bun has no API to watch an arbitrary fd. Measured here, on the same ring and
 * file, 4 KiB buffered random writes at QD1 (latency) and QD32 (throughput), with the CPU the
 * process used per write:
 *   - eventfd: an eventfd registered with the ring, read by `Bun.file(fd).stream()`, which Bun
 *     polls on its own epoll (what UringStore does);
 *   - worker-message: a Worker blocked in io_uring_enter(GETEVENTS), posting a message to the
 *     main thread when completions arrive;
 *   - worker-atomics: the same Worker, waking the main thread through Atomics.notify, which
 *     awaits Atomics.waitAsync;
 *   - poll: the main thread checks the CQ on every event-loop turn (setImmediate) while ops are
 *     in flight, and sleeps in nothing else;
 *   - thread pool: Bun's async fs.write, for reference (FileStore's path).
 * Submissions are batched per tick in every variant, as UringStore does.
 *
 *   bun bench/uring-wakeup.ts [--dir /path] [--size-mib 256] [--seconds 3]
 */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { Ring } from "../src/ffi/uring.ts";
import { flag, printTable } from "./common.ts";

const dir = flag("dir", os.tmpdir());
const size_bytes = Number(flag("size-mib", "256")) * 1024 * 1024;
const SECONDS = Number(flag("seconds", "3"));
const file = path.join(dir, `nvmesh-uring-wakeup-${process.pid}.img`);
const MODES = ["eventfd", "worker-message", "worker-atomics", "poll", "thread pool"] as const;
type Mode = (typeof MODES)[number];

let seed = 0x12345678;
function randomBlock(): number {
  seed ^= seed << 13;
  seed ^= seed >>> 17;
  seed ^= seed << 5;
  return ((seed >>> 0) % (size_bytes / 4096)) * 4096;
}

/** One variant: a write(buf, offset) that resolves on completion, and a teardown. */
interface Variant {
  write(buf: Uint8Array, offset: number): Promise<void>;
  close(): Promise<void>;
}

function ringVariant(mode: Exclude<Mode, "thread pool">, fd: number): Variant {
  const ring = Ring.open({ entries: 64 });
  if (!(ring instanceof Ring)) throw new Error(`no io_uring here: ${ring.unavailable}`);
  const waiting: ((res: number) => void)[] = new Array(ring.entries);
  const onDone = (slot: number, res: number) => {
    const w = waiting[slot]!;
    waiting[slot] = undefined as unknown as (res: number) => void;
    w(res);
  };
  let scheduled = false;
  let closed = false;
  let polling = false;
  const state = new Int32Array(new SharedArrayBuffer(8)); // [0]: armed (1) / stop (2); [1]: wake count
  let worker: Worker | null = null;
  let reader: { cancel(): Promise<void> } | null = null;
  const arm = () => {
    if (ring.inflight > 0 && Atomics.load(state, 0) === 0) {
      Atomics.store(state, 0, 1);
      Atomics.notify(state, 0);
    }
  };
  const poll = () => {
    ring.reap(onDone);
    if (ring.inflight > 0 && !closed) setImmediate(poll);
    else polling = false;
  };
  const submit = () => {
    scheduled = false;
    ring.submit();
    if (ring.ready) ring.reap(onDone);
    if (mode === "poll" && !polling && ring.inflight > 0) {
      polling = true;
      setImmediate(poll);
    }
    if (mode.startsWith("worker")) arm();
  };
  if (mode === "eventfd") {
    const r = Bun.file(ring.eventfd).stream().getReader();
    reader = r;
    void (async () => {
      for (;;) {
        const { done } = await r.read().catch(() => ({ done: true }));
        if (done || closed) return;
        ring.reap(onDone);
      }
    })();
  } else if (mode.startsWith("worker")) {
    worker = new Worker(new URL("./uring-wakeup-worker.ts", import.meta.url).href);
    worker.postMessage({ state: state.buffer, ring_fd: ring.fd, atomics: mode === "worker-atomics" });
    if (mode === "worker-message") {
      worker.onmessage = () => {
        ring.reap(onDone);
        arm();
      };
    } else {
      void (async () => {
        while (!closed) {
          const seen = Atomics.load(state, 1);
          ring.reap(onDone);
          arm();
          const w = Atomics.waitAsync(state, 1, seen);
          if (w.async) await w.value;
        }
      })();
    }
  }
  return {
    write: (buf, offset) =>
      new Promise<void>((resolve, reject) => {
        const slot = ring.prepareWrite(fd, buf, offset, 0);
        if (slot < 0) return reject(new Error("ring full"));
        waiting[slot] = (res) => (res === buf.length ? resolve() : reject(new Error(`write returned ${res}`)));
        if (!scheduled) {
          scheduled = true;
          queueMicrotask(submit);
        }
      }),
    close: async () => {
      closed = true;
      Atomics.store(state, 0, 2);
      Atomics.store(state, 1, Atomics.load(state, 1) + 1);
      Atomics.notify(state, 0);
      Atomics.notify(state, 1);
      await reader?.cancel().catch(() => undefined);
      worker?.terminate();
      ring.close();
    },
  };
}

function poolVariant(fd: number): Variant {
  return {
    write: (buf, offset) => new Promise((res, rej) => fs.write(fd, buf, 0, buf.length, offset, (e) => (e ? rej(e) : res()))),
    close: async () => {},
  };
}

async function measure(v: Variant, qd: number): Promise<{ iops: number; p50_us: number; cpu_us: number }> {
  const lat: number[] = [];
  let ops = 0;
  const deadline = performance.now() + SECONDS * 1000;
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: qd }, async () => {
      const buf = new Uint8Array(4096).fill(0x77);
      while (performance.now() < deadline) {
        const s = performance.now();
        await v.write(buf, randomBlock());
        ops++;
        if (qd === 1) lat.push((performance.now() - s) * 1000);
      }
    }),
  );
  const secs = (performance.now() - t0) / 1000;
  const cpu = process.cpuUsage(cpu0);
  lat.sort((a, b) => a - b);
  return { iops: ops / secs, p50_us: lat.length ? lat[lat.length >> 1]! : NaN, cpu_us: (cpu.user + cpu.system) / ops };
}

async function main(): Promise<void> {
  const fd0 = fs.openSync(file, "w");
  const chunk = new Uint8Array(1 << 20).fill(1);
  for (let off = 0; off < size_bytes; off += chunk.length) fs.writeSync(fd0, chunk, 0, chunk.length, off);
  fs.closeSync(fd0);
  const fd = fs.openSync(file, fs.constants.O_RDWR);
  const rows: Record<string, string>[] = [];
  try {
    for (const mode of MODES) {
      const v = mode === "thread pool" ? poolVariant(fd) : ringVariant(mode, fd);
      try {
        await measure(v, 1); // warm-up: io-wq workers, JIT
        const one = await measure(v, 1);
        const deep = await measure(v, 32);
        rows.push({
          wakeup: mode,
          "QD1 p50 us": one.p50_us.toFixed(1),
          "QD1 CPU us/write": one.cpu_us.toFixed(1),
          "QD32 IOPS": deep.iops.toFixed(0),
          "QD32 CPU us/write": deep.cpu_us.toFixed(1),
        });
        console.log(JSON.stringify(rows.at(-1)));
      } finally {
        await v.close();
      }
    }
  } finally {
    fs.closeSync(fd);
    fs.rmSync(file, { force: true });
  }
  printTable(rows);
}

await main();
