/**
 * The TOMA's own exclusion over drive ranges. Its copies (rebuild.ts) all lock with one owner id,
 * and a LOCK or UNLOCK whose answer is lost with its connection leaves it unknown whether that
 * owner still holds the range. Under a claim no other work of this TOMA touches the range, so
 * the claimant may UNLOCK it first (freeing any lock of ours left behind) and then lock it.
 */
export interface Claim {
  drive_uuid: string;
  offset: number;
  length: number;
}

export class RangeClaims {
  private readonly held = new Map<Claim, Promise<void>>();

  /** Waits until no claim overlaps the range, then claims it; call the result to release it. */
  async claim(drive_uuid: string, offset: number, length: number): Promise<() => void> {
    for (;;) {
      const busy = this.overlapping({ drive_uuid, offset, length });
      if (!busy) break;
      await busy;
    }
    const c = { drive_uuid, offset, length };
    let release!: () => void;
    this.held.set(c, new Promise<void>((r) => (release = r)));
    return () => {
      this.held.delete(c);
      release();
    };
  }

  /** Whether a claim overlaps the range now. */
  claimed(drive_uuid: string, offset: number, length: number): boolean {
    return this.overlapping({ drive_uuid, offset, length }) !== null;
  }

  private overlapping(r: Claim): Promise<void> | null {
    for (const [c, done] of this.held) {
      if (c.drive_uuid === r.drive_uuid && c.offset < r.offset + r.length && r.offset < c.offset + c.length) return done;
    }
    return null;
  }
}
