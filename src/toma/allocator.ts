/**
 * Decides where a new volume's extents go. Pure: the state and the live topology in, columns or a
 * refusal out. The proposer runs it and puts the result in the CreateVolume command, because where
 * drives live (their target) is runtime knowledge that apply() must not depend on.
 */
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
}

export interface Allocation {
  stripe_width: number;
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
  const cap = req.capacity_bytes;
  if (!Number.isSafeInteger(cap) || cap <= 0 || cap % 512 !== 0) {
    return refuse("invalid", `capacity_bytes must be a positive multiple of 512, got ${cap}`);
  }
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
    return refuse("no_space", `not enough free space: ${cap} bytes asked, at most ${best} free on usable drives`);
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
  return { stripe_width: columns.length, stripe_size_bytes: 0, extent_size_bytes: extent_size, columns };
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
