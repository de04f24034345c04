/**
 * A set of extent numbers of one drive, as a bitmap: the extents in use are computed from the
 * state for every command (cluster-state.ts usedExtents, the allocator), and a state of many
 * large volumes lists millions of them, so the set must cost a bit per extent, not a hash entry
 * (a Set<number> of 10 million took over a second to build). Numbers beyond any drive's extent
 * count (only in a state being validated) go to a small overflow set, never into the bitmap.
 */
const MAX_BITMAP_EXTENTS = 1 << 28;

export class ExtentSet {
  private bits = new Uint32Array(0);
  private overflow: Set<number> | null = null;
  private count = 0;

  /** How many extents it holds. */
  get size(): number {
    return this.count;
  }

  has(e: number): boolean {
    if (e >= MAX_BITMAP_EXTENTS || e < 0) return this.overflow?.has(e) ?? false;
    const w = e >>> 5;
    return w < this.bits.length && (this.bits[w]! & (1 << (e & 31))) !== 0;
  }

  add(e: number): this {
    if (e >= MAX_BITMAP_EXTENTS || e < 0 || !Number.isInteger(e)) {
      this.overflow ??= new Set();
      if (!this.overflow.has(e)) this.count++;
      this.overflow.add(e);
      return this;
    }
    const w = e >>> 5;
    if (w >= this.bits.length) {
      const grown = new Uint32Array(Math.max(w + 1, this.bits.length * 2, 64));
      grown.set(this.bits);
      this.bits = grown;
    }
    const m = 1 << (e & 31);
    if ((this.bits[w]! & m) === 0) {
      this.bits[w] = this.bits[w]! | m;
      this.count++;
    }
    return this;
  }
}
