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
 * least its own is on the drive.
 */
import type { FormattedDrive } from "../drive/formatted-api.ts";
import { Status } from "../wire/header.ts";
import { RequestError } from "./reply.ts";

export class ControlVersionGate {
  /** The highest version any request carried (RAM); never below `durable`. */
  private highest: number;
  /** The highest version on the drive. */
  private durable: number;
  private tail: Promise<void> = Promise.resolve();

  constructor(private readonly drive: FormattedDrive) {
    this.highest = this.durable = drive.control_version;
  }

  get newest(): number {
    return this.highest;
  }

  /**
   * Null when a request of this version may run now; a promise when it may run once the version
   * is durable (rejects if it cannot be recorded); throws STALE when the version is older.
   */
  admit(version: number): Promise<void> | null {
    if (version < this.highest) {
      throw new RequestError(
        Status.STALE,
        `control-plane version ${version} is older than ${this.highest}, the newest drive ${this.drive.info.drive_uuid} has seen: a newer TOMA state acts on it`,
        this.highest,
      );
    }
    if (version <= this.durable) return null;
    this.highest = version;
    const run = this.tail.then(async () => {
      if (this.durable >= version) return;
      // One write covers every version that arrived while the previous one was written.
      const target = this.highest;
      await this.drive.persistControlVersion(target);
      this.durable = target;
    });
    this.tail = run.catch(() => {});
    return run;
  }
}
