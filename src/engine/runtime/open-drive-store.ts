/**
 * Opens a drive file or block device with the best I/O path the kernel allows: io_uring
 * (UringStore) when a ring can be set up, else the thread pool (FileStore), logged once and
 * named in the store's io_path (which `target show` lists).
 */
import type { Logger } from "../env.ts";
import type { DriveStore } from "../drive/store.ts";
import type { DriveFileOptions } from "./drive-file.ts";
import { FileStore } from "./file-store.ts";
import { UringStore, UringUnavailableError } from "./uring-store.ts";

/**
 * "auto": io_uring with buffered I/O, else the thread pool. "io_uring", "io_uring-direct"
 * (O_DIRECT): that or an error. "io_uring-ring-writes": buffered, every write a ring op (no
 * inline page-cache writes; measured against the default in docs/on-drive-format.md).
 * "threadpool": Bun's async fs.
 */
export const DRIVE_IO_MODES = ["auto", "io_uring", "io_uring-direct", "io_uring-ring-writes", "threadpool"] as const;
export type DriveIo = (typeof DRIVE_IO_MODES)[number];

export interface OpenDriveStoreOptions extends DriveFileOptions {
  io?: DriveIo;
  log?: Logger;
  /** The ring's size (UringStore's entries). */
  entries?: number;
}

export async function openDriveStore(path: string, opts: OpenDriveStoreOptions = {}): Promise<DriveStore> {
  const io = opts.io ?? "auto";
  if (io === "threadpool") return await FileStore.open(path, opts);
  try {
    return await UringStore.open(path, { ...opts, direct: io === "io_uring-direct", inline_writes: io !== "io_uring-ring-writes" });
  } catch (e) {
    if (!(e instanceof UringUnavailableError) || io !== "auto") throw e;
    opts.log?.warn("io_uring unavailable, drive I/O goes through the thread pool", { drive: path, reason: e.message });
    return await FileStore.open(path, { ...opts, fallback_reason: e.message });
  }
}
