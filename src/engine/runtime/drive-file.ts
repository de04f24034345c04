/**
 * What every store over a file or block device does the same way: open (or create) it, tell a
 * regular file from a block device and size it, lock it against a second process, and name the
 * volatile cache its unflushed writes sit in. FileStore and UringStore share it.
 */
import fs from "node:fs";
import { crc32c } from "../crc32c.ts";
import {
  EAGAIN,
  EOPNOTSUPP,
  EWOULDBLOCK,
  FALLOC_FL_KEEP_SIZE,
  FALLOC_FL_PUNCH_HOLE,
  FALLOC_FL_ZERO_RANGE,
  libc,
  LOCK_EX,
  LOCK_NB,
} from "../../ffi/libc.ts";
import type { Logger } from "../env.ts";
import { DriveIoError } from "../drive/store.ts";

export interface DriveFileOptions {
  /** Create a regular file of this size if the path does not exist (tests, file-backed drives). */
  create_size_bytes?: number;
  /** Skip flock (only for tests that open the same file twice on purpose). */
  no_lock?: boolean;
  /** How long a drive locked by another holder is waited for (default LOCK_WAIT_MS). */
  lock_wait_ms?: number;
}

/**
 * A process killed with io_uring ops in flight keeps its files (and their flock) open until the
 * kernel has finished or cancelled those ops, which it does after the process is gone: a target
 * restarted at once would otherwise find its own drive "in use" (the conformance suite's crash
 * case did).
 */
const LOCK_WAIT_MS = 2000;
const LOCK_RETRY_MS = 20;

export interface DriveFile {
  fd: number;
  size_bytes: number;
  kind: "file" | "block device";
  /** "file /srv/d1.img", "block device /dev/nvme0n1". */
  describe: string;
}

/** Opens path read-write (plus `extra_flags`, e.g. O_DIRECT), sized and locked; closes it on failure. */
export async function openDriveFile(path: string, opts: DriveFileOptions = {}, extra_flags = 0): Promise<DriveFile> {
  let fd: number;
  try {
    if (opts.create_size_bytes !== undefined && !fs.existsSync(path)) {
      fd = fs.openSync(path, fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_EXCL | extra_flags, 0o600);
      fs.ftruncateSync(fd, opts.create_size_bytes);
    } else {
      fd = fs.openSync(path, fs.constants.O_RDWR | extra_flags);
    }
  } catch (e) {
    throw new DriveIoError(`cannot open ${path}: ${(e as Error).message}`, "EIO");
  }
  try {
    const st = fs.fstatSync(fd);
    let size_bytes: number;
    let kind: DriveFile["kind"];
    if (st.isBlockDevice()) {
      const c = libc();
      if (c === null) throw new DriveIoError(`${path}: block device size needs libc`, "EIO");
      size_bytes = c.sizeBySeek(fd);
      kind = "block device";
    } else if (st.isFile()) {
      size_bytes = st.size;
      kind = "file";
    } else {
      throw new DriveIoError(`${path} is neither a regular file nor a block device`, "EIO");
    }
    if (!opts.no_lock) await lockExclusive(fd, path, opts.lock_wait_ms ?? LOCK_WAIT_MS);
    return { fd, size_bytes, kind, describe: `${kind} ${path}` };
  } catch (e) {
    fs.closeSync(fd);
    throw e instanceof DriveIoError ? e : new DriveIoError(`${path}: ${(e as Error).message}`, "EIO");
  }
}

/** flock(LOCK_EX|LOCK_NB): two processes of this host never serve the same drive. */
async function lockExclusive(fd: number, path: string, wait_ms: number): Promise<void> {
  const c = libc();
  if (c === null) return;
  for (let waited = 0; ; waited += LOCK_RETRY_MS) {
    const err = c.flock(fd, LOCK_EX | LOCK_NB);
    if (err === 0) return;
    if (err !== EWOULDBLOCK) throw new DriveIoError(`${path}: flock failed with errno ${err}`, "EIO");
    if (waited >= wait_ms) throw new DriveIoError(`${path} is in use by another process, which holds its lock (a target serving it?): stop that process first`, "EIO");
    await Bun.sleep(LOCK_RETRY_MS);
  }
}

let boot: number | null = null;

/**
 * A number for this boot of the kernel (from /proc/sys/kernel/random/boot_id), never 0. A target
 * process that restarts keeps it, as the page cache keeps its dirty pages (and a drive its write
 * cache); a power loss changes it. Where the boot id cannot be read, a random number per process:
 * a restart then looks like a possible loss, which is safe (the next flush reports EIO) but
 * pessimistic.
 */
export function bootEpoch(): number {
  if (boot === null) {
    try {
      boot = crc32c(new TextEncoder().encode(fs.readFileSync("/proc/sys/kernel/random/boot_id", "utf8").trim())) || 1;
    } catch {
      boot = (crypto.getRandomValues(new Uint32Array(1))[0]! | 1) >>> 0;
    }
  }
  return boot;
}

/** How writeZeroes reaches the backend; chosen on first use, logged once. */
type ZeroPath = "punch" | "zero-range" | "write";

const ZERO_MODES = {
  punch: FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
  "zero-range": FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE,
} as const;

/**
 * The way a store zeroes ranges: fallocate(PUNCH_HOLE|KEEP_SIZE), else ZERO_RANGE, else writing
 * zero buffers. EOPNOTSUPP rules a path out for good (the fs or device cannot); any other error
 * (EINVAL for a block device range not aligned to its sector) falls back to writing for that call
 * only. The chosen path is logged once, at debug.
 */
export class ZeroPaths {
  private chosen: ZeroPath | null = null;

  constructor(
    private readonly describe: string,
    private readonly log: Logger | undefined,
  ) {}

  /**
   * Zeroes the range by `fallocate(mode)` (which gives 0 or -errno) where a mode works; false when
   * the caller must write zeroes.
   */
  async fallocated(fallocate: (mode: number) => number | Promise<number>): Promise<boolean> {
    const order: ZeroPath[] = this.chosen === null ? ["punch", "zero-range", "write"] : [this.chosen];
    for (const path of order) {
      if (path === "write") break;
      const res = await fallocate(ZERO_MODES[path]);
      if (res === 0) {
        this.choose(path);
        return true;
      }
      if (res !== -EOPNOTSUPP) {
        this.log?.debug("drive writeZeroes: fallocate failed, writing zeroes", { drive: this.describe, path, errno: -res });
        return false;
      }
      this.chosen = null;
    }
    this.choose("write");
    return false;
  }

  private choose(path: ZeroPath): void {
    if (this.chosen === path) return;
    this.chosen = path;
    this.log?.debug("drive writeZeroes path", { drive: this.describe, path });
  }
}

/**
 * Reads of what the page cache holds, without waiting (preadv2 RWF_NOWAIT): the fast path of both
 * stores. Turned off for good at the first answer that is not data, end of file or EAGAIN (a
 * kernel or file system that cannot).
 */
export class CachedReads {
  private on: boolean;

  constructor(
    private readonly fd: number,
    enabled: boolean,
  ) {
    this.on = enabled && libc() !== null;
  }

  /** Bytes copied into dst's start from [offset, offset + dst.length) (0 when off). */
  read(offset: number, dst: Uint8Array): number {
    if (!this.on) return 0;
    const c = libc()!;
    let cached = 0;
    while (cached < dst.length) {
      const n = c.readCached(this.fd, cached === 0 ? dst : dst.subarray(cached), offset + cached);
      if (n <= 0) {
        if (n !== -EAGAIN && n !== 0) this.on = false;
        break;
      }
      cached += n;
    }
    return cached;
  }
}
