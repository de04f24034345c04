/**
 * A volume as a block device on the client: volume I/O planned onto drive segments and sent
 * straight to the targets, in parallel. It is a DriveStore like any drive, so the NBD export (and
 * the conformance suite) treat it the same way.
 *
 * Failure policy: a lost target connection, or a drive that moved, is retried against fresh
 * locations from the TOMA until io_timeout_ms has passed (like multipath's queue_if_no_path with a
 * bound); then the I/O fails with EIO. Block writes are idempotent, so a retried write is safe.
 * Errors the target reports about the request itself (out of range, drive I/O error) fail at once.
 */
import type { Env } from "../env.ts";
import { limitSegments, physicalBytes, plan, type Segment, volumeDrives } from "../layout/planner.ts";
import type { AttachInfo, VolumeLayout } from "../layout/types.ts";
import { checkRange, DriveIoError, type DriveStore, rangeRefused } from "../drive/store.ts";
import { MAX_IO_BYTES, Status } from "../wire/header.ts";
import { TargetError, type TargetSession } from "../wire/session-api.ts";
import { plantedBugs } from "../planted-bugs.ts";
import { CacheWatch, LOST_WRITES } from "./cache-watch.ts";
import type { LegWriter } from "./leg-writer.ts";
import { MirrorIo } from "./mirror-io.ts";

const RAID_NAME: Record<VolumeLayout["raid_level"], string> = {
  concatenated: "concatenated",
  "0": "RAID0",
  "1": "RAID1",
  "10": "RAID10",
};
import { NoRouteError, type TargetPool } from "./target-pool.ts";

export interface VolumeDeviceOptions {
  /** Asks the TOMA where the volume's drives are now (and its topology). */
  refresh: () => Promise<AttachInfo>;
  /** Mirrored volumes: tells the TOMA a leg failed for us. */
  report: (column: number, error: string) => void;
  io_timeout_ms: number;
}

type DriveOp = (s: TargetSession, drive: Uint8Array, seg: Segment) => Promise<unknown>;

function retryable(e: unknown): boolean {
  // REFUSED: fenced (not registered yet on a restarted target, or an older generation): the
  // refresh registers us again.
  if (e instanceof TargetError) return e.status === Status.NO_SUCH_DRIVE || e.status === Status.BUSY || e.status === Status.REFUSED;
  // Connection lost, no route, connect refused: the target may come back or move.
  return !(e instanceof DriveIoError);
}

const done = (): void => {};

/** The bytes of buf a segment covers; buf itself when it covers all of it (the common case). */
function part(buf: Uint8Array, g: Segment): Uint8Array {
  return g.request_offset === 0 && g.length === buf.length ? buf : buf.subarray(g.request_offset, g.request_offset + g.length);
}

export class VolumeDevice implements DriveStore {
  readonly describe: string;
  readonly size_bytes: number;
  private layout: VolumeLayout;
  private generation: number;
  private topology_generation: number;
  /** Mirrored volumes only: the topology-aware data path. */
  private readonly mirror: MirrorIo | null;
  private refreshing: Promise<void> | null = null;
  private closed = false;
  /** Per drive: acknowledged writes whose durability a later flush must vouch for. */
  private readonly watches = new Map<string, CacheWatch>();
  /** Flushes invoked so far: orders them against loss reports (cache-watch.ts). */
  private flushesInvoked = 0;

  constructor(
    private readonly env: Env,
    private readonly pool: TargetPool,
    info: AttachInfo,
    private readonly opts: VolumeDeviceOptions,
  ) {
    this.layout = info.layout;
    this.generation = info.generation;
    this.topology_generation = info.topology_generation;
    // A debug-format volume's address space here is its physical one (debug-volume.ts maps it).
    this.size_bytes = physicalBytes(info.layout);
    this.describe = `nvmesh volume ${info.layout.name} (${RAID_NAME[info.layout.raid_level]})`;
    pool.setLocations(info.drives);
    this.mirror =
      info.layout.mirrors > 1
        ? new MirrorIo(env, pool, info, {
            refresh: () => this.refresh(),
            report: opts.report,
            io_timeout_ms: opts.io_timeout_ms,
          })
        : null;
  }

  /** A newer view from the TOMA: locations, generation, and for mirrors the topology. */
  install(info: AttachInfo): void {
    if (info.generation < this.generation) return;
    this.pool.setLocations(info.drives);
    this.generation = info.generation;
    this.topology_generation = info.topology_generation;
    this.mirror?.install(info);
  }

  /** Resolves once no I/O planned with a topology older than the volume's current one is in flight. */
  /** The drives of the current layout (status output). */
  drives(): string[] {
    return volumeDrives(this.layout);
  }

  drained(): Promise<void> {
    return this.mirror ? this.mirror.drained(this.mirror.topologyGeneration) : Promise.resolve();
  }

  get name(): string {
    return this.layout.name;
  }

  private check(offset: number, length: number): void {
    checkRange(this, this.closed, offset, length);
  }

  /** One refresh at a time, shared by every I/O that needs it. */
  private refresh(): Promise<void> {
    if (!this.refreshing) {
      this.refreshing = this.opts
        .refresh()
        .then((info) => this.install(info))
        .catch((e) => this.env.log.warn("cannot refresh volume locations", { volume: this.name, error: String(e) }))
        .finally(() => {
          this.refreshing = null;
        });
    }
    return this.refreshing;
  }

  private watch(drive_uuid: string): CacheWatch {
    let w = this.watches.get(drive_uuid);
    if (!w) {
      w = new CacheWatch();
      this.watches.set(drive_uuid, w);
    }
    return w;
  }

  /**
   * The segment's op on the drive's live session if there is one: that session's promise with one
   * failure handler (no async frame: nearly every I/O of a busy volume takes this path), falling
   * into the retry loop when the failure may pass.
   */
  private withRetry(drive_uuid: string, seg: Segment, op: DriveOp, writes = false): Promise<void> {
    const fast = this.pool.cached(drive_uuid);
    if (!fast) return this.retrying(drive_uuid, seg, op);
    let p: Promise<unknown>;
    try {
      p = op(fast, this.pool.driveId(drive_uuid), seg);
    } catch (e) {
      p = Promise.reject(e);
    }
    return p.then(done, (e: unknown) => {
      if (!retryable(e)) throw this.ioError(e);
      if (writes && plantedBugs.ack_on_connection_loss) return;
      return this.retrying(drive_uuid, seg, op);
    });
  }

  /** The segment's op until it succeeds, fails for good, or the drive stays unreachable too long. */
  private async retrying(drive_uuid: string, seg: Segment, op: DriveOp): Promise<void> {
    const drive = this.pool.driveId(drive_uuid);
    // Elapsed time is measured by a timer, never by comparing clock readings: a clock that jumps
    // forward must not fail I/O early, nor one that jumps back make it wait for an hour.
    let expired = false;
    const timer = this.env.timers.after(this.opts.io_timeout_ms, () => {
      expired = true;
    });
    try {
      let backoff_ms = 20;
      for (;;) {
        if (this.closed) throw new DriveIoError("volume detached", "ECLOSED");
        try {
          await op(await this.pool.sessionFor(drive_uuid), drive, seg);
          return;
        } catch (e) {
          if (!retryable(e)) throw this.ioError(e);
          if (expired) {
            throw new DriveIoError(`drive ${drive_uuid} unreachable for ${this.opts.io_timeout_ms} ms: ${String(e)}`, "EIO");
          }
          if (!(e instanceof NoRouteError)) this.env.log.debug("retrying drive I/O", { drive: drive_uuid, error: String(e) });
        }
        await new Promise<void>((r) => this.env.timers.after(backoff_ms, r));
        backoff_ms = Math.min(backoff_ms * 2, 1000);
        await this.refresh();
      }
    } finally {
      timer.cancel();
    }
  }

  private ioError(e: unknown): Error {
    if (e instanceof DriveIoError) return e;
    if (e instanceof TargetError && e.status === Status.OUT_OF_RANGE) {
      // The layout pointed outside a drive: a bug or a corrupt layout, never the user's range.
      return new DriveIoError(`target refused range: ${e.message}`, "EIO");
    }
    return new DriveIoError(e instanceof Error ? e.message : String(e), "EIO");
  }

  private each(offset: number, length: number, op: DriveOp, writes = false): Promise<void> {
    let segs: Segment[];
    try {
      segs = limitSegments(plan(this.layout, offset, length), MAX_IO_BYTES);
    } catch (e) {
      return Promise.reject(e);
    }
    if (writes && plantedBugs.skip_segment && segs.length > 1) segs = segs.slice(0, 1);
    if (segs.length === 1) return this.withRetry(segs[0]!.drive_uuid, segs[0]!, op, writes);
    return Promise.all(segs.map((s) => this.withRetry(s.drive_uuid, s, op, writes))).then(done);
  }

  /** Not async: a read of one segment is the session's own promise (see withRetry). */
  read(offset: number, dst: Uint8Array): Promise<void> {
    const bad = rangeRefused(this, this.closed, offset, dst.length);
    if (bad !== null) return bad;
    if (dst.length === 0) return Promise.resolve();
    if (this.mirror) return this.mirror.read(offset, dst);
    return this.each(offset, dst.length, (s, d, g) => s.read(d, g.drive_offset, part(dst, g)));
  }

  /** Not async either: a single-segment write is the session's promise and one settle step. */
  write(offset: number, src: Uint8Array, fua: boolean): Promise<void> {
    const bad = rangeRefused(this, this.closed, offset, src.length);
    if (bad !== null) return bad;
    if (src.length === 0) return Promise.resolve();
    if (this.mirror) return this.mirror.write(offset, src, fua);
    if (fua) return this.each(offset, src.length, (s, d, g) => s.write(d, g.drive_offset, part(src, g), true), true);
    return this.counted((acks) => this.each(offset, src.length, (s, d, g) => s.write(d, g.drive_offset, part(src, g), false).then(acks(g)), true));
  }

  /**
   * A volatile write (or write-zeroes), counted in each drive's CacheWatch when the whole of it
   * completes: a flush covers the writes completed before it. A part acknowledged under an epoch
   * its drive has left since (its cache was lost while the rest of the write was retried) is
   * written again first: the write is not acknowledged yet, so it is still ours to repair. Counted
   * as it was, the next flush failed with EIO for a loss that never reached the caller (simulator
   * seed 1747 with --mirror, a striped volume).
   */
  private counted(run: (acks: (g: Segment) => (epoch: number) => void) => Promise<void>): Promise<void> {
    const acks: [string, number][] = [];
    return run((g) => (epoch) => {
      this.watch(g.drive_uuid).seen(epoch);
      acks.push([g.drive_uuid, epoch]);
    }).then(() => {
      if (!plantedBugs.ignore_cache_epoch && acks.some(([d, e]) => this.watch(d).outdated(e))) {
        this.env.log.debug("a drive may have lost part of a write while it completed: writing it again", { volume: this.name });
        return this.counted(run);
      }
      for (const [drive, epoch] of acks) this.watch(drive).acked(epoch);
    });
  }

  /** Copies of each block: the mirror's legs per set, 1 unmirrored. */
  get leg_count(): number {
    return this.layout.mirrors;
  }

  /** A write whose bytes are made per piece and leg when it is planned (debug-volume.ts). */
  async writeLegs(offset: number, length: number, fua: boolean, legs: LegWriter): Promise<void> {
    this.check(offset, length);
    if (length === 0) return;
    if (this.mirror) return await this.mirror.writeLegs(offset, length, fua, legs);
    // One copy: planned once, for the whole write, then it goes through the planner as any write.
    const bytes = legs.plan({ request_offset: 0, length, topology: null, generation: this.topology_generation }).bytes(0, false);
    await this.write(offset, bytes, fua);
  }

  async writeZeroes(offset: number, length: number, fua: boolean): Promise<void> {
    this.check(offset, length);
    if (length === 0) return;
    if (this.mirror) return await this.mirror.writeZeroes(offset, length, fua);
    if (fua) await this.each(offset, length, (s, d, g) => s.writeZeroes(d, g.drive_offset, g.length, true));
    else await this.counted((acks) => this.each(offset, length, (s, d, g) => s.writeZeroes(d, g.drive_offset, g.length, false).then(acks(g))));
  }

  async trim(offset: number, length: number): Promise<void> {
    this.check(offset, length);
    if (length === 0) return;
    if (this.mirror) return await this.mirror.trim(offset, length);
    await this.each(offset, length, (s, d, g) => s.trim(d, g.drive_offset, g.length));
  }

  /**
   * Flushes every drive of the volume: what makes NBD multi-conn safe. Fails with EIO when a drive
   * may have lost writes it had acknowledged (see cache-watch.ts), once for those writes.
   */
  async flush(): Promise<void> {
    if (this.closed) throw new DriveIoError("volume detached", "ECLOSED");
    if (this.mirror) {
      const m = this.mirror;
      return await m.flush(++this.flushesInvoked, () => m.reported(this.flushesInvoked));
    }
    const none: Segment = { column: 0, drive_uuid: "", drive_offset: 0, length: 0, request_offset: 0 };
    const lost: string[] = [];
    const no = ++this.flushesInvoked;
    const drives = volumeDrives(this.layout);
    await Promise.all(
      drives.map((u) => {
        const w = this.watch(u);
        const mark = w.mark(no);
        return this.withRetry(u, { ...none, drive_uuid: u }, async (s, d) => {
          const epoch = await s.flush(d);
          w.seen(epoch);
          if (w.flushed(mark, epoch) && !plantedBugs.ignore_cache_epoch) lost.push(u);
        });
      }),
    );
    if (lost.length > 0) {
      for (const u of lost) this.watch(u).reported(this.flushesInvoked);
      this.env.log.error("acknowledged writes may have been lost", { volume: this.name, drives: lost });
      throw new DriveIoError(`flush of ${this.name}: drive ${lost.join(", ")}: ${LOST_WRITES}`, "EIO");
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    this.mirror?.close();
  }

  get topologyGeneration(): number {
    return this.generation;
  }
}
