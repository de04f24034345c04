/**
 * A DriveStore over a regular file or a block device: the real runtime's drive.
 *
 * I/O path (measured by bench/drive-io.ts, reasoning in docs/on-drive-format.md "I/O path"):
 * buffered I/O through Bun's async fs threadpool. Sync calls are 10x faster on a page-cache hit,
 * but a miss blocks the event loop, and with it every connection of the target, for a full device
 * round trip, and they serialise a queue depth of 32 into 1. O_DIRECT needs aligned bounce
 * buffers and gave no gain worth them.
 *
 * Durability: FUA = write then fdatasync; flush = fdatasync. The fd is locked with flock(LOCK_EX)
 * so two processes of this host never serve the same drive.
 */
import fs from "node:fs";
import { EOPNOTSUPP, FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, libc } from "../../ffi/libc.ts";
import type { Logger } from "../env.ts";
import { checkRange, DriveIoError, type DriveStore } from "../drive/store.ts";
import { bootEpoch, type DriveFileOptions, openDriveFile, CachedReads, ZeroPaths } from "./drive-file.ts";

/** Largest zero buffer written at once when the range cannot be punched. */
const ZERO_CHUNK_BYTES = 1 << 20;
let zeroChunk: Uint8Array | null = null;

export interface FileStoreOptions extends DriveFileOptions {
  log?: Logger;
  /** Why this store and not the io_uring one (shown in io_path, e.g. by `target show`). */
  fallback_reason?: string;
}

export class FileStore implements DriveStore {
  private closed = false;
  /** Ops handed to the threadpool and not yet back: close() waits for them, so the fd number is
   * never reused by another open while a read or write of ours could still land on it. */
  private inflight = 0;
  private drained: (() => void) | null = null;
  private readonly cachedReads: CachedReads;
  private trimSupported = true;
  /** The kernel's boot: its page cache (our volatile cache) dies with it, and only with it. */
  readonly cache_epoch = bootEpoch();
  readonly io_path: string;
  private readonly zeroPaths: ZeroPaths;

  private constructor(
    private readonly fd: number,
    readonly size_bytes: number,
    readonly describe: string,
    private readonly log: Logger | undefined,
    fallback_reason: string | undefined,
  ) {
    this.io_path = fallback_reason === undefined ? "thread pool" : `thread pool (io_uring: ${fallback_reason})`;
    this.zeroPaths = new ZeroPaths(describe, log);
    this.cachedReads = new CachedReads(fd, true);
  }

  /** Opens (or with create_size_bytes, creates) the file or block device at path. */
  static async open(path: string, opts: FileStoreOptions = {}): Promise<FileStore> {
    const f = await openDriveFile(path, opts);
    return new FileStore(f.fd, f.size_bytes, f.describe, opts.log, opts.fallback_reason);
  }

  private check(offset: number, length: number): void {
    checkRange(this, this.closed, offset, length);
  }

  private async tracked<T>(op: string, offset: number, fn: () => Promise<T>): Promise<T> {
    this.inflight++;
    try {
      return await fn();
    } catch (e) {
      throw this.ioError(op, offset, e);
    } finally {
      if (--this.inflight === 0 && this.drained) this.drained();
    }
  }

  private ioError(op: string, offset: number, e: unknown): DriveIoError {
    if (e instanceof DriveIoError) return e;
    return new DriveIoError(`${this.describe}: ${op} at ${offset}: ${(e as Error).message}`, "EIO");
  }

  async read(offset: number, dst: Uint8Array): Promise<void> {
    this.check(offset, dst.length);
    // Fast path: what is already in the page cache is copied at once, without a trip through the
    // threadpool (≈1 µs instead of ≈8 µs per 4 KiB); anything else goes async, so the event loop
    // never waits for the device.
    const cached = this.cachedReads.read(offset, dst);
    if (cached === dst.length) return;
    await this.tracked("read", offset, async () => {
      for (let done = cached; done < dst.length; ) {
        const n = await preadAsync(this.fd, dst.subarray(done), offset + done);
        // A read of 0 inside our bounds means the file shrank under us.
        if (n === 0) throw new DriveIoError(`${this.describe}: unexpected end of file at ${offset + done}`, "EIO");
        done += n;
      }
    });
  }

  readNow(offset: number, dst: Uint8Array): boolean {
    this.check(offset, dst.length);
    return this.cachedReads.read(offset, dst) === dst.length;
  }

  async write(offset: number, src: Uint8Array, fua: boolean): Promise<void> {
    this.check(offset, src.length);
    await this.tracked("write", offset, async () => {
      for (let done = 0; done < src.length; ) done += await pwriteAsync(this.fd, src.subarray(done), offset + done);
      if (fua) await fdatasyncAsync(this.fd);
    });
  }

  async flush(): Promise<void> {
    if (this.closed) throw new DriveIoError(`${this.describe}: store closed`, "ECLOSED");
    await this.tracked("flush", 0, () => fdatasyncAsync(this.fd));
  }

  async writeZeroes(offset: number, length: number, fua: boolean): Promise<void> {
    this.check(offset, length);
    if (length === 0) return;
    await this.tracked("writeZeroes", offset, async () => {
      const c = libc();
      // libc answers errno (positive): ZeroPaths takes 0 or -errno; without libc, nothing punches.
      const zeroed = await this.zeroPaths.fallocated((mode) => (c === null ? -EOPNOTSUPP : -c.fallocate(this.fd, mode, offset, length)));
      if (!zeroed) await this.writeZeroBuffers(offset, length);
      if (fua) await fdatasyncAsync(this.fd);
    });
  }

  async trim(offset: number, length: number): Promise<void> {
    this.check(offset, length);
    // Contents after a trim are unspecified, so where nothing can be punched, doing nothing is
    // a correct trim.
    if (length === 0 || !this.trimSupported) return;
    const c = libc();
    const err = c === null ? EOPNOTSUPP : c.fallocate(this.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length);
    if (err === 0) return;
    this.trimSupported = false;
    this.log?.debug("drive trim: punch hole unsupported, trim is a no-op", { drive: this.describe, errno: err });
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.inflight > 0) await new Promise<void>((res) => (this.drained = res));
    fs.closeSync(this.fd);
  }

  private async writeZeroBuffers(offset: number, length: number): Promise<void> {
    zeroChunk ??= new Uint8Array(ZERO_CHUNK_BYTES);
    for (let done = 0; done < length; ) {
      const n = Math.min(ZERO_CHUNK_BYTES, length - done);
      done += await pwriteAsync(this.fd, zeroChunk.subarray(0, n), offset + done);
    }
  }
}

function preadAsync(fd: number, dst: Uint8Array, position: number): Promise<number> {
  return new Promise((res, rej) => fs.read(fd, dst, 0, dst.length, position, (e, n) => (e ? rej(e) : res(n))));
}

function pwriteAsync(fd: number, src: Uint8Array, position: number): Promise<number> {
  return new Promise((res, rej) => fs.write(fd, src, 0, src.length, position, (e, n) => (e ? rej(e) : res(n))));
}

function fdatasyncAsync(fd: number): Promise<void> {
  return new Promise((res, rej) => fs.fdatasync(fd, (e) => (e ? rej(e) : res())));
}
