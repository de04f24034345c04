/**
 * Each TOMA's duty for its own server's drives: every second, claim for the cluster the drives
 * its target(s) serve that belong to no cluster yet (CLAIM, as the single TOMA does), and report
 * them all to the leader (drive-pool.ts); the leader's answer, the whole pool, replaces what this
 * TOMA shows. The leader reports to itself and adds the reported drives to the state
 * (volume-ops.ts).
 *
 * The extents a deleted volume leaves retired are zeroed and released by the leader's mirror
 * control (leader-control.ts), once each drive confirmed a fence table without the volume: a
 * client may hold it attached, so zeroing without that confirmation could be overtaken by its
 * last writes.
 *
 * CLAIM carries no control-plane version (a target gates only what changes data, locks and
 * fences): a TOMA that left the cluster could still claim a blank drive of its own server for the
 * cluster it believes in. That marks a blank drive, holding no data, as the cluster's; the leader
 * adds it only when a member reports it.
 */
import type { Env, TimerHandle } from "../../engine/env.ts";
import { steadyClock } from "../../engine/steady-clock.ts";
import { NIL_UUID, uuidFromString } from "../../engine/uuid.ts";
import * as v from "valibot";
import { type TargetLink, withTimeout } from "../target-link.ts";
import { type DrivePool, type DriveReport, REPORT_EVERY_MS, ReportAnswerSchema, type ReportedDrive } from "./drive-pool.ts";
import type { TomaNode } from "./node.ts";
import { type Homing, homedCall } from "../homing.ts";
import type { HeardClient } from "./client-hearing.ts";
import type { RebuildJob, RebuildOrder } from "./rebuild-wire.ts";

const CLAIM_TIMEOUT_MS = 5000;

export class DriveReporter {
  private timer: TimerHandle | null = null;
  private busy = false;
  private readonly clock;
  /** Why the last report did not reach the leader (null: it did). */
  last_error: string | null = null;
  /** Claims that failed, by drive, with the reason (shown by drive show). */
  readonly claim_errors = new Map<string, string>();

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
    /** Every TOMA's management address: where a TOMA that knows no leader sends its report. */
    peers: readonly string[],
    /** The client daemons this TOMA heard lately (client-hearing.ts), carried by each report. */
    private readonly heardClients: () => HeardClient[] = () => [],
    /** The rebuild copies this TOMA runs for the leader (rebuild-runner.ts): reported, and ordered by the answer. */
    private readonly rebuilds: { report(): RebuildJob[]; ordered(orders: readonly RebuildOrder[]): void } | null = null,
    /** The fence table each own drive confirmed of this TOMA's pushes (local-fences.ts). */
    private readonly fenceOf: (drive_uuid: string) => ReportedDrive["fence"] | null = () => null,
  ) {
    this.clock = steadyClock(env.clock);
    this.homing = homedCall(env, peers, (address, _method, _path, body) => this.send(address, body as DriveReport), {
      who: "drive report",
      // Every TOMA is among `peers`; and a GET of the cluster through `send` would POST no report.
      learn_peers: false,
    });
  }

  private readonly homing: Homing;

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
            ...fenceField(this.fenceOf(d.drive_uuid)),
          })),
    );
  }

  /**
   * A report now (a drive confirmed a new fence table: the leader waits for that news), or as
   * soon as the one under way is answered.
   */
  kick(): void {
    if (this.busy) this.kicked = true;
    else void this.round();
  }

  private kicked = false;

  private async round(): Promise<void> {
    if (this.busy) return;
    const view = this.node.view();
    if (view.phase === "stopped") return;
    this.busy = true;
    try {
      // Claiming for a cluster is a member's act; reporting is not: a TOMA outside the cluster
      // (amnesic, not yet added) still tells the leader where its server's drives are served, or
      // nobody would find a live target whose TOMA cannot take part.
      const member = view.phase === "running" && view.cluster_uuid !== null && view.membership !== "none";
      if (member) await this.claim(view.cluster_uuid!);
      const heard = this.heardClients();
      const jobs = this.rebuilds?.report() ?? [];
      const report: DriveReport = { server: this.name, drives: this.own(), ...(heard.length > 0 ? { clients: heard } : {}), ...(jobs.length > 0 ? { rebuilds: jobs } : {}) };
      this.pool.report(report);
      if (member && view.role === "leader") {
        // The leader copies its own drives' legs itself: nothing ordered to it stands.
        this.rebuilds?.ordered([]);
        this.last_error = null;
        return this.reported();
      }
      const started = this.clock.now_ms();
      // To the leader as this TOMA knows it; else through the peers, following their 421.
      const lead = member ? this.node.leader() : null;
      const raw = lead && lead.address !== "" ? await this.send(lead.address, report) : await this.homing.call("POST", "", report);
      const answer = v.safeParse(ReportAnswerSchema, raw);
      if (!answer.success) throw new Error(`the leader answered a pool view that is not valid: ${answer.issues[0]!.message}`);
      // Ages as of the answer's arrival: the round trip is added, never a remote timestamp.
      const rtt = this.clock.now_ms() - started;
      this.pool.adopt({ servers: answer.output.servers.map((s) => ({ ...s, heard_ms_ago: s.heard_ms_ago + Math.round(rtt) })) }, this.name);
      this.rebuilds?.ordered(answer.output.rebuild_orders ?? []);
      this.last_error = null;
    } catch (e) {
      this.last_error = (e as Error).message;
      this.env.log.debug("drive report to the leader failed", { error: this.last_error });
    } finally {
      this.busy = false;
      if (this.kicked) {
        this.kicked = false;
        void this.round();
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

function fenceField(f: ReportedDrive["fence"] | null): { fence?: NonNullable<ReportedDrive["fence"]> } {
  return f ? { fence: { version: f.version, generation: f.generation, table: f.table } } : {};
}
