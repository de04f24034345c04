/**
 * A raw drive as the target sees it: bytes addressed from 0 to size_bytes. Implementations: a
 * memory store (tests, simulator), a file/block-device store (real runtime). Every implementation
 * passes tests/engine/drive-store-conformance.test.ts.
 *
 * Durability contract (the NBD promise rests on it): after `flush()` resolves, every write that
 * resolved before flush() was called is durable. A write with `fua` resolves only once durable.
 */
export interface DriveStore {
  readonly size_bytes: number;
  /** Human description of what backs it ("file /srv/d1.img", "memory"). */
  readonly describe: string;
  /**
   * Identifies the volatile cache holding this store's acknowledged, unflushed writes. It changes
   * whenever such writes may have been lost without the writer being told (the machine lost
   * power, the drive was pulled), and stays across a restart of the process alone (the kernel's
   * page cache outlives it). Absent: nothing can be lost that way (memory). See client/cache-watch.ts.
   */
  readonly cache_epoch?: number;
  /**
   * How I/O reaches the backend, for people ("io_uring, buffered", "thread pool (io_uring: why
   * not)"): listed per drive by the target. Absent: not a file or device (memory, a volume).
   */
  readonly io_path?: string;
  /** Reads exactly dst.length bytes at offset into dst. Rejects on I/O error. */
  read(offset: number, dst: Uint8Array): Promise<void>;
  /**
   * Reads the whole range now if that needs no waiting (a file whose page cache holds it) and
   * returns true; false, dst then unspecified, when only read() can. Absent: never possible. The
   * target answers such a READ without a promise, the commonest request of a busy volume.
   */
  readNow?(offset: number, dst: Uint8Array): boolean;
  write(offset: number, src: Uint8Array, fua: boolean): Promise<void>;
  /**
   * Writes the whole range now, without FUA, if that needs no waiting (a page-aligned write that
   * only copies into a file's page cache) and returns true, done as write() would have done it;
   * false, nothing written, when only write() can. Throws DriveIoError as write() rejects.
   * Absent: never possible. The target then answers such a WRITE without copying its payload
   * (src is read during the call only) and without a promise.
   */
  writeNow?(offset: number, src: Uint8Array): boolean;
  flush(): Promise<void>;
  /** Makes the range read as zeroes (punching holes where the backend can). */
  writeZeroes(offset: number, length: number, fua: boolean): Promise<void>;
  /** Discards the range: contents afterwards are unspecified but reads must still succeed. */
  trim(offset: number, length: number): Promise<void>;
  close(): Promise<void>;
}

export class DriveIoError extends Error {
  constructor(
    message: string,
    readonly code: "EIO" | "ERANGE" | "ECLOSED",
  ) {
    super(message);
  }
}

/** The checks every DriveStore makes before touching its backend: open, and a range inside it. */
export function checkRange(store: DriveStore, closed: boolean, offset: number, length: number): void {
  if (closed) throw new DriveIoError(`${store.describe}: closed`, "ECLOSED");
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) {
    throw new DriveIoError(`bad range ${offset}+${length}`, "ERANGE");
  }
  if (offset + length > store.size_bytes) {
    throw new DriveIoError(`range ${offset}+${length} beyond ${store.describe} size ${store.size_bytes}`, "ERANGE");
  }
}

/**
 * checkRange as a rejected promise (null when the range is fine), for the stores whose methods
 * return their backend's promise instead of being async: they never throw.
 */
export function rangeRefused(store: DriveStore, closed: boolean, offset: number, length: number): Promise<never> | null {
  try {
    checkRange(store, closed, offset, length);
    return null;
  } catch (e) {
    return Promise.reject(e);
  }
}
