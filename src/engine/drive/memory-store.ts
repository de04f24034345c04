/** A drive in RAM: for tests and the simulator. Holds the same contract as the file store. */
import { checkRange, DriveIoError, type DriveStore } from "./store.ts";

export class MemoryStore implements DriveStore {
  readonly describe = "memory";
  private bytes: Uint8Array;
  private closed = false;

  constructor(readonly size_bytes: number) {
    this.bytes = new Uint8Array(size_bytes);
  }

  private check(offset: number, length: number): void {
    checkRange(this, this.closed, offset, length);
  }

  async read(offset: number, dst: Uint8Array): Promise<void> {
    this.check(offset, dst.length);
    dst.set(this.bytes.subarray(offset, offset + dst.length));
  }

  async write(offset: number, src: Uint8Array, _fua: boolean): Promise<void> {
    this.check(offset, src.length);
    this.bytes.set(src, offset);
  }

  async flush(): Promise<void> {
    if (this.closed) throw new DriveIoError("store closed", "ECLOSED");
  }

  async writeZeroes(offset: number, length: number, _fua: boolean): Promise<void> {
    this.check(offset, length);
    this.bytes.fill(0, offset, offset + length);
  }

  async trim(offset: number, length: number): Promise<void> {
    this.check(offset, length);
    this.bytes.fill(0, offset, offset + length);
  }

  async close(): Promise<void> {
    this.closed = true;
  }
}
