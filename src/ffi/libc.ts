/**
 * The narrow libc facade: the few syscalls node:fs does not expose (fallocate, lseek, flock,
 * posix_fadvise, fcntl's O_NONBLOCK) and 4096-aligned buffers for O_DIRECT. Pointers never leave this file; callers
 * get numbers, errno values and Uint8Array views.
 *
 * Loading is lazy and may fail (no libc.so.6, e.g. musl): `libc()` then returns null and callers
 * take their documented fallback path.
 */
import { dlopen, FFIType, ptr } from "bun:ffi";
import { errnoOf as errno, lazyLibrary } from "./dl.ts";

/** From <linux/falloc.h>. */
export const FALLOC_FL_KEEP_SIZE = 0x01;
export const FALLOC_FL_PUNCH_HOLE = 0x02;
export const FALLOC_FL_ZERO_RANGE = 0x10;
/** From <sys/file.h>. */
export const LOCK_EX = 2;
export const LOCK_NB = 4;
/** From <fcntl.h>. */
export const POSIX_FADV_DONTNEED = 4;
const SEEK_END = 2;
const F_GETFL = 3;
const F_SETFL = 4;
const O_NONBLOCK = 0o4000;

/** errno values we branch on (asm-generic/errno-base.h, errno.h on Linux). */
export const EAGAIN = 11;
export const EWOULDBLOCK = EAGAIN;
export const EINVAL = 22;
export const ENODEV = 19;
export const EOPNOTSUPP = 95;

const SYMBOLS = {
  fallocate: { args: [FFIType.i32, FFIType.i32, FFIType.i64, FFIType.i64], returns: FFIType.i32 },
  lseek: { args: [FFIType.i32, FFIType.i64, FFIType.i32], returns: FFIType.i64_fast },
  flock: { args: [FFIType.i32, FFIType.i32], returns: FFIType.i32 },
  posix_fadvise: { args: [FFIType.i32, FFIType.i64, FFIType.i64, FFIType.i32], returns: FFIType.i32 },
  preadv2: { args: [FFIType.i32, FFIType.ptr, FFIType.i32, FFIType.i64, FFIType.i32], returns: FFIType.i64_fast },
  fcntl: { args: [FFIType.i32, FFIType.i32, FFIType.i32], returns: FFIType.i32 },
  __errno_location: { args: [], returns: FFIType.ptr },
  syscall: { args: [FFIType.i64, FFIType.i64, FFIType.i64, FFIType.i64, FFIType.i64], returns: FFIType.i64_fast },
} as const;

/** cachestat(2), Linux 6.5 (the generic syscall table: x86_64 and aarch64 alike). */
const SYS_cachestat = 451;

/** From <linux/fs.h>: fail with EAGAIN instead of waiting for the device. */
const RWF_NOWAIT = 0x08;

type Lib = ReturnType<typeof dlopen<typeof SYMBOLS>>;
const load = lazyLibrary(() => dlopen("libc.so.6", SYMBOLS));

/** Result of a syscall: 0 on success, otherwise the positive errno. */
export type Errno = number;

export interface Libc {
  /** fallocate(2). Returns 0 or errno (EOPNOTSUPP where the fs/device cannot). */
  fallocate(fd: number, mode: number, offset: number, length: number): Errno;
  /** Size of a file or block device by seeking to its end; throws with errno on failure. */
  sizeBySeek(fd: number): number;
  /** flock(2). Returns 0 or errno (EWOULDBLOCK when LOCK_NB and someone else holds it). */
  flock(fd: number, op: number): Errno;
  /** posix_fadvise(2): returns the error number directly, as the call does. */
  fadvise(fd: number, offset: number, length: number, advice: number): Errno;
  /**
   * preadv2(2) with RWF_NOWAIT: reads only what is already in the page cache, without blocking.
   * Returns the bytes read (possibly fewer than asked, 0 at end of file) or -errno (-EAGAIN when
   * nothing is cached, -EOPNOTSUPP where the kernel or file system cannot).
   */
  readCached(fd: number, dst: Uint8Array, offset: number): number;
  /**
   * The page-cache state of a file's byte range (cachestat(2)): pages cached, dirty (written,
   * not yet written back) and under writeback. Null where the kernel has no cachestat (before
   * 6.5). A range with neither dirty nor writeback pages has reached the device.
   */
  cacheState(fd: number, offset: number, length: number): { cached: number; dirty: number; writeback: number } | null;
  /** Sets O_NONBLOCK on fd (e.g. an RDMA event channel's). Returns 0 or errno. */
  setNonBlocking(fd: number): Errno;
}

/**
 * One iovec {base, len}, reused: the call is synchronous, so nothing else can be using it. Filled
 * as 32-bit halves (little-endian, as every Linux target Bun runs on) so no BigInt is made per call.
 */
const iovec = new Uint32Array(new ArrayBuffer(16));

let facade: Libc | null | undefined;

/** The facade (built once), or null where libc cannot be loaded. */
export function libc(): Libc | null {
  if (facade !== undefined) return facade;
  const l = load();
  facade = l === null ? null : makeFacade(l);
  return facade;
}

function makeFacade(l: Lib): Libc {
  const preadv2 = l.symbols.preadv2;
  const iovecPtr = ptr(iovec);
  return {
    fallocate: (fd, mode, offset, length) =>
      l.symbols.fallocate(fd, mode, offset, length) === 0 ? 0 : errno(l),
    sizeBySeek(fd) {
      const r = Number(l.symbols.lseek(fd, 0, SEEK_END));
      if (r < 0) throw new Error(`lseek(SEEK_END) failed: errno ${errno(l)}`);
      return r;
    },
    flock: (fd, op) => (l.symbols.flock(fd, op) === 0 ? 0 : errno(l)),
    fadvise: (fd, offset, length, advice) => l.symbols.posix_fadvise(fd, offset, length, advice),
    readCached(fd, dst, offset) {
      if (dst.length === 0) return 0;
      const p = ptr(dst);
      iovec[0] = p >>> 0;
      iovec[1] = Math.floor(p / 0x1_0000_0000);
      iovec[2] = dst.length;
      iovec[3] = 0;
      const n = Number(preadv2(fd, iovecPtr, 1, offset, RWF_NOWAIT));
      return n >= 0 ? n : -errno(l);
    },
    cacheState(fd, offset, length) {
      const range = new Float64Array([0, 0]);
      const r32 = new Uint32Array(range.buffer);
      r32[0] = offset >>> 0;
      r32[1] = Math.floor(offset / 0x1_0000_0000);
      r32[2] = length >>> 0;
      r32[3] = Math.floor(length / 0x1_0000_0000);
      const out = new Uint32Array(10); // five u64 counters; page counts fit in the low halves here
      if (Number(l.symbols.syscall(SYS_cachestat, fd, ptr(r32), ptr(out), 0)) !== 0) return null;
      return { cached: out[0]! + out[1]! * 0x1_0000_0000, dirty: out[2]! + out[3]! * 0x1_0000_0000, writeback: out[4]! + out[5]! * 0x1_0000_0000 };
    },
    setNonBlocking(fd) {
      const flags = l.symbols.fcntl(fd, F_GETFL, 0);
      if (flags < 0) return errno(l);
      return l.symbols.fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0 ? errno(l) : 0;
    },
  };
}

/**
 * A view of `size` bytes whose address is a multiple of `align` (O_DIRECT needs it). Allocated once
 * and reused by the caller: JSC does not move ArrayBuffer storage, so the alignment holds for the
 * buffer's life.
 */
export function alignedBuffer(size: number, align = 4096): Uint8Array {
  const raw = new Uint8Array(size + align);
  const skew = ptr(raw) % align;
  return raw.subarray(skew === 0 ? 0 : align - skew, (skew === 0 ? 0 : align - skew) + size);
}

/** True when buf's first byte sits at a multiple of `align` (an empty view counts as aligned). */
export function isAligned(buf: Uint8Array, align = 4096): boolean {
  return buf.length === 0 || ptr(buf) % align === 0;
}
