/**
 * Each TOMA's own drives' fence tables (DESIGN.md §9, local duties): every member, leader or
 * not, keeps the fence table of every drive its own target(s) serve equal to the table its
 * applied replicated state says (fencing.ts stateFenceTable), pushed over its own session,
 * stamped with that state's control-plane version (TomaNode.appliedVersion). It pushes whenever
 * the table it derives changes (a newly applied state) and whenever the session to its target is
 * new (a restarted target forgets its table), and remembers which version each drive confirmed:
 * its drive reports say so (drive-reporter.ts), and the leader counts on them
 * (docs/toma-cluster.md, "Each TOMA's own drives").
 *
 * Why two pushers are harmless (this TOMA and, for a silent TOMA's drives, the leader): both push
 * tables derived from committed states only, and a table is a pure function of the state, so at
 * one version both push the same table; a target refuses a version older than the newest it has
 * seen (STALE), so an older state's table never lands over a newer one's. A lagging member's push
 * refused STALE is no news: it pushes again once it applied more. Sans-I/O: time, timers and the
 * sessions come from Env and the links.
 */
import type { Env, TimerHandle } from "../../engine/env.ts";
import { steadyClock } from "../../engine/steady-clock.ts";
import { uuidFromString } from "../../engine/uuid.ts";
import { Status } from "../../engine/wire/header.ts";
import { TargetError, type TargetSession } from "../../engine/wire/session-api.ts";
import type { ClusterState } from "../cluster-state.ts";
import { type FenceTable, stateFenceDrives, stateFenceTable, tableDigest } from "../fencing.ts";
import { type TargetLink, withTimeout } from "../target-link.ts";

/** How often the applied state and the links are looked at (a change is pushed within this). */
export const LOCAL_FENCE_EVERY_MS = 100;
/** Every own drive's table is pushed again this often, changed or not (as the leader's FenceSync does). */
const REPUSH_EVERY_MS = 1000;
/** A push not answered within this is abandoned and tried again. */
const PUSH_TIMEOUT_MS = 5000;

/** What a drive confirmed: the table (its digest) of the state of this version and generation. */
export interface ConfirmedFence {
  version: number;
  generation: number;
  table: string;
}

export interface LocalFenceDeps {
  env: Env;
  /** The applied state and its control-plane version; null before the first one. */
  applied: () => { state: ClusterState; version: number } | null;
  /** The own target(s): the drives they serve are this TOMA's. */
  links: readonly TargetLink[];
}

interface Held {
  session: TargetSession;
  key: string;
  fence: ConfirmedFence;
}

export class LocalFences {
  private readonly held = new Map<string, Held>();
  /** Drives that refused our version STALE: not asked again at that version. */
  private readonly refused = new Map<string, number>();
  private timer: TimerHandle | null = null;
  private running = false;
  private again = false;
  private stopped = false;
  /** What the last pass that settled every drive saw (state, version, each link's session and drives). */
  private settled: unknown[] | null = null;
  /** A push of the current pass failed (not STALE): the next pass tries again. */
  private failed = false;
  private settled_at = -Infinity;
  private readonly clock;

  /** Called when a drive confirmed a new table (the drive report goes out at once). */
  onConfirmed: (() => void) | null = null;

  constructor(private readonly deps: LocalFenceDeps) {
    this.clock = steadyClock(deps.env.clock);
  }

  start(): void {
    this.timer = this.deps.env.timers.every(LOCAL_FENCE_EVERY_MS, () => void this.sync());
  }

  stop(): void {
    this.stopped = true;
    this.timer?.cancel();
  }

  /**
   * What the drive confirmed of this TOMA's pushes, while that is still the table the applied
   * state says, over the session serving it now; null otherwise.
   */
  confirmed(drive_uuid: string): ConfirmedFence | null {
    const a = this.deps.applied();
    const h = this.held.get(drive_uuid);
    if (!a || !h || this.sessionOf(drive_uuid) !== h.session) return null;
    return h.key === JSON.stringify(stateFenceTable(a.state, drive_uuid)) ? h.fence : null;
  }

  /** One pass over the own drives; a call while one runs makes it run again. */
  async sync(): Promise<void> {
    if (this.running) {
      this.again = true;
      return;
    }
    this.running = true;
    try {
      do {
        this.again = false;
        await this.pass();
      } while (this.again && !this.stopped);
    } finally {
      this.running = false;
    }
  }

  private async pass(): Promise<void> {
    const a = this.deps.applied();
    if (!a || this.stopped) return;
    // Nothing changed since a pass that left every drive settled: nothing to push.
    // Every REPUSH_EVERY_MS anyway: a drive pulled and plugged back into the same target between
    // two polls comes back with an empty table over the same session, which nothing else reveals.
    const seen = [a.state, a.version, ...this.deps.links.flatMap((l) => [l.session, l.drives])];
    const now = this.clock.now_ms();
    if (now - this.settled_at < REPUSH_EVERY_MS && this.settled !== null && seen.length === this.settled.length && seen.every((x, i) => x === this.settled![i])) return;
    const again = now - this.settled_at >= REPUSH_EVERY_MS;
    this.settled = null;
    this.failed = false;
    const wanted = stateFenceDrives(a.state);
    const work: Promise<void>[] = [];
    for (const l of this.deps.links) {
      const s = l.session;
      if (s === null) continue;
      for (const d of l.drives) {
        if (d.state !== "ok" || d.cluster_uuid !== a.state.cluster_uuid || !wanted.has(d.drive_uuid)) continue;
        work.push(this.syncDrive(s, d.drive_uuid, a.state, a.version, again));
      }
    }
    await Promise.all(work);
    if (!this.failed) {
      this.settled = seen;
      this.settled_at = now;
    }
  }

  private async syncDrive(s: TargetSession, drive_uuid: string, state: ClusterState, version: number, again: boolean): Promise<void> {
    const table = stateFenceTable(state, drive_uuid);
    const key = JSON.stringify(table);
    const h = this.held.get(drive_uuid);
    if (!again && h && h.session === s && h.key === key) return;
    if ((this.refused.get(drive_uuid) ?? -1) >= version) return;
    try {
      s.generation = version;
      await withTimeout(this.deps.env, push(s, drive_uuid, table), PUSH_TIMEOUT_MS, `fence table of drive ${drive_uuid}`);
      this.held.set(drive_uuid, { session: s, key, fence: { version, generation: state.generation, table: tableDigest(key) } });
      this.onConfirmed?.();
      this.refused.delete(drive_uuid);
    } catch (e) {
      this.held.delete(drive_uuid);
      if (e instanceof TargetError && e.status === Status.STALE) {
        // A newer state's table is there already (this TOMA lags, or the leader pushed for it).
        this.refused.set(drive_uuid, version);
        this.deps.env.log.debug("own drive's fence table: a newer version is there", { drive: drive_uuid, version, newest: e.version });
        return;
      }
      this.failed = true;
      this.deps.env.log.warn("cannot update the fence table of an own drive", { drive: drive_uuid, error: String(e) });
    }
  }

  private sessionOf(drive_uuid: string): TargetSession | null {
    for (const l of this.deps.links) if (l.session !== null && l.drives.some((d) => d.drive_uuid === drive_uuid)) return l.session;
    return null;
  }
}

function push(s: TargetSession, drive_uuid: string, table: FenceTable): Promise<void> {
  return s.fence(uuidFromString(drive_uuid), { replace: true, volumes: table.volumes, set: table.set, remove: [] });
}
