/**
 * Each TOMA's duty for its own server's drives: every second, claim for the cluster the drives
 * its target(s) serve that belong to no cluster yet (CLAIM, as the single TOMA does), and report
 * them all to the leader (drive-pool.ts); the leader's answer, the whole pool, replaces what this
 * TOMA shows. The leader reports to itself and adds the reported drives to the state
 * (volume-ops.ts).
 *
 * It also zeroes the retired extents (a deleted volume's, cluster-state.ts) on its own drives, and
 * lists them in its report so that the leader releases them. Safe without a fence table because
 * no volume can be attached in this mode yet: no client request can be in flight into them.
 * Zeroing again what was zeroed is harmless (a report may be lost, a drive may move).
 *
 * Extents are released only on this server's word that it zeroed them, so a process zeroes only
 * what it has not zeroed itself; a new process (after a restart) zeroes only once it applied all
 * it knows committed and the leader's last answer still lists the extents retired. What remains
 * open: the previous process's report, still in flight when it died, makes the leader release
 * them after that answer, they go to a new volume, and the new process zeroes them.
 *
 * Not fenced: CLAIM and WRITE_ZEROES from a member carry no control-plane version, so a TOMA
 * that left the cluster could still claim a blank drive of its own server for the cluster it
 * believes in. Both gaps are harmless while no volume can be attached (no volume holds data in
 * this mode); attaching must close them first (the member's target sessions carrying the version
 * of its last applied entry, and the release naming the process that zeroed).
 */
import type { Env, TimerHandle } from "../../engine/env.ts";
import { steadyClock } from "../../engine/steady-clock.ts";
import { NIL_UUID, uuidFromString } from "../../engine/uuid.ts";
import * as v from "valibot";
import { extentByteRuns } from "../fencing.ts";
import { zeroRuns } from "../mirror-control.ts";
import { type TargetLink, withTimeout } from "../target-link.ts";
import { type DrivePool, type DriveReport, REPORT_EVERY_MS, ReportAnswerSchema, type ReportedDrive } from "./drive-pool.ts";
import type { TomaNode } from "./node.ts";

const CLAIM_TIMEOUT_MS = 5000;
/** Zeroing a deleted volume's extents on one drive (a drive that cannot punch writes zeroes). */
const ZERO_TIMEOUT_MS = 120_000;

export class DriveReporter {
  private timer: TimerHandle | null = null;
  private busy = false;
  private readonly clock;
  /** Why the last report did not reach the leader (null: it did). */
  last_error: string | null = null;
  /** Claims that failed, by drive, with the reason (shown by drive show). */
  readonly claim_errors = new Map<string, string>();
  /** Retired extents zeroed here, "volume/drive", still retired in the applied state. */
  private readonly zeroed = new Set<string>();
  /** A follower: what the leader's state held retired in its last answer ("volume/drive"). */
  private leader_retired = new Set<string>();

  constructor(
    private readonly env: Env,
    private readonly name: string,
    private readonly node: TomaNode,
    private readonly links: readonly TargetLink[],
    private readonly pool: DrivePool,
    /** POST the report to the leader at `address`; answers the leader's pool view (unvalidated). */
    private readonly send: (address: string, report: DriveReport) => Promise<unknown>,
    /** On the leader: its own report arrived (add what is new). */
    private readonly reported: () => void,
  ) {
    this.clock = steadyClock(env.clock);
  }

  start(): void {
    this.timer = this.env.timers.every(REPORT_EVERY_MS, () => void this.round());
  }

  stop(): void {
    this.timer?.cancel();
  }

  /** The drives the own target(s) serve now, as reported. */
  own(): ReportedDrive[] {
    return this.links.flatMap((l) =>
      l.session === null
        ? []
        : l.drives.map((d) => ({
            drive_uuid: d.drive_uuid,
            target: l.address,
            path: d.path,
            size_bytes: d.size_bytes,
            cluster_uuid: d.cluster_uuid,
            extent_size_bytes: d.extent_size_bytes,
            extent_count: d.extent_count,
            ...(d.cache_epoch === undefined ? {} : { cache_epoch: d.cache_epoch }),
            state: d.state,
            error: d.error ?? this.claim_errors.get(d.drive_uuid) ?? null,
          })),
    );
  }

  private async round(): Promise<void> {
    if (this.busy) return;
    const view = this.node.view();
    if (view.phase !== "running" || view.cluster_uuid === null || view.membership === "none") return;
    this.busy = true;
    try {
      await this.claim(view.cluster_uuid);
      await this.zeroRetired();
      const report: DriveReport = { server: this.name, drives: this.own(), zeroed: [...this.zeroed].map((k) => ({ volume_uuid: k.slice(0, 36), drive_uuid: k.slice(37) })) };
      this.pool.report(report);
      if (view.role === "leader") {
        this.last_error = null;
        return this.reported();
      }
      const lead = this.node.leader();
      if (!lead || lead.address === "") {
        this.last_error = "no leader known";
        return;
      }
      const started = this.clock.now_ms();
      const answer = v.safeParse(ReportAnswerSchema, await this.send(lead.address, report));
      if (!answer.success) throw new Error(`the leader at ${lead.address} answered a pool view that is not valid: ${answer.issues[0]!.message}`);
      // Ages as of the answer's arrival: the round trip is added, never a remote timestamp.
      const rtt = this.clock.now_ms() - started;
      this.pool.adopt({ servers: answer.output.servers.map((s) => ({ ...s, heard_ms_ago: s.heard_ms_ago + Math.round(rtt) })) }, this.name);
      this.leader_retired = new Set(answer.output.retired.map((r) => `${r.volume_uuid}/${r.drive_uuid}`));
      this.last_error = null;
    } catch (e) {
      this.last_error = (e as Error).message;
      this.env.log.debug("drive report to the leader failed", { error: this.last_error });
    } finally {
      this.busy = false;
    }
  }

  /** Zeroes the retired extents of the applied state that lie on the own drives, once each. */
  private async zeroRetired(): Promise<void> {
    // A TOMA still applying what it knows is committed (a restart replaying its log) holds an old
    // view: extents it shows retired may have been released and taken by a volume since. These
    // checks narrow the window without closing it (see the module comment).
    const v = this.node.view();
    if (v.applied === null || v.applied !== v.commit) return;
    // A follower also needs the leader's word, from its last answer: extents still retired there.
    // A leader that applied an entry of its term holds every commit.
    const leading = v.role === "leader" && v.leader_ready;
    const state = this.node.appliedState();
    const retired = new Set((state?.retired ?? []).map((r) => `${r.volume_uuid}/${r.drive_uuid}`));
    for (const k of this.zeroed) if (!retired.has(k)) this.zeroed.delete(k);
    for (const r of state?.retired ?? []) {
      const key = `${r.volume_uuid}/${r.drive_uuid}`;
      if (this.zeroed.has(key) || (!leading && !this.leader_retired.has(key))) continue;
      const l = this.links.find((x) => x.session !== null && x.drives.some((d) => d.drive_uuid === r.drive_uuid && d.state === "ok"));
      const d = state!.drives.find((x) => x.drive_uuid === r.drive_uuid);
      if (!l || !d) continue;
      const runs = extentByteRuns(r.extents, d.extent_size_bytes);
      try {
        await withTimeout(this.env, zeroRuns(l.session!, uuidFromString(r.drive_uuid), runs), ZERO_TIMEOUT_MS, `zero the retired extents of volume ${r.volume_uuid} on drive ${r.drive_uuid}`);
        this.zeroed.add(key);
        this.env.log.info("zeroed a deleted volume's extents", { volume: r.volume_uuid, drive: r.drive_uuid, extents: r.extents.length });
      } catch (e) {
        this.env.log.warn("cannot zero a deleted volume's extents; retried in a second", { volume: r.volume_uuid, drive: r.drive_uuid, error: (e as Error).message });
      }
    }
  }

  private async claim(cluster_uuid: string): Promise<void> {
    for (const l of this.links) {
      const s = l.session;
      if (s === null) continue;
      for (const d of l.drives) {
        if (d.state !== "ok" || d.cluster_uuid !== NIL_UUID) continue;
        try {
          await withTimeout(this.env, s.claim(uuidFromString(d.drive_uuid), cluster_uuid), CLAIM_TIMEOUT_MS, `claim drive ${d.drive_uuid}`);
          l.patchDrive({ ...d, cluster_uuid });
          this.claim_errors.delete(d.drive_uuid);
          this.env.log.info("claimed drive for the TOMA cluster", { drive: d.drive_uuid, target: l.address, cluster: cluster_uuid });
        } catch (e) {
          this.claim_errors.set(d.drive_uuid, `claim failed: ${(e as Error).message}`);
        }
      }
    }
  }
}
