/**
 * The narrow io_uring facade: one ring per drive, set up with the kernel's ABI through libc's
 * `syscall` (io_uring_setup / io_uring_enter / io_uring_register) and `mmap`, with the SQEs
 * written straight into the mapped ring. No liburing: the parts of it we would need
 * (io_uring_get_sqe, io_uring_prep_*, io_uring_cq_advance) are inline functions in its header,
 * which bun:ffi cannot call, and what it exports as functions is a thin wrapper over the three
 * syscalls. Pointers never leave this file: callers pass Uint8Arrays and get slot numbers and
 * kernel results (bytes or -errno).
 *
 * Memory ordering (the kernel's contract in io_uring(7)): the SQE is written before the SQ tail
 * that publishes it, and a CQE is read after the CQ tail that published it and before the CQ head
 * that gives it back. Tails and heads go through Atomics (sequentially consistent, and a barrier
 * to the JIT), the SQE and CQE bodies through plain typed-array accesses between them.
 *
 * Buffers handed to an op are referenced by the ring until the op's completion has been reaped,
 * so the GC cannot free memory the kernel is still reading or writing, whatever the caller does.
 *
 * Loading is lazy and may fail (no libc.so.6, a kernel without io_uring, io_uring disabled by
 * sysctl or seccomp): `openRing()` then returns the reason and the caller takes its fallback.
 */
import { dlopen, FFIType, ptr, toArrayBuffer, type Pointer } from "bun:ffi";
import { errnoOf as errno, lazyLibrary } from "./dl.ts";

/** x86_64 and the generic table (aarch64, riscv64) agree on these. */
const SYS_io_uring_setup = 425;
const SYS_io_uring_enter = 426;
const SYS_io_uring_register = 427;

/** <linux/io_uring.h> opcodes we use. */
const OP_FSYNC = 3;
const OP_READ_FIXED = 4;
const OP_WRITE_FIXED = 5;
const OP_FALLOCATE = 17;
const OP_READ = 22;
const OP_WRITE = 23;

const IORING_FSYNC_DATASYNC = 1;

/** RWF_DSYNC on a write: the FUA of a ring write (durable before it completes). */
export const RWF_DSYNC = 0x02;

const IORING_ENTER_GETEVENTS = 1;
const IORING_FEAT_SINGLE_MMAP = 1 << 0;
const IORING_FEAT_NODROP = 1 << 1;
const IORING_SETUP_CLAMP = 1 << 4;

const IORING_REGISTER_BUFFERS = 0;
const IORING_REGISTER_EVENTFD = 4;

const IORING_OFF_SQ_RING = 0;
const IORING_OFF_CQ_RING = 0x8000000;
const IORING_OFF_SQES = 0x10000000;

const PROT_READ = 1;
const PROT_WRITE = 2;
const MAP_SHARED = 0x01;
const MAP_PRIVATE = 0x02;
const MAP_ANONYMOUS = 0x20;
const MAP_POPULATE = 0x8000;
const MAP_FAILED = 0xffff_ffff_ffff_ffffn;

const EFD_CLOEXEC = 0o2000000;
const EFD_NONBLOCK = 0o4000;

const EINTR = 4;
const EAGAIN = 11;
const EBUSY = 16;

const SQE_BYTES = 64;
const CQE_BYTES = 16;
const PARAMS_BYTES = 120;

const SYMBOLS = {
  syscall: {
    args: [FFIType.i64, FFIType.i64, FFIType.i64, FFIType.i64, FFIType.i64, FFIType.i64, FFIType.i64],
    returns: FFIType.i64_fast,
  },
  mmap: { args: [FFIType.ptr, FFIType.u64, FFIType.i32, FFIType.i32, FFIType.i32, FFIType.i64], returns: FFIType.u64 },
  munmap: { args: [FFIType.u64, FFIType.u64], returns: FFIType.i32 },
  close: { args: [FFIType.i32], returns: FFIType.i32 },
  eventfd: { args: [FFIType.u32, FFIType.i32], returns: FFIType.i32 },
  __errno_location: { args: [], returns: FFIType.ptr },
} as const;

type Lib = ReturnType<typeof dlopen<typeof SYMBOLS>>;
const load = lazyLibrary(() => dlopen("libc.so.6", SYMBOLS));

/** A syscall's result as the kernel gave it: >= 0, or -errno. */
function sys(l: Lib, nr: number, a = 0, b = 0, c = 0, d = 0, e = 0, f = 0): number {
  const r = Number(l.symbols.syscall(nr, a, b, c, d, e, f));
  return r >= 0 ? r : -errno(l);
}

/** Called for each completion: the slot the op was given and the kernel's result (>= 0 or -errno). */
export type CompletionHandler = (slot: number, res: number) => void;

/** A ring that could not be set up, and why (for the fallback's log line). */
export interface RingUnavailable {
  unavailable: string;
}

export interface RingOptions {
  /** SQ entries (a power of two; the kernel may clamp); at most this many ops in flight. */
  entries: number;
  /**
   * Native buffers registered with the ring (IORING_REGISTER_BUFFERS), each `fixed_bytes` long and
   * 4096-aligned: the `*Fixed` ops use them without the kernel pinning pages per op (what O_DIRECT
   * pays otherwise). 0: none.
   */
  fixed_count?: number;
  fixed_bytes?: number;
}

/**
 * An io_uring instance. Ops are prepared into slots (0..entries-1), submitted in one syscall by
 * submit(), and their completions delivered by reap(). Not thread-safe: one JavaScript thread.
 */
export class Ring {
  /** Ops prepared or in flight, by slot; what the kernel may still touch is referenced here. */
  private readonly held: (Uint8Array | null)[];
  private readonly freeSlots: number[];
  private prepared = 0;
  private closed = false;
  private readonly sqTail: number;
  private sqLocalTail: number;

  private constructor(
    private readonly l: Lib,
    readonly fd: number,
    readonly entries: number,
    private readonly sqRing: Uint32Array,
    private readonly sqHeadIdx: number,
    private readonly sqTailIdx: number,
    private readonly sqMask: number,
    private readonly sqes: Uint32Array,
    private readonly cqRing: Uint32Array,
    private readonly cqHeadIdx: number,
    private readonly cqTailIdx: number,
    private readonly cqMask: number,
    private readonly cqesIdx: number,
    private readonly cqes32: Int32Array,
    private readonly maps: [number, number][],
    /** Signalled by the kernel for every completion. */
    readonly eventfd: number,
    /** The registered buffers (views of native memory), index = buf_index. */
    readonly fixed: Uint8Array[],
  ) {
    this.held = new Array(entries).fill(null);
    this.freeSlots = Array.from({ length: entries }, (_, i) => entries - 1 - i);
    this.sqTail = Atomics.load(sqRing, sqTailIdx);
    this.sqLocalTail = this.sqTail;
  }

  /** Sets up a ring, or says why it cannot be. */
  static open(opts: RingOptions): Ring | RingUnavailable {
    const l = load();
    if (l === null) return { unavailable: "libc.so.6 could not be loaded" };
    const params = new Uint32Array(PARAMS_BYTES / 4);
    // CLAMP: accept a kernel maximum below ours. Not COOP_TASKRUN (nor DEFER_TASKRUN): with
    // them a completion that the device signals (O_DIRECT) is only posted when this thread next
    // enters the kernel on its own, so a thread asleep in epoll would never see it, nor be
    // woken by the eventfd (found by the O_DIRECT conformance tests, which hung).
    params[2] = IORING_SETUP_CLAMP;
    const fd = sys(l, SYS_io_uring_setup, opts.entries, Number(ptr(params)));
    if (fd < 0) return { unavailable: `io_uring_setup failed: errno ${-fd}${fd === -1 || fd === -38 ? " (io_uring disabled or not built in)" : ""}` };
    const maps: [number, number][] = [];
    const fail = (why: string): RingUnavailable => {
      for (const [addr, len] of maps) l.symbols.munmap(addr, len);
      l.symbols.close(fd);
      return { unavailable: why };
    };
    const sq_entries = params[0]!;
    const cq_entries = params[1]!;
    const features = params[5]!;
    if ((features & IORING_FEAT_SINGLE_MMAP) === 0 || (features & IORING_FEAT_NODROP) === 0) {
      return fail(`io_uring features 0x${features.toString(16)} lack SINGLE_MMAP/NODROP (kernel older than 5.5)`);
    }
    // struct io_sqring_offsets at byte 40, io_cqring_offsets at byte 80 (u32 words 10.., 20..).
    const sq = { head: params[10]!, tail: params[11]!, mask: params[12]!, entries: params[13]!, flags: params[14]!, dropped: params[15]!, array: params[16]! };
    const cq = { head: params[20]!, tail: params[21]!, mask: params[22]!, entries: params[23]!, overflow: params[24]!, cqes: params[25]! };
    const ringBytes = Math.max(sq.array + sq_entries * 4, cq.cqes + cq_entries * CQE_BYTES);
    const ringAddr = mmap(l, ringBytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_SQ_RING);
    if (ringAddr === null) return fail(`mmap of the io_uring rings failed: errno ${errno(l)}`);
    maps.push([ringAddr, ringBytes]);
    const sqesBytes = sq_entries * SQE_BYTES;
    const sqesAddr = mmap(l, sqesBytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_SQES);
    if (sqesAddr === null) return fail(`mmap of the io_uring SQEs failed: errno ${errno(l)}`);
    maps.push([sqesAddr, sqesBytes]);
    const ringMem = new Uint32Array(toArrayBuffer(ringAddr as Pointer, 0, ringBytes));
    const sqesMem = new Uint32Array(toArrayBuffer(sqesAddr as Pointer, 0, sqesBytes));
    // SQEs are used in ring order, so the index array is the identity, written once.
    for (let i = 0; i < sq_entries; i++) ringMem[sq.array / 4 + i] = i;
    const sqMask = ringMem[sq.mask / 4]!;
    const cqMask = ringMem[cq.mask / 4]!;
    const fixed: Uint8Array[] = [];
    const fixed_count = opts.fixed_count ?? 0;
    const fixed_bytes = opts.fixed_bytes ?? 0;
    if (fixed_count > 0) {
      if (fixed_bytes <= 0 || fixed_bytes % 4096 !== 0) return fail(`fixed buffers of ${fixed_bytes} bytes: must be a positive multiple of 4096`);
      const total = fixed_count * fixed_bytes;
      const base = mmap(l, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
      if (base === null) return fail(`mmap of ${total} bytes of fixed buffers failed: errno ${errno(l)}`);
      maps.push([base, total]);
      const iov = new Uint32Array(fixed_count * 4);
      for (let i = 0; i < fixed_count; i++) {
        const addr = base + i * fixed_bytes;
        iov[i * 4] = addr >>> 0;
        iov[i * 4 + 1] = Math.floor(addr / 0x1_0000_0000);
        iov[i * 4 + 2] = fixed_bytes;
        iov[i * 4 + 3] = 0;
        fixed.push(new Uint8Array(toArrayBuffer(addr as Pointer, 0, fixed_bytes)));
      }
      const r = sys(l, SYS_io_uring_register, fd, IORING_REGISTER_BUFFERS, Number(ptr(iov)), fixed_count);
      if (r < 0) return fail(`io_uring_register(BUFFERS) failed: errno ${-r}`);
    }
    const efd = l.symbols.eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (efd < 0) return fail(`eventfd failed: errno ${errno(l)}`);
    const efdBox = new Int32Array([efd]);
    // Signalled for every completion. Not EVENTFD_ASYNC, which would spare the inline ones: it
    // signals only completions posted by the kernel's io-wq workers, and an O_DIRECT completion
    // signalled by the device is posted from this thread's task work instead, so it would never
    // wake us (the O_DIRECT conformance tests hung).
    const r = sys(l, SYS_io_uring_register, fd, IORING_REGISTER_EVENTFD, Number(ptr(efdBox)), 1);
    if (r < 0) {
      l.symbols.close(efd);
      return fail(`io_uring_register(EVENTFD) failed: errno ${-r}`);
    }
    return new Ring(
      l,
      fd,
      sq_entries,
      ringMem,
      sq.head / 4,
      sq.tail / 4,
      sqMask,
      sqesMem,
      ringMem,
      cq.head / 4,
      cq.tail / 4,
      cqMask,
      cq.cqes / 4,
      new Int32Array(ringMem.buffer),
      maps,
      efd,
      fixed,
    );
  }

  /** Slots free for prepare*(). */
  get free(): number {
    return this.freeSlots.length;
  }

  /** Ops prepared or in flight whose completion has not been reaped. */
  get inflight(): number {
    return this.entries - this.freeSlots.length;
  }

  /** Reads dst.length bytes at offset of fd into dst. Returns the slot, or -1 when the ring is full. */
  prepareRead(fd: number, dst: Uint8Array, offset: number): number {
    return this.prepareRw(OP_READ, fd, dst, offset, 0, -1);
  }

  /** Writes src at offset of fd; rw_flags RWF_DSYNC makes it durable before it completes. */
  prepareWrite(fd: number, src: Uint8Array, offset: number, rw_flags: number): number {
    return this.prepareRw(OP_WRITE, fd, src, offset, rw_flags, -1);
  }

  /** READ_FIXED into the registered buffer `index` (dst: a view of it). */
  prepareReadFixed(fd: number, dst: Uint8Array, offset: number, index: number): number {
    return this.prepareRw(OP_READ_FIXED, fd, dst, offset, 0, index);
  }

  /** WRITE_FIXED from the registered buffer `index` (src: a view of it). */
  prepareWriteFixed(fd: number, src: Uint8Array, offset: number, rw_flags: number, index: number): number {
    return this.prepareRw(OP_WRITE_FIXED, fd, src, offset, rw_flags, index);
  }

  /** fdatasync(2) as a ring op. */
  prepareFdatasync(fd: number): number {
    const slot = this.slot(null);
    if (slot < 0) return slot;
    const s = this.sqe(slot, OP_FSYNC, fd);
    this.sqes[s + 7] = IORING_FSYNC_DATASYNC;
    this.publish();
    return slot;
  }

  /** fallocate(2) as a ring op (punch-hole, zero-range: `mode` from <linux/falloc.h>). */
  prepareFallocate(fd: number, mode: number, offset: number, length: number): number {
    const slot = this.slot(null);
    if (slot < 0) return slot;
    const s = this.sqe(slot, OP_FALLOCATE, fd);
    const q = this.sqes;
    q[s + 2] = offset >>> 0;
    q[s + 3] = Math.floor(offset / 0x1_0000_0000);
    q[s + 4] = length >>> 0; // addr = length
    q[s + 5] = Math.floor(length / 0x1_0000_0000);
    q[s + 6] = mode; // len = mode
    this.publish();
    return slot;
  }

  private prepareRw(op: number, fd: number, buf: Uint8Array, offset: number, rw_flags: number, index: number): number {
    const slot = this.slot(buf);
    if (slot < 0) return slot;
    const s = this.sqe(slot, op, fd);
    const q = this.sqes;
    const addr = buf.length === 0 ? 0 : ptr(buf);
    q[s + 2] = offset >>> 0;
    q[s + 3] = Math.floor(offset / 0x1_0000_0000);
    q[s + 4] = addr >>> 0;
    q[s + 5] = Math.floor(addr / 0x1_0000_0000);
    q[s + 6] = buf.length;
    q[s + 7] = rw_flags;
    if (index >= 0) q[s + 10] = index; // buf_index (u16) + personality (u16) = 0
    this.publish();
    return slot;
  }

  private slot(buf: Uint8Array | null): number {
    if (this.closed) throw new Error("io_uring ring is closed");
    const slot = this.freeSlots.pop();
    if (slot === undefined) return -1;
    this.held[slot] = buf;
    return slot;
  }

  /** Zeroes the next SQE, sets opcode, fd and user_data (the slot); returns its u32 index. */
  private sqe(slot: number, op: number, fd: number): number {
    const s = (this.sqLocalTail & this.sqMask) * (SQE_BYTES / 4);
    const q = this.sqes;
    q.fill(0, s, s + SQE_BYTES / 4);
    q[s] = op; // opcode, flags = 0, ioprio = 0
    q[s + 1] = fd;
    q[s + 8] = slot; // user_data low half
    return s;
  }

  /** Makes the SQE just written visible to the kernel's next io_uring_enter. */
  private publish(): void {
    this.sqLocalTail = (this.sqLocalTail + 1) >>> 0;
    Atomics.store(this.sqRing, this.sqTailIdx, this.sqLocalTail);
    this.prepared++;
  }

  /**
   * Submits every prepared op in one io_uring_enter. Ops the kernel can do without blocking (a
   * page-cache read, a buffered write where the file system allows) are done by the time it
   * returns and wait in the CQ for reap(); the others complete later and signal `eventfd`.
   * Returns the number submitted, or -errno (EAGAIN/EBUSY: try again after reaping).
   */
  submit(): number {
    if (this.prepared === 0) return 0;
    const r = sys(this.l, SYS_io_uring_enter, this.fd, this.prepared, 0, 0, 0, 0);
    if (r > 0) this.prepared -= r;
    return r;
  }

  /** True when a completion is waiting in the CQ (one load, no syscall). */
  get ready(): boolean {
    return Atomics.load(this.cqRing, this.cqTailIdx) !== this.cqRing[this.cqHeadIdx];
  }

  /**
   * Hands every completion in the CQ to `onDone` and frees their slots; returns how many. The
   * buffers of reaped ops are no longer referenced by the ring.
   */
  reap(onDone: CompletionHandler): number {
    const tail = Atomics.load(this.cqRing, this.cqTailIdx);
    let head = this.cqRing[this.cqHeadIdx]!;
    let n = 0;
    while (head !== tail) {
      const at = this.cqesIdx + (head & this.cqMask) * (CQE_BYTES / 4);
      const slot = this.cqRing[at]!; // user_data low half
      const res = this.cqes32[at + 2]!;
      head = (head + 1) >>> 0;
      this.held[slot] = null;
      this.freeSlots.push(slot);
      n++;
      // The CQE is ours until the head moves past it: give it back before the handler runs, so
      // a handler that submits more cannot find the CQ full.
      Atomics.store(this.cqRing, this.cqHeadIdx, head);
      onDone(slot, res);
    }
    return n;
  }

  /**
   * Blocks the thread until at least `min` completions are in the CQ (tests, benchmarks and
   * close(): never on an event loop that serves anything).
   */
  wait(min: number): number {
    for (;;) {
      const r = sys(this.l, SYS_io_uring_enter, this.fd, 0, min, IORING_ENTER_GETEVENTS, 0, 0);
      if (r !== -EINTR) return r;
    }
  }

  /** Unmaps the ring and closes its fds. Ops still in flight must have been waited for. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    const l = this.l;
    l.symbols.close(this.fd);
    if (this.eventfd >= 0) l.symbols.close(this.eventfd);
    for (const [addr, len] of this.maps) l.symbols.munmap(addr, len);
  }
}

function mmap(l: Lib, length: number, prot: number, flags: number, fd: number, offset: number): number | null {
  const r = l.symbols.mmap(null, length, prot, flags, fd, offset);
  if (r === MAP_FAILED || r === 0n) return null;
  return Number(r);
}

export { EAGAIN as RING_EAGAIN, EBUSY as RING_EBUSY };
