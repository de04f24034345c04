/**
 * A window [base_offset, base_offset + size_bytes) of another store, itself a DriveStore: the data
 * area of a formatted drive. Offsets are checked against the window, so no request addressed to
 * the data area can reach the superblock, the metadata slots or the bitmap.
 */
import { DriveIoError, type DriveStore, checkRange, rangeRefused } from "./store.ts";

export class OffsetStore implements DriveStore {
  private closed = false;
  readonly describe: string;
  readonly cache_epoch?: number;
  readonly io_path?: string;

  constructor(
    private readonly base: DriveStore,
    private readonly base_offset: number,
    readonly size_bytes: number,
    what: string,
  ) {
    if (base_offset < 0 || base_offset + size_bytes > base.size_bytes) {
      throw new Error(`window ${base_offset}+${size_bytes} outside ${base.describe}`);
    }
    this.cache_epoch = base.cache_epoch;
    this.io_path = base.io_path;
    this.describe = `${base.describe} ${what}`;
  }

  private check(offset: number, length: number): void {
    checkRange(this, this.closed, offset, length);
  }

  private refused(offset: number, length: number): Promise<never> | null {
    return rangeRefused(this, this.closed, offset, length);
  }

  // read and write hand back the base store's own promise: no wrapper on the data path.
  read(offset: number, dst: Uint8Array): Promise<void> {
    return this.refused(offset, dst.length) ?? this.base.read(this.base_offset + offset, dst);
  }

  readNow(offset: number, dst: Uint8Array): boolean {
    this.check(offset, dst.length);
    return this.base.readNow?.(this.base_offset + offset, dst) ?? false;
  }

  write(offset: number, src: Uint8Array, fua: boolean): Promise<void> {
    return this.refused(offset, src.length) ?? this.base.write(this.base_offset + offset, src, fua);
  }

  writeNow(offset: number, src: Uint8Array): boolean {
    this.check(offset, src.length);
    return this.base.writeNow?.(this.base_offset + offset, src) ?? false;
  }

  async flush(): Promise<void> {
    if (this.closed) throw new DriveIoError(`${this.describe}: store closed`, "ECLOSED");
    await this.base.flush();
  }

  async writeZeroes(offset: number, length: number, fua: boolean): Promise<void> {
    this.check(offset, length);
    await this.base.writeZeroes(this.base_offset + offset, length, fua);
  }

  async trim(offset: number, length: number): Promise<void> {
    this.check(offset, length);
    await this.base.trim(this.base_offset + offset, length);
  }

  /** Closes the window only; the drive that owns the base store closes it. */
  async close(): Promise<void> {
    this.closed = true;
  }
}
