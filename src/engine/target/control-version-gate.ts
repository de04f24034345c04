/**
 * The control-plane fence of one served drive (docs/toma-cluster.md, "Fenced at the drives"): a
 * request from a TOMA connection that changes the drive (FENCE, LOCK, UNLOCK, DIRTY_SET,
 * DIRTY_CLEAR, WRITE, WRITE_ZEROES, TRIM) carries in its header `generation` the version of the
 * cluster state its TOMA acts on. The drive refuses a version older than the newest it has seen
 * with STALE (naming the newest), and records a newer one durably before the request runs, so a
 * deposed TOMA stays refused across target restarts.
 *
 * Versions only go up. The newest seen is raised at once (an older request arriving while the
 * newer one's record is being written is refused already); a request waits until a version at
 * least its own is on the drive. A raise is also a barrier, as FENCE is for clients: the version
 * is recorded, and the raising request runs, only once every request of an older version that
 * was admitted before has finished, and the older ones still waiting for a lock were failed
 * (onRaise). So once a newer TOMA's first request there is answered, nothing a deposed TOMA sent
 * can still land on the drive.
 */
import type { FormattedDrive } from "../drive/formatted-api.ts";
import { Serial } from "../serial.ts";
import { Status } from "../wire/header.ts";
import { RequestError } from "./reply.ts";

export class ControlVersionGate {
  /** The highest version any request carried (RAM); never below the drive's record. */
  private highest: number;
  private readonly writes = new Serial();
  /** Admitted requests not finished yet, by version. */
  private readonly running = new Map<number, number>();
  private drained: { below: number; resolve: () => void }[] = [];

  constructor(private readonly drive: FormattedDrive) {
    this.highest = drive.control_version;
  }

  get newest(): number {
    return this.highest;
  }

  /**
   * The version on the drive. Read from the drive itself, not kept here: the same drive may be
   * served again (a new serving after a re-plug, or two services over one drive object in tests),
   * and the record is the drive's.
   */
  private get durable(): number {
    return this.drive.control_version;
  }

  /**
   * Null when a request of this version may run now; a promise when it may run once the version
   * is durable (rejects if it cannot be recorded); throws STALE when the version is older.
   */
  admit(version: number, onRaise: () => void = () => {}): Promise<void> | null {
    this.check(version);
    if (version <= this.durable) return null;
    if (version > this.highest) {
      this.highest = version;
      onRaise();
    }
    return this.writes.run(async () => {
      if (this.durable >= version) return;
      // One write covers every version that arrived while the previous one was written.
      const target = this.highest;
      await this.drainBelow(target);
      if (this.durable < target) await this.drive.persistControlVersion(target);
    });
  }

  /** Throws STALE when `version` is older than the newest seen. */
  check(version: number): void {
    if (this.durable > this.highest) this.highest = this.durable;
    if (version < this.highest) {
      throw new RequestError(
        Status.STALE,
        `control-plane version ${version} is older than ${this.highest}, the newest drive ${this.drive.info.drive_uuid} has seen: a newer TOMA state acts on it`,
        this.highest,
      );
    }
  }

  /** An admitted request of this version starts; leave() when it is answered. */
  enter(version: number): void {
    this.running.set(version, (this.running.get(version) ?? 0) + 1);
  }

  leave(version: number): void {
    const n = this.running.get(version) ?? 0;
    if (n > 1) this.running.set(version, n - 1);
    else this.running.delete(version);
    if (this.drained.length === 0) return;
    const still: typeof this.drained = [];
    for (const w of this.drained) {
      if (this.anyBelow(w.below)) still.push(w);
      else w.resolve();
    }
    this.drained = still;
  }

  private anyBelow(version: number): boolean {
    for (const v of this.running.keys()) if (v < version) return true;
    return false;
  }

  private drainBelow(version: number): Promise<void> | void {
    if (!this.anyBelow(version)) return;
    return new Promise((resolve) => this.drained.push({ below: version, resolve }));
  }
}
