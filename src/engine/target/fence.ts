/**
 * Fencing (DESIGN.md §3): the one place where a data-path request is checked against what the
 * drive's TOMA said with FENCE. A drive's table has two parts:
 *
 * - **volumes**: which extents of this drive belong to which volume (uuid + incarnation). An
 *   extent belongs to at most one volume.
 * - **clients**: each registered client, the oldest topology generation it may still send, and
 *   the volumes it may reach on this drive.
 *
 * A client connection is bound at HELLO to one volume. A request on it passes only if its client
 * is registered here, its generation is not older than the client's minimum, the bound volume is
 * in the table with that incarnation and in the client's list, and its range lies inside the
 * volume's extents. So a client working from a stale topology can never write where the current
 * topology does not expect it, and no volume's client can ever read or write another volume's
 * extents: once a volume is deleted, its registrations are gone from every drive before its
 * extents can belong to anything else (docs/toma.md, "Deleting a volume").
 *
 * By the role the connection is served as (capability.ts: with a cluster key, the one the key it
 * proved gives): "toma" is the authority and is never fenced; "admin" may not
 * send data-path requests at all; "client" is checked when enforcement is on.
 *
 * Registrations live in RAM only: after a target restart (or the drive being unplugged and
 * plugged) every client is refused until its TOMA sends FENCE again.
 *
 * With enforcement on, FENCE is answered only once every client request that was admitted
 * before it and that its new table refuses has finished on the drive (AdmittedRequests); such
 * requests still waiting for a lock are failed REFUSED at once, holding nothing.
 */
import type { FenceRequest, HelloRequest, VolumeBinding } from "../wire/control.ts";
import { MAX_REGISTRATIONS } from "../wire/control.ts";
import { type Header, Op } from "../wire/header.ts";

export type Role = HelloRequest["role"];

interface ClientEntry {
  readonly min_generation: number;
  /** Volume uuids this client may reach on the drive. */
  readonly volumes: ReadonlySet<string>;
}

interface VolumeEntry {
  readonly incarnation: number;
  /** Byte ranges of the data area, [start, end) pairs flattened, sorted, adjacent ones merged. */
  readonly runs: readonly number[];
}

/** A client request counted on a drive while it executes, for a FENCE barrier to wait on. */
export class Admission {
  constructor(
    readonly client_id: number,
    readonly generation: number,
    readonly volume: VolumeBinding | null,
  ) {}
}

/**
 * One drive's fence table. Replaced wholesale by apply(), never mutated in place, so a check
 * reads one consistent table.
 */
export class DriveFence {
  private clients = new Map<number, ClientEntry>();
  private volumes = new Map<string, VolumeEntry>();
  /** Volume uuids whose entry the last apply() removed or changed (for its barrier). */
  private changed: ReadonlySet<string> = new Set();

  constructor(
    readonly drive_uuid: string,
    private readonly extent_size_bytes: number,
    private readonly extent_count: number,
  ) {}

  /** Registered clients (tests and status). */
  get size(): number {
    return this.clients.size;
  }

  /** Returns null when a client request may proceed, or the reason to answer REFUSED. */
  check(h: Header, role: Role, volume: VolumeBinding | null, enforce: boolean): string | null {
    if (role === "toma") return null;
    if (role === "admin") return `${Op[h.opcode]} is a data-path request, refused on an admin connection`;
    if (!enforce) return null;
    return this.refusal(h.client_id, h.generation, volume, h.opcode);
  }

  /**
   * What the table says of a client's request, for check() and for barred(): one rule for
   * admitting a request and for the FENCE that must wait for those it now refuses.
   */
  private refusal(client_id: number, generation: number, volume: VolumeBinding | null, opcode: number): string | null {
    const c = this.clients.get(client_id);
    if (c === undefined) return `client ${client_id} is not registered on drive ${this.drive_uuid}`;
    if (generation < c.min_generation) {
      return `generation ${generation} is older than ${c.min_generation}, the minimum for client ${client_id} on drive ${this.drive_uuid}`;
    }
    if (volume === null) return `${Op[opcode]} on a client connection bound to no volume: say HELLO with the volume it serves`;
    const v = this.volumes.get(volume.uuid);
    if (v === undefined || v.incarnation !== volume.incarnation) {
      return `volume ${volume.uuid} (incarnation ${volume.incarnation}) has no extents on drive ${this.drive_uuid}: deleted, or moved away`;
    }
    if (!c.volumes.has(volume.uuid)) return `client ${client_id} is not registered for volume ${volume.uuid} on drive ${this.drive_uuid}`;
    return null;
  }

  /**
   * Null when [offset, offset + length) lies inside one run of the bound volume's extents (a
   * zero-length range at a run's end included), else why not. Called after check() passed.
   */
  insideVolume(volume: VolumeBinding, offset: number, length: number): string | null {
    const v = this.volumes.get(volume.uuid);
    if (v !== undefined && insideRuns(v.runs, offset, length)) return null;
    return `range ${offset}+${length} of drive ${this.drive_uuid} is outside the extents of volume ${volume.uuid}`;
  }

  /**
   * Applies a FENCE body, all or nothing. Returns null, or why the body is refused (INVALID) with
   * the table unchanged.
   */
  apply(body: FenceRequest): string | null {
    const dropVolumes = new Set(body.remove_volumes);
    const volumes = body.replace ? new Map<string, VolumeEntry>() : new Map(this.volumes);
    for (const u of dropVolumes) volumes.delete(u);
    const given = new Set<string>();
    for (const fv of body.volumes) {
      if (dropVolumes.has(fv.volume_uuid)) return `volume ${fv.volume_uuid} is both given and removed`;
      if (given.has(fv.volume_uuid)) return `volume ${fv.volume_uuid} is given twice`;
      given.add(fv.volume_uuid);
      // A volume's incarnation is part of its identity: the same uuid never comes back as another.
      const held = this.volumes.get(fv.volume_uuid);
      if (held !== undefined && held.incarnation !== fv.incarnation) {
        return `volume ${fv.volume_uuid} is incarnation ${held.incarnation} here, not ${fv.incarnation}`;
      }
      const runs: [number, number][] = [];
      for (const [first, count] of fv.extents) {
        if (first + count > this.extent_count) {
          return `volume ${fv.volume_uuid}: extents ${first}..${first + count - 1} beyond the drive's ${this.extent_count}`;
        }
        runs.push([first * this.extent_size_bytes, (first + count) * this.extent_size_bytes]);
      }
      const merged = mergeRuns(runs);
      if (merged === null) return `volume ${fv.volume_uuid} names one extent twice`;
      volumes.set(fv.volume_uuid, { incarnation: fv.incarnation, runs: merged });
    }
    if (volumes.size > MAX_REGISTRATIONS) return `${volumes.size} volumes on one drive, at most ${MAX_REGISTRATIONS}`;
    const clash = overlapping(volumes);
    if (clash !== null) return clash;
    // An incarnation names one volume of the cluster (the generation that created it).
    const byIncarnation = new Map<number, string>();
    for (const [u, v] of volumes) {
      const other = byIncarnation.get(v.incarnation);
      if (other !== undefined) return `volumes ${other} and ${u} both say incarnation ${v.incarnation}`;
      byIncarnation.set(v.incarnation, u);
    }

    const removed = new Set(body.remove);
    for (const r of body.set) {
      if (removed.has(r.client_id)) return `client ${r.client_id} is both set and removed`;
    }
    const clients = body.replace ? new Map<number, ClientEntry>() : new Map(this.clients);
    for (const r of body.set) {
      for (const u of r.volumes) {
        if (!volumes.has(u)) return `client ${r.client_id} is given volume ${u}, which the table does not hold`;
      }
      const held = clients.get(r.client_id);
      // Raise only: a FENCE delayed behind a newer one must not reopen the door to old generations.
      const min_generation = held === undefined ? r.min_generation : Math.max(held.min_generation, r.min_generation);
      clients.set(r.client_id, { min_generation, volumes: new Set(r.volumes) });
    }
    for (const id of removed) clients.delete(id);
    // A client keeps no volume the table no longer holds.
    for (const [id, c] of clients) {
      if ([...c.volumes].some((u) => !volumes.has(u))) {
        clients.set(id, { min_generation: c.min_generation, volumes: new Set([...c.volumes].filter((u) => volumes.has(u))) });
      }
    }
    if (clients.size > MAX_REGISTRATIONS) {
      return `${clients.size} registrations on one drive, at most ${MAX_REGISTRATIONS}`;
    }
    const changed = new Set<string>();
    for (const [u, old] of this.volumes) {
      const now = volumes.get(u);
      if (now === undefined || !sameRuns(old.runs, now.runs)) changed.add(u);
    }
    this.clients = clients;
    this.volumes = volumes;
    this.changed = changed;
    return null;
  }

  /**
   * Whether the FENCE just applied must wait for (and fail the lock waits of) this admitted
   * request: the table refuses it now, or its volume's extents changed under it.
   */
  barred(a: Admission): boolean {
    // The opcode only names the request in a reason, which barred() does not show.
    return this.refusal(a.client_id, a.generation, a.volume, Op.WRITE) !== null || this.changed.has(a.volume!.uuid);
  }
}

/** Sorts and merges byte runs; null when two of them overlap (one extent named twice). */
function mergeRuns(runs: [number, number][]): number[] | null {
  const sorted = [...runs].sort((a, b) => a[0] - b[0]);
  const out: number[] = [];
  for (const [s, e] of sorted) {
    const n = out.length;
    if (n > 0 && s < out[n - 1]!) return null;
    if (n > 0 && s === out[n - 1]) out[n - 1] = e;
    else out.push(s, e);
  }
  return out;
}

function sameRuns(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

/** Why two volumes of the table share bytes of the drive, or null. */
function overlapping(volumes: Map<string, VolumeEntry>): string | null {
  const all: [number, number, string][] = [];
  for (const [u, v] of volumes) for (let i = 0; i < v.runs.length; i += 2) all.push([v.runs[i]!, v.runs[i + 1]!, u]);
  all.sort((a, b) => a[0] - b[0]);
  for (let i = 1; i < all.length; i++) {
    if (all[i]![0] < all[i - 1]![1]) return `volumes ${all[i - 1]![2]} and ${all[i]![2]} both claim bytes from ${all[i]![0]} of the drive`;
  }
  return null;
}

/** Whether [offset, offset + length) lies inside one [start, end) run (binary search). */
export function insideRuns(runs: readonly number[], offset: number, length: number): boolean {
  let lo = 0;
  let hi = runs.length / 2 - 1;
  let found = -1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    if (runs[2 * mid]! <= offset) {
      found = mid;
      lo = mid + 1;
    } else hi = mid - 1;
  }
  if (found < 0) return false;
  // Written so that offset + length is never computed: both are below 2^53 and so is the end.
  return length <= runs[2 * found + 1]! - offset;
}

/**
 * The client requests executing on one drive, so that a FENCE can wait for the ones its new table
 * bars: once FENCE is answered, no request the drive would now refuse is still running there (a
 * stale-lock recovery, a rebuild, or a new owner of a deleted volume's extents that follows cannot
 * be overtaken by a request of a fenced-out client or volume that was admitted just before).
 */
export class AdmittedRequests {
  private readonly running = new Set<Admission>();
  private waiters: { left: Set<Admission>; resolve: () => void }[] = [];

  enter(a: Admission): void {
    this.running.add(a);
  }

  leave(a: Admission): void {
    if (!this.running.delete(a) || this.waiters.length === 0) return;
    const still: typeof this.waiters = [];
    for (const w of this.waiters) {
      w.left.delete(a);
      if (w.left.size > 0) still.push(w);
      else w.resolve();
    }
    this.waiters = still;
  }

  /** Executing now (tests and status). */
  get count(): number {
    return this.running.size;
  }

  /**
   * Resolves once no request that `barred` names, executing now, is still executing; null when
   * there is none. New requests the table refuses are refused already, so the wait ends.
   */
  drain(barred: (a: Admission) => boolean): Promise<void> | null {
    const left = new Set<Admission>();
    for (const a of this.running) if (barred(a)) left.add(a);
    if (left.size === 0) return null;
    return new Promise((resolve) => this.waiters.push({ left, resolve }));
  }
}
