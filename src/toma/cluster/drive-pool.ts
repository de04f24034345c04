/**
 * The pool as the TOMAs of a cluster see it: which server serves which drive, and in what shape,
 * as each TOMA last reported its own target(s). Each TOMA owns its server's drives: it alone
 * talks to its target(s), claims their unclaimed drives for the cluster and reports them to the
 * leader every second (POST /v1/cluster/drives, a management request: it crosses the signed API
 * and the 421 redirect as an operator's request does, and keeps the consensus envelope to Raft's
 * own messages). The leader keeps the reports here and answers each with the whole pool, so every
 * TOMA shows the pool as the leader last saw it.
 *
 * Runtime knowledge, never replicated: where a drive is served changes when it moves, and a new
 * leader learns it within a report period. The replicated state (cluster-state.ts) holds only
 * what a drive is (uuid, geometry, cache epoch). Ages are measured on each TOMA's own steady
 * clock; an age crosses the wire, never a timestamp.
 */
import { TOMA_ID_RE } from "../consensus/hard-state-record.ts";
import * as v from "valibot";
import type { Topology } from "../allocator.ts";
import type { ClusterState, DriveRecord } from "../cluster-state.ts";
import { Count, UuidSchema } from "../consensus/types.ts";
import { HeardClientSchema, MAX_HEARD } from "./client-hearing.ts";
import { MAX_REBUILD_JOBS, RebuildJobSchema, RebuildOrderSchema } from "./rebuild-wire.ts";

/** How often each TOMA reports its drives. */
export const REPORT_EVERY_MS = 1000;
/** A server not heard for longer: its drives are not usable for new extents and show as missing. */
export const REPORT_FRESH_MS = 5000;

const Text = (max: number) => v.pipe(v.string(), v.maxLength(max));
const ServerName = v.pipe(v.string(), v.regex(TOMA_ID_RE, "server must be 1 to 64 of [A-Za-z0-9._-]"));

export const ReportedDriveSchema = v.strictObject({
  drive_uuid: UuidSchema,
  /** The target serving it, as its own server reaches it. */
  target: Text(256),
  path: Text(4096),
  size_bytes: Count,
  /** Nil while unclaimed. */
  cluster_uuid: UuidSchema,
  extent_size_bytes: Count,
  extent_count: Count,
  cache_epoch: v.optional(Count),
  state: v.picklist(["ok", "error"]),
  error: v.nullable(Text(4096)),
  /**
   * The fence table this server's TOMA pushed and the drive confirmed (local-fences.ts): of the
   * applied state of this generation, at this control-plane version, and its digest
   * (fencing.ts tableDigest). Absent: none confirmed, or a TOMA that does not keep its drives' tables.
   */
  fence: v.optional(v.strictObject({ version: Count, generation: Count, table: v.pipe(v.string(), v.regex(/^[0-9a-f]{32}$/)) })),
});
export type ReportedDrive = v.InferOutput<typeof ReportedDriveSchema>;

/** The body of POST /v1/cluster/drives. */
export const DriveReportSchema = v.strictObject({
  server: ServerName,
  drives: v.pipe(v.array(ReportedDriveSchema), v.maxLength(1024, "at most 1024 drives per server")),
  /** The client daemons this TOMA heard lately, and how long ago by its own clock (client-hearing.ts). */
  clients: v.optional(v.pipe(v.array(HeardClientSchema), v.maxLength(MAX_HEARD, `at most ${MAX_HEARD} clients`))),
  /** The rebuild copies the leader handed to this TOMA, and how far each is (rebuild-runner.ts). */
  rebuilds: v.optional(v.pipe(v.array(RebuildJobSchema), v.maxLength(MAX_REBUILD_JOBS, `at most ${MAX_REBUILD_JOBS} rebuilds`))),
});
export type DriveReport = v.InferOutput<typeof DriveReportSchema>;

/** The leader's answer: every server's last report and how long ago it arrived. */
export const PoolViewSchema = v.strictObject({
  servers: v.pipe(
    v.array(v.strictObject({ server: ServerName, heard_ms_ago: Count, drives: v.pipe(v.array(ReportedDriveSchema), v.maxLength(1024)) })),
    v.maxLength(1024),
  ),
});
export type PoolView = v.InferOutput<typeof PoolViewSchema>;

/** The answer to a report: the pool as the leader knows it, and the rebuild copies it hands to the reporting TOMA. */
export const ReportAnswerSchema = v.strictObject({
  ...PoolViewSchema.entries,
  rebuild_orders: v.optional(v.pipe(v.array(RebuildOrderSchema), v.maxLength(MAX_REBUILD_JOBS))),
});
export type ReportAnswer = PoolView;

export interface Located {
  server: string;
  drive: ReportedDrive;
  heard_ms_ago: number;
  fresh: boolean;
}

export class DrivePool {
  /** By server: its last report, and when it arrived on this TOMA's steady clock. */
  private readonly reports = new Map<string, { drives: ReportedDrive[]; at: number }>();

  constructor(private readonly now: () => number) {}

  /** A server's report of its own drives (on the leader; a follower's own, as it sent it). */
  report(r: DriveReport): void {
    this.reports.set(r.server, { drives: r.drives, at: this.now() });
  }

  /** The leader's view, answered to a report: taken whole, except this TOMA's own fresher one. */
  adopt(view: PoolView, own: string): void {
    const mine = this.reports.get(own);
    this.reports.clear();
    const now = this.now();
    for (const s of view.servers) this.reports.set(s.server, { drives: s.drives, at: now - s.heard_ms_ago });
    if (mine && (this.reports.get(own)?.at ?? -Infinity) < mine.at) this.reports.set(own, mine);
  }

  view(): PoolView {
    const now = this.now();
    return { servers: [...this.reports].sort(([a], [b]) => a.localeCompare(b)).map(([server, r]) => ({ server, heard_ms_ago: Math.max(0, Math.round(now - r.at)), drives: r.drives })) };
  }

  /** Where a drive is served, by the freshest report that lists it; null if none does. */
  locate(drive_uuid: string): Located | null {
    let best: Located | null = null;
    const now = this.now();
    for (const [server, r] of this.reports) {
      const d = r.drives.find((x) => x.drive_uuid === drive_uuid);
      if (!d) continue;
      const age = now - r.at;
      if (best === null || age < best.heard_ms_ago) best = { server, drive: d, heard_ms_ago: Math.max(0, Math.round(age)), fresh: age <= REPORT_FRESH_MS };
    }
    return best;
  }

  /** Every drive some report lists. */
  uuids(): Set<string> {
    return new Set([...this.reports.values()].flatMap((r) => r.drives.map((d) => d.drive_uuid)));
  }

  /** Reported lately, healthy and claimed for this cluster. */
  usable(drive_uuid: string, cluster_uuid: string): boolean {
    const at = this.locate(drive_uuid);
    return at !== null && at.fresh && at.drive.state === "ok" && at.drive.cluster_uuid === cluster_uuid;
  }

  /** What the allocator needs: the usable drives, and the server of each (legs on different servers). */
  topology(state: ClusterState): Topology {
    const usable = new Set<string>();
    const target_of = new Map<string, string>();
    for (const d of state.drives) {
      const at = this.locate(d.drive_uuid);
      if (at) target_of.set(d.drive_uuid, at.server);
      if (this.usable(d.drive_uuid, state.cluster_uuid)) usable.add(d.drive_uuid);
    }
    return { usable, target_of };
  }

  /** Drives claimed for the cluster, reported lately and healthy, that the state does not hold yet. */
  toAdd(state: ClusterState): DriveRecord[] {
    const out: DriveRecord[] = [];
    for (const u of [...this.uuids()].sort()) {
      if (state.drives.some((d) => d.drive_uuid === u) || !this.usable(u, state.cluster_uuid)) continue;
      const d = this.locate(u)!.drive;
      if (d.extent_size_bytes <= 0) continue;
      out.push({ drive_uuid: u, extent_size_bytes: d.extent_size_bytes, extent_count: d.extent_count, ...(d.cache_epoch === undefined ? {} : { cache_epoch: d.cache_epoch }) });
    }
    return out;
  }
}
