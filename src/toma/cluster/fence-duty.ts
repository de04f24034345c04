/**
 * Who keeps a drive's fence table, as the leader sees it (docs/toma-cluster.md, "Each TOMA's own
 * drives"). The drive's own TOMA does (local-fences.ts), and says in its drive report which table
 * the drive confirmed; the leader counts on that report wherever it waits for a table to be
 * confirmed (a client fenced out, a deleted volume's extents released, a rebuild's start, a
 * stale lock judged). When the drive's TOMA is silent (no report for FENCE_OWNER_FRESH_MS: dead,
 * paused, cut off while its target lives) or has not confirmed the current table within
 * FENCE_DUTY_GRACE_MS, the leader pushes the table itself over its own session, and logs that it
 * does. Both push tables that are pure functions of committed states, stamped with their
 * versions, so at one version they push the same table, and a target refuses an older version:
 * two pushers never undo each other.
 *
 * Safe to count on a report: the digest names the exact table of a committed state, and what the
 * leader relies on (a client left out, a volume left out, a minimum generation reached) holds in
 * every later state's table as well (expiry, deletion and the stable generation never go back),
 * while a target refuses any older state's table once it confirmed this one. A target that
 * restarted since holds an empty table, which admits nobody. A report's age only delays.
 */
import type { Env } from "../../engine/env.ts";
import { steadyClock } from "../../engine/steady-clock.ts";
import { tableDigest } from "../fencing.ts";
import type { DrivePool } from "./drive-pool.ts";

/** A drive's TOMA not heard for longer is silent: the leader keeps that drive's table itself. */
export const FENCE_OWNER_FRESH_MS = 2500;
/** A table the drive's TOMA has not confirmed for this long: the leader pushes it itself. */
export const FENCE_DUTY_GRACE_MS = 3000;

export type Keeper = "confirmed" | "owner" | "self";

export class FenceDuty {
  private readonly clock;
  /** Per drive: the table (digest) the leader waits for its TOMA to confirm, since when. */
  private readonly waiting = new Map<string, { digest: string; since: number }>();
  /** Drives whose table the leader keeps itself now, and why (logged once per episode). */
  private readonly doing = new Map<string, string>();

  constructor(
    private readonly env: Env,
    private readonly pool: DrivePool,
  ) {
    this.clock = steadyClock(env.clock);
  }

  /** Who keeps the table whose key (JSON) is `key` on drive `drive_uuid` now (fencing.ts keeper). */
  keeper(drive_uuid: string, key: string): Keeper {
    const digest = tableDigest(key);
    const at = this.pool.locate(drive_uuid);
    const fresh = at !== null && at.heard_ms_ago <= FENCE_OWNER_FRESH_MS;
    if (fresh && at.drive.fence?.table === digest) {
      this.waiting.delete(drive_uuid);
      if (this.doing.delete(drive_uuid)) this.env.log.info("a drive's own TOMA keeps its fence table again", { drive: drive_uuid, server: at.server });
      return "confirmed";
    }
    const now = this.clock.now_ms();
    let why: string | null = null;
    if (at === null) why = "no server reports the drive";
    else if (!fresh) why = `its TOMA (server ${at.server}) is silent: last report ${at.heard_ms_ago} ms ago`;
    else {
      const w = this.waiting.get(drive_uuid);
      if (w === undefined || w.digest !== digest) this.waiting.set(drive_uuid, { digest, since: now });
      const waited = now - (this.waiting.get(drive_uuid)?.since ?? now);
      if (waited >= FENCE_DUTY_GRACE_MS) why = `its TOMA (server ${at.server}) has not confirmed the current table for ${Math.round(waited)} ms`;
    }
    if (why === null) return "owner";
    if (!this.doing.has(drive_uuid)) this.env.log.warn("the leader keeps a drive's fence table itself", { drive: drive_uuid, why });
    this.doing.set(drive_uuid, why);
    return "self";
  }

  /** The drives whose table the leader keeps itself now, with why (status, tests). */
  kept(): ReadonlyMap<string, string> {
    return this.doing;
  }
}
