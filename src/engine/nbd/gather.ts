/**
 * Collects a field of known length that may arrive split over any number of chunks. Each chunk is
 * copied into the target exactly once; a field wholly inside one chunk can skip this entirely
 * (the decoders read it in place).
 */
export class Gather {
  private target: Uint8Array = new Uint8Array(0);
  private filled = 0;

  /** Starts collecting target.length bytes into target. */
  start(target: Uint8Array): void {
    this.target = target;
    this.filled = 0;
  }

  /** Copies what it still needs from src[pos..]; returns the number of bytes consumed. */
  take(src: Uint8Array, pos: number): number {
    const n = Math.min(this.target.length - this.filled, src.length - pos);
    if (n <= 0) return 0;
    this.target.set(src.subarray(pos, pos + n), this.filled);
    this.filled += n;
    return n;
  }

  get done(): boolean {
    return this.filled === this.target.length;
  }

  get started(): boolean {
    return this.filled > 0;
  }

  get bytes(): Uint8Array {
    return this.target;
  }
}
