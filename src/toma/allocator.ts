/**
 * Decides where a new volume's extents go. Pure: the state and the live topology in, columns or a
 * refusal out. The proposer runs it and puts the result in the CreateVolume command, because where
 * drives live (their target) is runtime knowledge that apply() must not depend on.
 */
import { physicalBytes } from "../engine/layout/planner.ts";
import type { Column, RaidLevel } from "../engine/layout/types.ts";
import {
  type ClusterState,
  type DriveRecord,
  type RefusalCode,
  isValidStripeSize,
  usedExtents,
  VOLUME_NAME_RE,
} from "./cluster-state.ts";

export const DEFAULT_STRIPE_SIZE_BYTES = 64 * 1024;

export interface VolumeRequest {
  name: string;
  capacity_bytes: number;
  raid_level: RaidLevel;
  /** RAID0: number of columns; defaults to every usable drive. Must be absent for concatenated. */
  stripe_width?: number;
  /** RAID0: chunk size; defaults to 64 KiB. */
  stripe_size_bytes?: number;
  /** RAID1/RAID10: copies of each block, 2 (default) or 3. */
  mirrors?: number;
  /** Let two legs of a mirror set share a server (never a drive). Off by default. */
  allow_same_server?: boolean;
  /** Debug format: the columns hold 4 × capacity_bytes (docs/debug-format.md). */
  debug_format?: boolean;
}

export interface Allocation {
  stripe_width: number;
  mirrors: number;
  stripe_size_bytes: number;
  extent_size_bytes: number;
  columns: Column[];
}

export interface Topology {
  /** Drives that may receive extents now (reachable, healthy). Others are skipped. */
  usable: ReadonlySet<string>;
  /** Drive uuid → the target serving it, to spread RAID0 columns across servers. */
  target_of: ReadonlyMap<string, string>;
}

export type AllocResult = { ok: true; alloc: Allocation } | { ok: false; code: RefusalCode; error: string };

interface Candidate {
  drive: DriveRecord;
  free: number[];
  target: string;
}

function refuse(code: RefusalCode, error: string): AllocResult {
  return { ok: false, code, error };
}

/** The free extents of every drive, lowest first. */
export function freeExtents(state: ClusterState): Map<string, number[]> {
  const used = usedExtents(state);
  const out = new Map<string, number[]>();
  for (const d of state.drives) {
    const u = used.get(d.drive_uuid)!;
    const free: number[] = [];
    for (let e = 0; e < d.extent_count; e++) if (!u.has(e)) free.push(e);
    out.set(d.drive_uuid, free);
  }
  return out;
}

export function allocate(state: ClusterState, req: VolumeRequest, topo: Topology): AllocResult {
  if (!VOLUME_NAME_RE.test(req.name)) {
    return refuse("invalid", `bad volume name '${req.name}': use 1 to 64 of [A-Za-z0-9._-]`);
  }
  if (state.volumes.some((x) => x.name === req.name)) {
    return refuse("name_taken", `a volume named '${req.name}' already exists`);
  }
  if (!Number.isSafeInteger(req.capacity_bytes) || req.capacity_bytes <= 0 || req.capacity_bytes % 512 !== 0) {
    return refuse("invalid", `capacity_bytes must be a positive multiple of 512, got ${req.capacity_bytes}`);
  }
  // What the columns must hold: the capacity, or 4 × it for a debug-format volume.
  const cap = physicalBytes(req);
  if (!Number.isSafeInteger(cap)) return refuse("invalid", `capacity_bytes ${req.capacity_bytes} is too large for the debug format`);
  const free = freeExtents(state);
  const candidates: Candidate[] = state.drives
    .filter((d) => topo.usable.has(d.drive_uuid))
    .map((d) => ({ drive: d, free: free.get(d.drive_uuid)!, target: topo.target_of.get(d.drive_uuid) ?? d.drive_uuid }));
  if (candidates.length === 0) return refuse("no_space", "no usable drive: no drive of the cluster is reachable");

  // A volume has one extent size; mixed-geometry pools are split into groups, the roomiest first.
  const groups = new Map<number, Candidate[]>();
  for (const c of candidates) {
    const g = groups.get(c.drive.extent_size_bytes) ?? [];
    g.push(c);
    groups.set(c.drive.extent_size_bytes, g);
  }
  const ordered = [...groups.entries()].sort(
    (a, b) => freeBytes(b[1]) - freeBytes(a[1]) || a[0] - b[0],
  );

  const mirrored = req.raid_level === "1" || req.raid_level === "10";
  if (!mirrored && req.mirrors !== undefined && req.mirrors !== 1) {
    return refuse("invalid", "number of mirrors applies to raid levels 1 and 10 only");
  }
  if (mirrored) return allocateMirrored(cap, req, ordered);

  if (req.raid_level === "concatenated") {
    if (req.stripe_width !== undefined && req.stripe_width !== 1) {
      return refuse("invalid", "stripe_width applies to raid_level \"0\" only");
    }
    if (req.stripe_size_bytes !== undefined) {
      return refuse("invalid", "stripe_size_bytes applies to raid_level \"0\" only");
    }
    for (const [extent_size, group] of ordered) {
      const r = concatenated(cap, extent_size, group);
      if (r) return { ok: true, alloc: r };
    }
    const best = freeBytes(ordered[0]![1]);
    const debug = req.debug_format ? " (4 × the capacity: debug format)" : "";
    return refuse("no_space", `not enough free space: ${cap} bytes asked${debug}, at most ${best} free on usable drives`);
  }

  const stripe = req.stripe_size_bytes ?? DEFAULT_STRIPE_SIZE_BYTES;
  if (!isValidStripeSize(stripe)) {
    return refuse("invalid", `stripe_size_bytes must be a power of two multiple of 4096 (at most 1 GiB), got ${stripe}`);
  }
  const width = req.stripe_width ?? candidates.length;
  if (!Number.isSafeInteger(width) || width < 1) {
    return refuse("invalid", `stripe_width must be a positive integer, got ${req.stripe_width}`);
  }
  if (width > candidates.length) {
    return refuse("no_space", `stripe_width ${width} exceeds the ${candidates.length} usable drives`);
  }
  const column_bytes = Math.ceil(cap / width / stripe) * stripe;
  for (const [extent_size, group] of ordered) {
    const need = Math.ceil(column_bytes / extent_size);
    const chosen = spreadAcrossTargets(group.filter((c) => c.free.length >= need), width);
    if (chosen) {
      return {
        ok: true,
        alloc: {
          stripe_width: width,
          mirrors: 1,
          stripe_size_bytes: stripe,
          extent_size_bytes: extent_size,
          columns: chosen.map((c) => ({ drive_uuid: c.drive.drive_uuid, extents: c.free.slice(0, need) })),
        },
      };
    }
  }
  return refuse(
    "no_space",
    `not enough free space: RAID0 of width ${width} needs ${width} drives with ${column_bytes} free bytes each`,
  );
}

function freeBytes(group: Candidate[]): number {
  return group.reduce((n, c) => n + c.free.length * c.drive.extent_size_bytes, 0);
}

/** Most free drive first, so that successive volumes land on the emptiest drives. */
function byFreeDesc(a: Candidate, b: Candidate): number {
  return b.free.length - a.free.length || (a.drive.drive_uuid < b.drive.drive_uuid ? -1 : 1);
}

function concatenated(cap: number, extent_size: number, group: Candidate[]): Allocation | null {
  let remaining = Math.ceil(cap / extent_size);
  const columns: Column[] = [];
  for (const c of [...group].sort(byFreeDesc)) {
    if (remaining === 0) break;
    const take = Math.min(remaining, c.free.length);
    if (take === 0) continue;
    columns.push({ drive_uuid: c.drive.drive_uuid, extents: c.free.slice(0, take) });
    remaining -= take;
  }
  if (remaining > 0) return null;
  return { stripe_width: columns.length, mirrors: 1, stripe_size_bytes: 0, extent_size_bytes: extent_size, columns };
}

/**
 * Picks `width` drives, round-robin over targets (each target's roomiest drive first), so that
 * columns sit on as many distinct servers as possible.
 */
function spreadAcrossTargets(eligible: Candidate[], width: number): Candidate[] | null {
  if (eligible.length < width) return null;
  const perTarget = new Map<string, Candidate[]>();
  for (const c of [...eligible].sort(byFreeDesc)) {
    const list = perTarget.get(c.target) ?? [];
    list.push(c);
    perTarget.set(c.target, list);
  }
  const queues = [...perTarget.values()].sort((a, b) => byFreeDesc(a[0]!, b[0]!));
  const chosen: Candidate[] = [];
  while (chosen.length < width) {
    for (const q of queues) {
      const c = q.shift();
      if (c && chosen.length < width) chosen.push(c);
    }
  }
  return chosen;
}

/**
 * RAID1 (one mirror set) and RAID10 (stripe_width sets): every leg is a column of its own drive;
 * the legs of one set sit on distinct servers unless allow_same_server, and never share a drive.
 */
function allocateMirrored(cap: number, req: VolumeRequest, ordered: [number, Candidate[]][]): AllocResult {
  const mirrors = req.mirrors ?? 2;
  if (!Number.isSafeInteger(mirrors) || mirrors < 2 || mirrors > 3) {
    return refuse("invalid", `number of mirrors must be 2 or 3, got ${req.mirrors}`);
  }
  const raid1 = req.raid_level === "1";
  if (raid1 && req.stripe_width !== undefined && req.stripe_width !== 1) {
    return refuse("invalid", "a RAID1 volume has one mirror set: use --raid-level 10 to stripe");
  }
  if (raid1 && req.stripe_size_bytes !== undefined) return refuse("invalid", "stripe_size_bytes applies to raid levels 0 and 10");
  const width = raid1 ? 1 : (req.stripe_width ?? 2);
  if (!Number.isSafeInteger(width) || width < 1) return refuse("invalid", `stripe_width must be a positive integer, got ${req.stripe_width}`);
  const stripe = raid1 ? 0 : (req.stripe_size_bytes ?? DEFAULT_STRIPE_SIZE_BYTES);
  if (!raid1 && !isValidStripeSize(stripe)) {
    return refuse("invalid", `stripe_size_bytes must be a power of two multiple of 4096 (at most 1 GiB), got ${stripe}`);
  }
  const leg_bytes = raid1 ? cap : Math.ceil(cap / width / stripe) * stripe;
  let why = `${width * mirrors} drives with ${leg_bytes} free bytes each are needed`;
  for (const [extent_size, group] of ordered) {
    const need = Math.ceil(leg_bytes / extent_size);
    const eligible = group.filter((c) => c.free.length >= need);
    const sets = placeSets(eligible, width, mirrors, req.allow_same_server ?? false);
    if (typeof sets === "string") {
      why = sets;
      continue;
    }
    return {
      ok: true,
      alloc: {
        stripe_width: width,
        mirrors,
        stripe_size_bytes: stripe,
        extent_size_bytes: extent_size,
        columns: sets.flat().map((c) => ({ drive_uuid: c.drive.drive_uuid, extents: c.free.slice(0, need) })),
      },
    };
  }
  return refuse("no_space", `cannot place ${mirrors} copies of ${width} set(s): ${why}`);
}

/** Chooses the legs of each set: each set's legs from distinct servers, roomiest first. */
function placeSets(eligible: Candidate[], width: number, mirrors: number, sameServer: boolean): Candidate[][] | string {
  const left = [...eligible].sort(byFreeDesc);
  const sets: Candidate[][] = [];
  for (let s = 0; s < width; s++) {
    const legs: Candidate[] = [];
    for (const c of left) {
      if (legs.length === mirrors) break;
      if (!sameServer && legs.some((l) => l.target === c.target)) continue;
      legs.push(c);
    }
    if (legs.length < mirrors) {
      const servers = new Set(left.map((c) => c.target)).size;
      return sameServer
        ? `only ${left.length} drives with enough free space are left for set ${s}`
        : `set ${s} needs ${mirrors} servers with a free drive, only ${servers} have one (allow_same_server places legs on one server)`;
    }
    for (const l of legs) left.splice(left.indexOf(l), 1);
    sets.push(legs);
  }
  return sets;
}

/**
 * A blank replacement for leg `column` of a mirrored volume: a usable drive the volume does not
 * use yet, with as many free extents as the leg, on a server none of the set's other legs is on
 * when there is one. Null when no drive qualifies.
 */
export function allocateLeg(
  state: ClusterState,
  vol: { columns: Column[]; mirrors: number; extent_size_bytes: number },
  column: number,
  topo: Topology,
  exclude: ReadonlySet<string>,
): Column | null {
  const need = vol.columns[column]!.extents.length;
  const set = Math.floor(column / vol.mirrors);
  const siblings = vol.columns.slice(set * vol.mirrors, (set + 1) * vol.mirrors).filter((_, i) => i !== column % vol.mirrors);
  const busyServers = new Set(siblings.map((c) => topo.target_of.get(c.drive_uuid)).filter((t) => t !== undefined));
  const inUse = new Set(vol.columns.map((c) => c.drive_uuid));
  const free = freeExtents(state);
  const fits = state.drives
    .filter((d) => topo.usable.has(d.drive_uuid) && !exclude.has(d.drive_uuid) && !inUse.has(d.drive_uuid))
    .filter((d) => d.extent_size_bytes === vol.extent_size_bytes && free.get(d.drive_uuid)!.length >= need)
    .sort((a, b) => free.get(b.drive_uuid)!.length - free.get(a.drive_uuid)!.length || (a.drive_uuid < b.drive_uuid ? -1 : 1));
  const best = fits.find((d) => !busyServers.has(topo.target_of.get(d.drive_uuid)!)) ?? fits[0];
  return best ? { drive_uuid: best.drive_uuid, extents: free.get(best.drive_uuid)!.slice(0, need) } : null;
}
