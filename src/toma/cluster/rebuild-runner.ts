/**
 * A server's TOMA copying the rebuilding legs the leader handed to it (rebuild-orders.ts): each
 * order names a syncing leg whose drive this server's target serves. The copy is the single
 * TOMA's (rebuild.ts copyLeg: the same dirty bits, the same lock on the source, the same
 * LOSSY_COPY rule); it reads the source leg over a session to the source's target and writes the
 * leg through a session to the own target, both opened for that order alone (HELLO as role toma
 * under `<toma id>/rebuild/<owner>`, so that they supersede neither this TOMA's own sessions,
 * which write its hard state, nor another order's).
 *
 * Every request carries the order's lock owner id and control-plane version, never this TOMA's
 * applied one: once the leader's version on a drive passed the order's, the drive refuses the
 * copy (it may have been taken back and its locks freed). A copy is abandoned when its order is
 * no longer in the leader's answer, when the applied topology of the volume moved past the
 * order's, or when a later term began. Its job is reported with each drive report until the
 * leader drops the order.
 */
import type { Env } from "../../engine/env.ts";
import { sleep } from "../../engine/env.ts";
import { steadyClock } from "../../engine/steady-clock.ts";
import type { TargetSession } from "../../engine/wire/session-api.ts";
import { BITMAP_REGION_BYTES } from "../../engine/drive/superblock.ts";
import type { ClusterState, VolumeRecord } from "../cluster-state.ts";
import { RangeClaims } from "../range-claims.ts";
import { copyLeg, LegUnavailable, type RebuildProgress } from "../rebuild.ts";
import { type Connect, DEFAULT_LINK_TIMINGS, TargetLink } from "../target-link.ts";
import type { DrivePool } from "./drive-pool.ts";
import { MAX_REBUILD_JOBS, type RebuildJob, type RebuildOrder } from "./rebuild-wire.ts";

/** Opens a session to a target under `<toma id>/rebuild/<tag>`. */
export type RebuildConnect = (address: string, tag: string) => Promise<TargetSession>;

/** What the runner reads of this TOMA's consensus member: the term it is in and the state it applied. */
export interface AppliedView {
  term(): number | null;
  state(): ClusterState | null;
}

/** How long a copy waits for its sessions to come up before it fails. */
const LINK_WAIT_MS = 2 * DEFAULT_LINK_TIMINGS.request_timeout_ms;
const LINK_POLL_MS = 50;
/** How long an order may wait for this TOMA to apply its term and topology before it fails. */
const PENDING_MS = 2000;

interface Run {
  order: RebuildOrder;
  state: RebuildJob["state"];
  progress: RebuildProgress;
  from_epoch: number | null;
  error: string | null;
  /** The leader's answer no longer carries the order. */
  withdrawn: boolean;
  running: boolean;
}

export class RebuildRunner {
  /** By owner id (one per order). */
  private readonly runs = new Map<number, Run>();
  private readonly claims = new RangeClaims();
  private stopped = false;
  /** Orders not applicable here yet (owner id → when first seen, steady clock). */
  private readonly pending = new Map<number, number>();
  private readonly clock;

  constructor(
    private readonly env: Env,
    private readonly node: AppliedView,
    private readonly pool: DrivePool,
    /** This server's own target(s), as the member reaches them: which drives are ours. */
    private readonly own: readonly TargetLink[],
    private readonly connect: RebuildConnect,
    private readonly pause_ms: number,
  ) {
    this.clock = steadyClock(env.clock);
  }

  /** The leader's orders for this server, as its last answer carried them. */
  ordered(orders: readonly RebuildOrder[]): void {
    if (this.stopped) return;
    const live = new Set(orders.map((o) => o.owner_id));
    for (const id of [...this.pending.keys()]) if (!live.has(id)) this.pending.delete(id);
    for (const [id, r] of [...this.runs]) {
      if (live.has(id)) continue;
      r.withdrawn = true;
      if (!r.running) this.runs.delete(id);
    }
    for (const o of orders) if (!this.runs.has(o.owner_id) && this.runs.size < MAX_REBUILD_JOBS) this.start(o);
  }

  /** Every job still known, for the next report. */
  report(): RebuildJob[] {
    return [...this.runs.values()].map((r) => ({
      volume_uuid: r.order.volume_uuid,
      column: r.order.column,
      topology_seq: r.order.topology_seq,
      term: r.order.term,
      owner_id: r.order.owner_id,
      state: r.state,
      done_bytes: r.progress.done_bytes,
      total_bytes: r.progress.total_bytes,
      from_epoch: r.from_epoch,
      error: r.error === null ? null : r.error.slice(0, 1024),
    }));
  }

  stop(): void {
    this.stopped = true;
    for (const r of this.runs.values()) r.withdrawn = true;
  }

  /** Whether the order still stands here: not withdrawn, same term, the volume at its topology. */
  private current(r: Run): boolean {
    if (this.stopped || r.withdrawn || this.node.term() !== r.order.term) return false;
    const vol = this.node.state()?.volumes.find((x) => x.uuid === r.order.volume_uuid);
    return vol !== undefined && vol.topology_seq === r.order.topology_seq;
  }

  private start(o: RebuildOrder): void {
    const fail = (error: string) => this.runs.set(o.owner_id, { order: o, state: "failed", progress: { done_bytes: 0, total_bytes: 0 }, from_epoch: null, error, withdrawn: false, running: false });
    const term = this.node.term();
    const vol = this.node.state()?.volumes.find((x) => x.uuid === o.volume_uuid);
    // Said at once, so that the leader copies the leg itself without waiting for our silence.
    if (term === null) return void fail("this TOMA is not running in the cluster (starting, outside, or waiting for its own drives)");
    if (term < o.term || (vol !== undefined && vol.topology_seq < o.topology_seq)) {
      // Not applied here yet (the order's term or topology): taken up at a later answer, for a while.
      const first = this.pending.get(o.owner_id) ?? this.clock.now_ms();
      this.pending.set(o.owner_id, first);
      if (this.clock.now_ms() - first > PENDING_MS) fail(`this TOMA has not applied term ${o.term} and topology ${o.topology_seq} within ${PENDING_MS} ms of the order`);
      return;
    }
    this.pending.delete(o.owner_id);
    if (term > o.term) return void fail(`ordered in term ${o.term}, this TOMA is in term ${term}`);
    if (!vol || vol.topology_seq > o.topology_seq) return void fail(`the volume's topology moved past ${o.topology_seq}`);
    const dst = vol.columns[o.column]?.drive_uuid;
    const src = vol.columns[o.source]?.drive_uuid;
    if (dst === undefined || src === undefined || vol.legs[o.column] !== "syncing" || vol.legs[o.source] !== "ok") return void fail(`leg ${o.column} is not syncing from an ok leg ${o.source}`);
    const here = this.own.find((l) => l.session !== null && l.drives.some((d) => d.drive_uuid === dst));
    if (!here) return void fail(`drive ${dst} is not served by this server's target(s)`);
    const there = this.pool.locate(src);
    if (!there) return void fail(`no server reports the source drive ${src}`);
    const r: Run = { order: o, state: "running", progress: { done_bytes: 0, total_bytes: 0 }, from_epoch: null, error: null, withdrawn: false, running: true };
    this.runs.set(o.owner_id, r);
    this.env.log.info("rebuild copy started for the leader", { volume: vol.name, column: o.column, source: o.source, owner: o.owner_id });
    void this.copy(r, vol, here.address, there.drive.target, src, dst)
      .then(() => {
        if (!this.current(r)) throw new LegUnavailable("the order no longer stands");
        r.state = "done";
        this.env.log.info("rebuild copy done for the leader", { volume: vol.name, column: o.column, bytes: r.progress.done_bytes });
      })
      .catch((e) => {
        r.state = "failed";
        r.error = (e as Error).message;
        this.env.log.warn("rebuild copy for the leader ended unfinished; it resumes from the dirty bits", { volume: vol.name, column: o.column, error: r.error });
      })
      .finally(() => {
        r.running = false;
        if (r.withdrawn) this.runs.delete(o.owner_id);
      });
  }

  private async copy(r: Run, vol: VolumeRecord, dstTarget: string, srcTarget: string, src: string, dst: string): Promise<void> {
    const o = r.order;
    const tag = o.owner_id.toString(16);
    const links = new Map<string, TargetLink>();
    for (const a of [dstTarget, srcTarget]) if (!links.has(a)) links.set(a, new TargetLink(this.env, a, (x) => this.connect(x, tag), DEFAULT_LINK_TIMINGS));
    for (const l of links.values()) l.start();
    try {
      const srcLink = links.get(srcTarget)!;
      const dstLink = links.get(dstTarget)!;
      const serves = (l: TargetLink, d: string) => l.session !== null && l.drives.some((x) => x.drive_uuid === d);
      for (let waited = 0; !(serves(srcLink, src) && serves(dstLink, dst)); waited += LINK_POLL_MS) {
        if (waited >= LINK_WAIT_MS) throw new LegUnavailable(`no session serving drive ${serves(srcLink, src) ? dst : src} within ${LINK_WAIT_MS} ms`);
        if (!this.current(r)) throw new LegUnavailable("the order no longer stands");
        await sleep(this.env, LINK_POLL_MS);
      }
      // The sessions the copy started on, and no other: a session lost midway ends the copy.
      const sessions = new Map<string, [TargetLink, TargetSession]>([
        [src, [srcLink, srcLink.session!]],
        [dst, [dstLink, dstLink.session!]],
      ]);
      const epochOf = (d: string) => sessions.get(d)?.[0].drives.find((x) => x.drive_uuid === d)?.cache_epoch;
      const startEpoch = epochOf(src);
      await copyLeg(
        {
          env: this.env,
          sessionOf: (d) => {
            const at = sessions.get(d);
            if (!at || at[0].session !== at[1]) return null;
            at[1].client_id = o.owner_id;
            at[1].generation = o.version;
            return at[1];
          },
          regionBytes: () => BITMAP_REGION_BYTES,
          pause_ms: this.pause_ms,
          owner_id: o.owner_id,
          claims: this.claims,
          lossy: (d) => {
            const epoch = epochOf(d);
            return epoch === undefined || epoch !== this.node.state()?.drives.find((x) => x.drive_uuid === d)?.cache_epoch;
          },
        },
        vol,
        o.column,
        o.source,
        o.clear_bits,
        r.progress,
        () => !this.current(r),
      );
      const endEpoch = epochOf(src);
      if (startEpoch !== undefined && endEpoch === startEpoch) r.from_epoch = startEpoch;
    } finally {
      for (const l of links.values()) l.stop();
    }
  }
}
