/**
 * A drive file or block device opened O_RDONLY, for the forensic tools: they never write to what
 * they inspect (STYLE.md, practice 13), so the descriptor cannot write, and the write methods of
 * the DriveStore interface (which locateSuperblock's type asks for) reject without touching it.
 * No flock either: inspecting a drive a target is serving is allowed, and reads change nothing.
 */
import fs from "node:fs";
import { DriveIoError, type DriveStore } from "../../engine/drive/store.ts";

export class ReadOnlyFile implements DriveStore {
  private closed = false;

  private constructor(
    private readonly fd: number,
    readonly size_bytes: number,
    readonly describe: string,
  ) {}

  static open(path: string): ReadOnlyFile {
    let fd: number;
    try {
      fd = fs.openSync(path, fs.constants.O_RDONLY);
    } catch (e) {
      throw new DriveIoError(`cannot open ${path}: ${(e as Error).message}`, "EIO");
    }
    try {
      const st = fs.fstatSync(fd);
      if (st.isFile()) return new ReadOnlyFile(fd, st.size, `file ${path}`);
      if (st.isBlockDevice()) return new ReadOnlyFile(fd, blockDeviceBytes(st.rdev, path), `block device ${path}`);
      throw new DriveIoError(`${path} is neither a regular file nor a block device`, "EIO");
    } catch (e) {
      fs.closeSync(fd);
      throw e instanceof DriveIoError ? e : new DriveIoError(`${path}: ${(e as Error).message}`, "EIO");
    }
  }

  async read(offset: number, dst: Uint8Array): Promise<void> {
    if (this.closed) throw new DriveIoError(`${this.describe}: closed`, "ECLOSED");
    if (!Number.isSafeInteger(offset) || offset < 0 || offset + dst.length > this.size_bytes) {
      throw new DriveIoError(`range ${offset}+${dst.length} beyond ${this.describe} size ${this.size_bytes}`, "ERANGE");
    }
    for (let done = 0; done < dst.length; ) {
      const n = await new Promise<number>((res, rej) =>
        fs.read(this.fd, dst, done, dst.length - done, offset + done, (e, got) => (e ? rej(e) : res(got))),
      ).catch((e: Error) => {
        throw new DriveIoError(`${this.describe}: read at ${offset + done}: ${e.message}`, "EIO");
      });
      if (n === 0) throw new DriveIoError(`${this.describe}: unexpected end of file at ${offset + done}`, "EIO");
      done += n;
    }
  }

  async write(): Promise<void> {
    throw new DriveIoError(`${this.describe} is open read-only`, "EIO");
  }

  async flush(): Promise<void> {
    throw new DriveIoError(`${this.describe} is open read-only`, "EIO");
  }

  async writeZeroes(): Promise<void> {
    throw new DriveIoError(`${this.describe} is open read-only`, "EIO");
  }

  async trim(): Promise<void> {
    throw new DriveIoError(`${this.describe} is open read-only`, "EIO");
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    fs.closeSync(this.fd);
  }
}

/** A block device's size from sysfs (fstat reports 0 for it): /sys/dev/block/MAJ:MIN/size × 512. */
function blockDeviceBytes(rdev: number, path: string): number {
  const major = ((rdev >>> 8) & 0xfff) | (Math.floor(rdev / 2 ** 32) & ~0xfff);
  const minor = (rdev & 0xff) | ((rdev >>> 12) & ~0xff);
  const sysfs = `/sys/dev/block/${major}:${minor}/size`;
  try {
    return Number(fs.readFileSync(sysfs, "utf8").trim()) * 512;
  } catch (e) {
    throw new DriveIoError(`${path}: cannot read its size from ${sysfs}: ${(e as Error).message}`, "EIO");
  }
}
