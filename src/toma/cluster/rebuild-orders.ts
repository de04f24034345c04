/**
 * Rebuilds in a TOMA cluster run on the server that holds the new leg's drive
 * (docs/toma-cluster.md, "Who copies a rebuilding leg"). The leader still decides: the syncing
 * leg is in the committed topology, and its "synced" step is a command the leader commits under
 * the stable-generation rule (mirror-control.ts). Only the copy moves: the leader hands it, as an
 * order riding on its answer to a server's drive report, to the TOMA whose own target serves the
 * syncing leg's drive (rebuild-runner.ts); that TOMA reports the job with each report, and the
 * leader ends the job when the report says done or failed.
 *
 * An order names the lock owner id its copy locks under and the control-plane version it stamps
 * on every request: the version of the leader's state when it ordered. That is what makes a
 * delegated copy safe to take back: its locks are never taken for a dead client's (`owners()`)
 * until the leader's own version has passed the order's, and from the first request of that
 * newer version on a drive, the drive refuses every request of the order (target/
 * control-version-gate.ts, a barrier as FENCE is for clients). So a copy whose TOMA is paused,
 * cut off or slow, and resumes, lands nothing once its lock could have been freed by another.
 *
 * The silent-TOMA rule: a server whose report is stale (its TOMA dead or paused while its target
 * lives), or that never lists the job it was ordered, loses the order, and the leader copies the
 * leg itself, as the single TOMA does. If the leader's version has not passed the order's, the
 * leg is reported failing (it goes dead and comes back syncing, two committed steps), which moves
 * the version past the order's and so frees whatever lock the silent copy may still hold.
 *
 * Sans-I/O: time only from the injected clock, ids only from the injected randomness.
 */
import type { Env } from "../../engine/env.ts";
import type { VolumeRecord } from "../cluster-state.ts";
import { randomClientId } from "../clients.ts";
import type { RebuildDelegate, RebuildOutcome } from "../mirror-control.ts";
import type { RebuildProgress } from "../rebuild.ts";
import { type DrivePool, REPORT_FRESH_MS } from "./drive-pool.ts";
import { MAX_REBUILD_JOBS, type RebuildJob, type RebuildOrder } from "./rebuild-wire.ts";

interface Handed {
  order: RebuildOrder;
  server: string;
  /** The syncing leg's drive. */
  drive: string;
  volume: string;
  progress: RebuildProgress;
  onEnd: (out: RebuildOutcome) => void;
  ordered_ms: number;
  /** Whether the server listed the job once. */
  listed: boolean;
}

/** The leader's side: which copies it handed to which server, for one term. */
export class RebuildDelegation implements RebuildDelegate {
  /** "volume uuid/column" → the order live there. */
  private readonly live = new Map<string, Handed>();
  /** Orders ended whose copies' requests a drive may still admit: owner id → the order's version. */
  private readonly ended = new Map<number, { version: number; volume_uuid: string }>();
  /** "volume uuid/column@topology_seq" → failures its server reported; at FAILS_BEFORE_LEADER the leader copies. */
  private readonly failures = new Map<string, number>();
  /**
   * Server → local time until which it is handed nothing: an order was taken back from it as
   * silent. Without this, a TOMA that reports but never runs an order (one outside the cluster,
   * or far behind) would get every new generation's order again and the leg would go out and
   * back for ever.
   */
  private readonly shunned = new Map<string, number>();

  constructor(
    private readonly env: Env,
    /** This TOMA's own server name: a leg on its own drive is copied by its own control. */
    private readonly self: string,
    private readonly pool: DrivePool,
    readonly term: number,
    /** The leader's control-plane version now. */
    private readonly version: () => number,
  ) {}

  hand(vol: VolumeRecord, column: number, source: number, clear_bits: boolean, progress: RebuildProgress, onEnd: (out: RebuildOutcome) => void): boolean {
    const drive = vol.columns[column]!.drive_uuid;
    const at = this.pool.locate(drive);
    if (at === null || at.server === this.self) return false;
    const key = `${vol.uuid}/${column}`;
    if (!at.fresh) {
      this.env.log.warn("the TOMA serving a rebuilding leg's drive is silent: the leader copies the leg itself", { volume: vol.name, column, server: at.server, heard_ms_ago: at.heard_ms_ago });
      return false;
    }
    if ((this.shunned.get(at.server) ?? -Infinity) > this.env.clock.now_ms()) {
      this.env.log.info("the TOMA serving a rebuilding leg's drive was silent lately: the leader copies the leg itself", { volume: vol.name, column, server: at.server });
      return false;
    }
    if ((this.failures.get(`${key}@${vol.topology_seq}`) ?? 0) >= FAILS_BEFORE_LEADER) {
      this.env.log.warn("the TOMA serving a rebuilding leg's drive failed to copy it: the leader copies the leg itself", { volume: vol.name, column, server: at.server });
      return false;
    }
    const version = this.version();
    if (version === 0) return false;
    let owner_id = randomClientId(this.env);
    while (this.ended.has(owner_id)) owner_id = randomClientId(this.env);
    const order: RebuildOrder = { volume_uuid: vol.uuid, column, source, topology_seq: vol.topology_seq, term: this.term, version, owner_id, clear_bits };
    this.live.get(key)?.onEnd({ ok: false, error: "ordered again", report: false });
    this.live.set(key, { order, server: at.server, drive, volume: vol.name, progress, onEnd, ordered_ms: this.env.clock.now_ms(), listed: false });
    this.env.log.info("rebuild handed to the TOMA serving the leg's drive", { volume: vol.name, column, server: at.server, owner: owner_id });
    return true;
  }

  /** The orders live for a server, carried by the answer to its report. */
  ordersFor(server: string): RebuildOrder[] {
    return [...this.live.values()].filter((h) => h.server === server).map((h) => h.order).slice(0, MAX_REBUILD_JOBS);
  }

  /** A server's report of its jobs: progress taken, a job done or failed ends its order. */
  received(server: string, jobs: readonly RebuildJob[]): void {
    for (const j of jobs) {
      const key = `${j.volume_uuid}/${j.column}`;
      const h = this.live.get(key);
      // A job of another order (an older term, generation or owner) is no news: abandoned there.
      if (!h || h.server !== server || h.order.owner_id !== j.owner_id || h.order.topology_seq !== j.topology_seq || h.order.term !== j.term) continue;
      h.listed = true;
      h.progress.done_bytes = j.done_bytes;
      h.progress.total_bytes = j.total_bytes;
      if (j.state === "done") {
        this.end(key, h, { ok: true, from_epoch: j.from_epoch });
        this.env.log.info("rebuild copied by the TOMA serving the leg's drive", { volume: h.volume, column: j.column, server, bytes: j.done_bytes });
      } else if (j.state === "failed") {
        const fk = `${key}@${j.topology_seq}`;
        this.failures.set(fk, (this.failures.get(fk) ?? 0) + 1);
        this.end(key, h, { ok: false, error: `server ${server}: ${j.error ?? "failed"}`, report: false });
      }
    }
  }

  /**
   * Takes back the orders whose server is silent: its report is stale, or it never listed the
   * job within a report's freshness, or the leg's drive is now served elsewhere. Each pass.
   */
  check(): void {
    const now = this.env.clock.now_ms();
    for (const [key, h] of [...this.live]) {
      const at = this.pool.locate(h.drive);
      const silent = at === null || !at.fresh || at.server !== h.server || (!h.listed && now - h.ordered_ms > REPORT_FRESH_MS);
      if (!silent) continue;
      // Its copy's requests stay admitted at the drives until our version passes the order's:
      // only then may its locks be freed, so the leg goes out and back (two commits) if needed.
      const report = this.version() <= h.order.version;
      this.env.log.warn("the TOMA copying a rebuilding leg is silent: its order is taken back, the leader copies the leg itself", {
        volume: h.volume,
        column: h.order.column,
        server: h.server,
        heard_ms_ago: at?.heard_ms_ago ?? null,
        leg_out_and_back: report,
      });
      this.shunned.set(h.server, now + SHUN_MS);
      this.end(key, h, { ok: false, error: `the TOMA of server ${h.server} is silent`, report });
    }
    const version = this.version();
    for (const [owner, e] of [...this.ended]) if (e.version < version) this.ended.delete(owner);
  }

  /**
   * Lock owners of the copies handed out whose requests a drive may still admit: never taken for
   * a dead client's. An ended order's owner stays until the leader's version passed its own.
   */
  owners(): ReadonlySet<number> {
    const version = this.version();
    const out = new Set<number>();
    for (const h of this.live.values()) out.add(h.order.owner_id);
    for (const [owner, e] of this.ended) if (e.version >= version) out.add(owner);
    return out;
  }

  /** Whether a copy handed out may still write in a volume's extents (they may not be released). */
  busyOn(volume_uuid: string): boolean {
    const version = this.version();
    for (const h of this.live.values()) if (h.order.volume_uuid === volume_uuid) return true;
    for (const e of this.ended.values()) if (e.volume_uuid === volume_uuid && e.version >= version) return true;
    return false;
  }

  /** Every live order ends (the term's control stops): their copies are abandoned at the next report. */
  stop(): void {
    for (const [key, h] of [...this.live]) this.end(key, h, { ok: false, error: "the leader's control stopped", report: false });
  }

  private end(key: string, h: Handed, out: RebuildOutcome): void {
    this.live.delete(key);
    this.ended.set(h.order.owner_id, { version: h.order.version, volume_uuid: h.order.volume_uuid });
    h.onEnd(out);
  }
}

/** Failures a server reports for one leg and generation before the leader copies it itself. */
const FAILS_BEFORE_LEADER = 2;
/** How long a server an order was taken back from is handed nothing. */
export const SHUN_MS = 30_000;
