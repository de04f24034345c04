/**
 * A DriveStore over a regular file or a block device whose I/O goes through an io_uring ring
 * (src/ffi/uring.ts): reads, writes (FUA as RWF_DSYNC), fdatasync, punch-hole and zero-range are
 * ring ops. The real runtime's drive wherever the kernel allows a ring (openDriveStore probes it);
 * FileStore is the fallback.
 *
 * Why, measured (bench/drive-io.ts, docs/on-drive-format.md "I/O path"): an op costs one
 * submission for a whole tick's worth of requests instead of a thread-pool hand-off each, and the
 * kernel completes what needs no waiting inside that submission; the rest completes in the
 * kernel's own workers or the device and wakes us through an eventfd.
 *
 * Buffered writes are the exception. No file system here (ext4, tmpfs) nor a block device takes a
 * buffered write from io_uring without handing it to an io-wq worker thread, so a ring write
 * costs a kernel thread's wakeup and ours afterwards, and ext4 serialises a file's buffered
 * writes in one worker, contending for the inode lock with any write made meanwhile on this
 * thread. A page-aligned buffered write only copies into the page cache, so it is done inline, by
 * pwrite on this thread, like the page-cache read below, up to INLINE_TICK_BYTES per microtask
 * checkpoint (a bound on how long a batch holds the event loop); the rest of a batch goes to the
 * ring. Measured end to end (bench/ab.ts, docs/performance.md): every write of a batch inline
 * against only the first, 4k random writes at QD32 went from 78 k to 110 k IOPS over TCP (the
 * target's CPU per write from 11.6 to 6.0 µs) and from 95 k to 115 k in-process; the io-wq
 * worker's "second core" did not pay on 2 cores. What could make an inline write block
 * (dirty-page throttling, a journal commit) is watched: one that took longer than INLINE_SLOW_MS
 * sends buffered writes through the ring for INLINE_PAUSE_MS, logged. Unaligned writes (which may
 * read the page first), FUA writes and very large writes always use the ring.
 *
 * Completions are reaped after every submission (what completed inline) and whenever the ring's
 * eventfd, which the kernel signals for every completion, becomes readable. Bun has no API to
 * watch an arbitrary fd, but its file streams poll non-regular fds on the event loop's epoll (no
 * thread, nothing spins while idle): `Bun.file(eventfd).stream()` is that watcher. The
 * alternatives, a Worker blocked in io_uring_enter that wakes the main thread, and polling the CQ
 * on every event-loop turn while ops are in flight, are measured by bench/uring-wakeup.ts
 * (docs/performance.md).
 *
 * O_DIRECT (`direct`): requests whose offset and length are multiples of 4096 go to an O_DIRECT
 * descriptor, through one of the ring's registered native buffers (4096-aligned, allocated once)
 * when the caller's buffer is not aligned; the rest (a 2048-byte debug-format sector, a 3-byte
 * tail) go to a buffered descriptor of the same file. Linux keeps the two coherent (a direct
 * write writes back and invalidates the cached range first, a direct read writes back what is
 * dirty first), and fdatasync is per inode, so a flush covers both.
 *
 * Durability: FUA = a write with RWF_DSYNC; flush = fdatasync (IORING_OP_FSYNC with DATASYNC).
 */
import { alignedBuffer, EAGAIN, FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, isAligned } from "../../ffi/libc.ts";
import { Ring, RWF_DSYNC } from "../../ffi/uring.ts";
import fs from "node:fs";
import type { Logger } from "../env.ts";
import { checkRange, DriveIoError, type DriveStore, rangeRefused } from "../drive/store.ts";
import { bootEpoch, CachedReads, type DriveFile, type DriveFileOptions, openDriveFile, ZeroPaths } from "./drive-file.ts";

export interface UringStoreOptions extends DriveFileOptions {
  log?: Logger;
  /** O_DIRECT for aligned requests (see the file comment); default buffered. */
  direct?: boolean;
  /** Ops in flight at once (the ring's size, a power of two); more wait in order. */
  entries?: number;
  /**
   * Buffered mode: page-aligned, non-FUA writes are copied into the page cache by a pwrite on
   * this thread (default true; see the file comment). False: every write is a ring op.
   */
  inline_writes?: boolean;
}

/** io_uring cannot be used here; the message says why (for the fallback's log line). */
export class UringUnavailableError extends Error {}

/** O_DIRECT alignment of offsets, lengths and buffer addresses: every block device's maximum. */
const DIRECT_ALIGN = 4096;
/** Registered bounce buffers for O_DIRECT requests whose buffer is not aligned. */
const BOUNCE_COUNT = 32;
const BOUNCE_BYTES = 128 * 1024;
/** Largest zero buffer written at once when the range cannot be punched. */
const ZERO_CHUNK_BYTES = 1 << 20;
const DEFAULT_ENTRIES = 256;
const PAGE_BYTES = 4096;
/** Larger buffered writes go through the ring: copying megabytes would hold the event loop. */
const INLINE_MAX_BYTES = 1 << 20;
/**
 * Inline write bytes per microtask checkpoint before the rest of a batch goes to the ring: about
 * half a millisecond of copying on this VM, so one batch cannot hold the event loop for long.
 */
const INLINE_TICK_BYTES = 4 << 20;
/**
 * An inline write slower than this blocked on something other than the copy (dirty-page
 * throttling pauses for 10–200 ms). Not lower: on a loaded machine a thread descheduled in the
 * middle of a 3 µs pwrite for a few milliseconds would trip it (strace alone did).
 */
const INLINE_SLOW_MS = 10;
/** How long buffered writes then go through the ring before the inline path is tried again. */
const INLINE_PAUSE_MS = 5_000;
/**
 * The eventfd watch is a pending read, which keeps the process alive; it is dropped once the
 * store has been idle this long, so that a process whose work is done can exit, and started
 * again with the next op.
 */
const WATCH_LINGER_MS = 1000;

const enum Kind {
  READ,
  WRITE,
  FSYNC,
  FALLOCATE,
}

const KIND_NAMES = ["read", "write", "flush", "fallocate"];

/** One request to the ring, until it completed in full (short transfers are continued). */
class Op {
  /** Bytes of buf transferred so far. */
  done = 0;
  /** The registered bounce buffer in use (O_DIRECT, unaligned buffer), or -1. */
  bounce = -1;
  /** Bytes in flight in the current ring op. */
  chunk = 0;
  constructor(
    readonly kind: Kind,
    readonly fd: number,
    /** READ/WRITE: the caller's bytes. FALLOCATE: unused. */
    readonly buf: Uint8Array,
    readonly offset: number,
    /** WRITE: RWF_DSYNC for FUA. FALLOCATE: the mode. */
    readonly flags: number,
    /** FALLOCATE: the length. */
    readonly length: number,
    readonly resolve: (res: number) => void,
    readonly reject: (e: Error) => void,
  ) {}
}

const ERRNO_NAMES: Record<number, string> = {
  1: "EPERM", 4: "EINTR", 5: "EIO", 9: "EBADF", 11: "EAGAIN", 12: "ENOMEM", 22: "EINVAL", 27: "EFBIG",
  28: "ENOSPC", 30: "EROFS", 95: "EOPNOTSUPP", 125: "ECANCELED",
};

export class UringStore implements DriveStore {
  private closed = false;
  private readonly ops: (Op | null)[];
  /** Ops waiting for a ring slot or a bounce buffer, in order. */
  private backlog: Op[] = [];
  private backlogHead = 0;
  private pending = 0;
  private drained: (() => void) | null = null;
  private submitScheduled = false;
  /** Bytes written inline since our last microtask ran (inlineFits). */
  private inlineBytesThisTick = 0;
  private readonly freeBounce: number[] = [];
  private reader: { read(): Promise<{ done: boolean }>; cancel(): Promise<void> } | null = null;
  /** An op was started since the last idle check (the watch is kept while it is useful). */
  private busy = false;
  private readonly idleCheck: ReturnType<typeof setInterval>;
  private readonly zeroPaths: ZeroPaths;
  private trimSupported = true;
  private readonly cachedReads: CachedReads;
  private zeroChunk: Uint8Array | null = null;
  /** Until then (performance.now() ms), buffered writes go through the ring: one blocked. */
  private inlineResumeAt = 0;
  /** The kernel's boot: its page cache and the device's write cache die with it. */
  readonly cache_epoch = bootEpoch();
  readonly io_path: string;
  /** Bound once: no closure per completion or submission. */
  private readonly onCompletion = (slot: number, res: number) => this.completed(slot, res);
  private readonly submitBound = () => this.submit();

  private constructor(
    private readonly ring: Ring,
    /** Buffered descriptor: every request in buffered mode, unaligned ones in direct mode. */
    private readonly fd: number,
    /** O_DIRECT descriptor, or -1. */
    private readonly directFd: number,
    readonly size_bytes: number,
    readonly describe: string,
    private readonly log: Logger | undefined,
    /** Buffered mode with page-aligned writes done inline (see the file comment). */
    private readonly inlineWrites: boolean,
  ) {
    this.ops = new Array(ring.entries).fill(null);
    for (let i = ring.fixed.length - 1; i >= 0; i--) this.freeBounce.push(i);
    // O_DIRECT: nothing is cached, and the direct descriptor must not go through the cache.
    this.cachedReads = new CachedReads(fd, directFd < 0);
    this.inlineWrites = inlineWrites && directFd < 0;
    this.io_path = directFd >= 0 ? "io_uring, O_DIRECT" : this.inlineWrites ? "io_uring, buffered, inline writes" : "io_uring, buffered";
    this.zeroPaths = new ZeroPaths(describe, log);
    this.idleCheck = setInterval(() => this.dropIdleWatch(), WATCH_LINGER_MS);
    this.idleCheck.unref();
  }

  /**
   * Opens (or with create_size_bytes, creates) the file or block device at path. Throws
   * UringUnavailableError when no ring can be set up here (the caller falls back), DriveIoError
   * when the drive itself cannot be opened.
   */
  static async open(path: string, opts: UringStoreOptions = {}): Promise<UringStore> {
    const direct = opts.direct === true;
    const ring = Ring.open({
      entries: opts.entries ?? DEFAULT_ENTRIES,
      fixed_count: direct ? BOUNCE_COUNT : 0,
      fixed_bytes: direct ? BOUNCE_BYTES : 0,
    });
    if (!(ring instanceof Ring)) throw new UringUnavailableError(ring.unavailable);
    let f: DriveFile | null = null;
    let directFd = -1;
    try {
      f = await openDriveFile(path, opts);
      if (direct) {
        try {
          directFd = fs.openSync(path, fs.constants.O_RDWR | fs.constants.O_DIRECT);
        } catch (e) {
          throw new DriveIoError(`${path}: O_DIRECT refused: ${(e as Error).message}`, "EIO");
        }
      }
      return new UringStore(ring, f.fd, directFd, f.size_bytes, f.describe, opts.log, opts.inline_writes !== false);
    } catch (e) {
      ring.close();
      if (f !== null) fs.closeSync(f.fd);
      throw e;
    }
  }

  private check(offset: number, length: number): void {
    checkRange(this, this.closed, offset, length);
  }

  private refused(offset: number, length: number): Promise<never> | null {
    return rangeRefused(this, this.closed, offset, length);
  }

  read(offset: number, dst: Uint8Array): Promise<void> {
    const bad = this.refused(offset, dst.length);
    if (bad !== null) return bad;
    if (dst.length === 0) return Promise.resolve();
    // What the page cache holds is copied at once (≈1 µs, no ring op, no promise turn).
    const cached = this.cachedReads.read(offset, dst);
    if (cached === dst.length) return Promise.resolve();
    const rest = cached === 0 ? dst : dst.subarray(cached);
    return this.start(Kind.READ, this.fdFor(offset + cached, rest), rest, offset + cached, 0, 0) as Promise<unknown> as Promise<void>;
  }

  readNow(offset: number, dst: Uint8Array): boolean {
    this.check(offset, dst.length);
    return this.cachedReads.read(offset, dst) === dst.length;
  }

  write(offset: number, src: Uint8Array, fua: boolean): Promise<void> {
    const bad = this.refused(offset, src.length);
    if (bad !== null) return bad;
    if (src.length === 0) return fua ? this.flush() : Promise.resolve();
    if (!fua && this.inlineNow(offset, src.length)) {
      try {
        this.writeInline(offset, src);
      } catch (e) {
        return Promise.reject(e);
      }
      return Promise.resolve();
    }
    return this.start(Kind.WRITE, this.fdFor(offset, src), src, offset, fua ? RWF_DSYNC : 0, 0) as Promise<unknown> as Promise<void>;
  }

  writeNow(offset: number, src: Uint8Array): boolean {
    this.check(offset, src.length);
    if (src.length === 0 || !this.inlineNow(offset, src.length)) return false;
    this.writeInline(offset, src);
    return true;
  }

  /** Whether a buffered write of n bytes at offset is to be done inline now (file comment). */
  private inlineNow(offset: number, n: number): boolean {
    return (
      this.inlineWrites &&
      (offset | n) % PAGE_BYTES === 0 &&
      n <= INLINE_MAX_BYTES &&
      performance.now() >= this.inlineResumeAt &&
      this.inlineFits(n) // last: it counts the bytes as written inline
    );
  }

  /**
   * Whether a write of n bytes may be done inline: within INLINE_TICK_BYTES since the event loop
   * last ran our microtask (see the file comment), or the first write since then.
   */
  private inlineFits(n: number): boolean {
    const before = this.inlineBytesThisTick;
    if (before > 0 && before + n > INLINE_TICK_BYTES) return false;
    this.inlineBytesThisTick = before + n;
    if (!this.submitScheduled) {
      this.submitScheduled = true;
      queueMicrotask(this.submitBound);
    }
    return true;
  }

  /**
   * A page-aligned buffered write copied into the page cache here and now. One that took long
   * (dirty-page throttling, a journal commit) turns the inline path off for a while, so that the
   * event loop, and every connection of the target, waits at most once per period.
   */
  private writeInline(offset: number, src: Uint8Array): void {
    const t0 = performance.now();
    try {
      for (let done = 0; done < src.length; ) done += fs.writeSync(this.fd, src, done, src.length - done, offset + done);
    } catch (e) {
      throw new DriveIoError(`${this.describe}: write at ${offset}: ${(e as Error).message}`, "EIO");
    }
    const took_ms = performance.now() - t0;
    if (took_ms > INLINE_SLOW_MS) {
      this.inlineResumeAt = t0 + took_ms + INLINE_PAUSE_MS;
      this.log?.warn("a buffered write blocked the event loop: writes go through the ring for a while", {
        drive: this.describe,
        took_ms: Math.round(took_ms),
        pause_ms: INLINE_PAUSE_MS,
      });
    }
  }

  flush(): Promise<void> {
    if (this.closed) return Promise.reject(new DriveIoError(`${this.describe}: store closed`, "ECLOSED"));
    return this.start(Kind.FSYNC, this.directFd >= 0 ? this.directFd : this.fd, EMPTY, 0, 0, 0) as Promise<unknown> as Promise<void>;
  }

  async writeZeroes(offset: number, length: number, fua: boolean): Promise<void> {
    this.check(offset, length);
    if (length === 0) return;
    if (!(await this.zeroPaths.fallocated((mode) => this.fallocate(mode, offset, length)))) await this.writeZeroBuffers(offset, length);
    if (fua) await this.flush();
  }

  async trim(offset: number, length: number): Promise<void> {
    this.check(offset, length);
    // Contents after a trim are unspecified, so where nothing can be punched, doing nothing is a
    // correct trim.
    if (length === 0 || !this.trimSupported) return;
    const res = await this.fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length);
    if (res === 0) return;
    this.trimSupported = false;
    this.log?.debug("drive trim: punch hole unsupported, trim is a no-op", { drive: this.describe, errno: -res });
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.pending > 0) await new Promise<void>((res) => (this.drained = res));
    clearInterval(this.idleCheck);
    await this.unwatch();
    this.ring.close();
    fs.closeSync(this.fd);
    if (this.directFd >= 0) fs.closeSync(this.directFd);
  }

  // ---- the ring ---------------------------------------------------------------------------------

  /** The descriptor for a transfer: O_DIRECT when it is aligned (see the file comment). */
  private fdFor(offset: number, buf: Uint8Array): number {
    if (this.directFd < 0) return this.fd;
    return offset % DIRECT_ALIGN === 0 && buf.length % DIRECT_ALIGN === 0 ? this.directFd : this.fd;
  }

  /** A ring op that resolves with its result (>= 0); failures reject with DriveIoError. */
  private start(kind: Kind, fd: number, buf: Uint8Array, offset: number, flags: number, length: number): Promise<number> {
    return new Promise<number>((resolve, reject) => {
      const op = new Op(kind, fd, buf, offset, flags, length, resolve, reject);
      this.pending++;
      this.busy = true;
      if (this.reader === null) this.watch();
      if (this.backlogHead === this.backlog.length && this.issue(op)) return;
      this.backlog.push(op);
    });
  }

  /** Puts the op's next transfer into the ring; false when no slot (or bounce buffer) is free. */
  private issue(op: Op): boolean {
    const ring = this.ring;
    if (ring.free === 0) return false;
    let slot: number;
    switch (op.kind) {
      case Kind.READ:
      case Kind.WRITE: {
        const rest = op.done === 0 ? op.buf : op.buf.subarray(op.done);
        const at = op.offset + op.done;
        if (op.fd === this.directFd && !isAligned(rest, DIRECT_ALIGN)) {
          // Not aligned in memory: through a registered buffer, at most BOUNCE_BYTES at a time.
          const b = this.freeBounce.pop();
          if (b === undefined) return false;
          op.bounce = b;
          const n = Math.min(rest.length, BOUNCE_BYTES);
          const view = ring.fixed[b]!.subarray(0, n);
          op.chunk = n;
          if (op.kind === Kind.READ) slot = ring.prepareReadFixed(op.fd, view, at, b);
          else {
            view.set(n === rest.length ? rest : rest.subarray(0, n));
            slot = ring.prepareWriteFixed(op.fd, view, at, op.flags, b);
          }
        } else {
          op.chunk = rest.length;
          slot = op.kind === Kind.READ ? ring.prepareRead(op.fd, rest, at) : ring.prepareWrite(op.fd, rest, at, op.flags);
        }
        break;
      }
      case Kind.FSYNC:
        slot = ring.prepareFdatasync(op.fd);
        break;
      case Kind.FALLOCATE:
        slot = ring.prepareFallocate(op.fd, op.flags, op.offset, op.length);
        break;
    }
    this.ops[slot] = op;
    if (!this.submitScheduled) {
      this.submitScheduled = true;
      queueMicrotask(this.submitBound);
    }
    return true;
  }

  /** Submits what this tick prepared, in one syscall; reaps what completed inline. */
  private submit(): void {
    this.submitScheduled = false;
    this.inlineBytesThisTick = 0;
    const r = this.ring.submit();
    if (r < 0 && r !== -EAGAIN && r !== -16 /* EBUSY */) {
      // The ring itself failed (not an op): nothing prepared can be trusted to run.
      this.log?.error("io_uring submit failed", { drive: this.describe, errno: -r });
    }
    this.reap();
    if (r < 0) {
      // EAGAIN/EBUSY: the kernel is short of resources; try again once something completed.
      setTimeout(() => this.submit(), 1);
    }
  }

  private reap(): void {
    if (this.ring.ready) this.ring.reap(this.onCompletion);
    this.issueBacklog();
  }

  private issueBacklog(): void {
    while (this.backlogHead < this.backlog.length) {
      if (!this.issue(this.backlog[this.backlogHead]!)) break;
      this.backlog[this.backlogHead++] = undefined as unknown as Op;
    }
    if (this.backlogHead === this.backlog.length) {
      this.backlog.length = 0;
      this.backlogHead = 0;
    }
  }

  private completed(slot: number, res: number): void {
    const op = this.ops[slot]!;
    this.ops[slot] = null;
    if (op.bounce >= 0) {
      if (op.kind === Kind.READ && res > 0) op.buf.set(this.ring.fixed[op.bounce]!.subarray(0, res), op.done);
      this.freeBounce.push(op.bounce);
      op.bounce = -1;
    }
    if (res === -EAGAIN || res === -4 /* EINTR */) return this.again(op);
    if (res < 0) return this.finish(op, new DriveIoError(`${this.describe}: ${KIND_NAMES[op.kind]} at ${op.offset}: ${ERRNO_NAMES[-res] ?? `errno ${-res}`}`, "EIO"), res);
    if (op.kind === Kind.READ || op.kind === Kind.WRITE) {
      // A read of 0 inside our bounds means the file shrank under us.
      if (res === 0) return this.finish(op, new DriveIoError(`${this.describe}: unexpected end of file at ${op.offset + op.done}`, "EIO"), res);
      op.done += res;
      if (op.done < op.buf.length) return this.again(op);
    }
    this.finish(op, null, res);
  }

  private again(op: Op): void {
    if (this.backlogHead === this.backlog.length && this.issue(op)) return;
    this.backlog.push(op);
  }

  private finish(op: Op, err: Error | null, res: number): void {
    if (err === null) op.resolve(res);
    else if (op.kind === Kind.FALLOCATE) op.resolve(res); // the caller decides what a refusal means
    else op.reject(err);
    if (--this.pending === 0 && this.drained !== null) this.drained();
  }

  private dropIdleWatch(): void {
    if (!this.busy && this.pending === 0) void this.unwatch();
    this.busy = false;
  }

  private async unwatch(): Promise<void> {
    const reader = this.reader;
    this.reader = null;
    await reader?.cancel().catch(() => undefined);
  }

  /** Starts watching the ring's eventfd on the event loop (see the file comment). */
  private watch(): void {
    const reader = Bun.file(this.ring.eventfd).stream().getReader();
    this.reader = reader;
    const loop = async () => {
      for (;;) {
        const { done } = await reader.read();
        if (done || this.reader !== reader) return;
        this.reap();
      }
    };
    loop().catch((e: unknown) => {
      if (this.reader !== reader) return; // cancelled by close()
      // Without a wakeup, ops the kernel completes later would never be seen: fail loudly.
      this.log?.error("io_uring completion watch failed", { drive: this.describe, error: String(e) });
      throw e;
    });
  }

  // ---- zeroes ---------------------------------------------------------------------------------

  /** The kernel's result of a fallocate ring op: 0 or -errno (never rejects for a refusal). */
  private fallocate(mode: number, offset: number, length: number): Promise<number> {
    return this.start(Kind.FALLOCATE, this.directFd >= 0 ? this.directFd : this.fd, EMPTY, offset, mode, length);
  }

  private async writeZeroBuffers(offset: number, length: number): Promise<void> {
    // Aligned, so that aligned ranges go the O_DIRECT way without a bounce.
    this.zeroChunk ??= alignedBuffer(ZERO_CHUNK_BYTES, DIRECT_ALIGN);
    for (let done = 0; done < length; ) {
      const n = Math.min(ZERO_CHUNK_BYTES, length - done);
      const src = this.zeroChunk.subarray(0, n);
      await this.start(Kind.WRITE, this.fdFor(offset + done, src), src, offset + done, 0, 0);
      done += n;
    }
  }
}

const EMPTY = new Uint8Array(0);
