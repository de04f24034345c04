/**
 * Decides where a new volume's extents go. Pure: the state and the live topology in, columns or a
 * refusal out. The proposer runs it and puts the result in the CreateVolume command, because where
 * drives live (their target) is runtime knowledge that apply() must not depend on.
 */
import { physicalBytes } from "../engine/layout/planner.ts";
import type { RaidLevel } from "../engine/layout/types.ts";
import {
  type ClusterState,
  type Command,
  type DriveRecord,
  type RefusalCode,
  isValidStripeSize,
  usedExtents,
  VOLUME_NAME_RE,
  type Column,
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

/** The command that creates the volume `req` asks for, as `uuid`, where `alloc` placed it. */
export function createVolumeCommand(uuid: string, req: VolumeRequest, alloc: Allocation): Extract<Command, { kind: "create_volume" }> {
  return {
    kind: "create_volume",
    uuid,
    name: req.name,
    capacity_bytes: req.capacity_bytes,
    raid_level: req.raid_level,
    ...alloc,
    ...(req.debug_format ? { debug_format: true } : {}),
  };
}

export interface Topology {
  /** Drives that may receive extents now (reachable, healthy). Others are skipped. */
  usable: ReadonlySet<string>;
  /** Drive uuid → the target serving it, to spread RAID0 columns across servers. */
  target_of: ReadonlyMap<string, string>;
}

/**
 * Why a volume that is valid does not fit, for the message and for tests: the layout needs more
 * drives or servers than the cluster has, whatever their free space ("drives"); the drives are
 * there but not with one extent size, which a volume needs ("geometry"); or they are there and
 * too full ("space").
 */
export type ShortfallReason = "drives" | "geometry" | "space";

export type AllocResult =
  | { ok: true; alloc: Allocation }
  | { ok: false; code: RefusalCode; error: string; reason?: ShortfallReason };

interface Candidate {
  drive: DriveRecord;
  free: number[];
  target: string;
}

/** A layout's rules for its columns, whatever the drives: what allocate() places and measures. */
interface Shape {
  /** "a 2G RAID1 volume (2 copies)", for messages. */
  what: string;
  /** The drives it needs, in words, for messages: "2 drives on different servers". */
  needs: string;
  stripe_width: number;
  mirrors: number;
  stripe_size_bytes: number;
  /** Bytes every column holds. */
  column_bytes: number;
  /** Picks the columns' drives (in column order) among drives that all have room, or says why not. */
  place(eligible: Candidate[]): Candidate[] | string;
  /** The most bytes of columns' address space (4 × the capacity in debug format) that fit when
   * each column may take `extents` extents of `extent_size`. */
  physicalIn(extents: number, extent_size: number): number;
}

function refuse(code: RefusalCode, error: string): AllocResult {
  return { ok: false, code, error };
}

function short(reason: ShortfallReason, error: string): AllocResult {
  return { ok: false, code: "no_space", error, reason };
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
    return refuse("name_taken", `a volume named '${req.name}' already exists: choose another name (or delete that volume first)`);
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

  const shape = shapeOf(req, cap, candidates.length);
  if ("invalid" in shape) return refuse("invalid", shape.invalid);
  if (candidates.length === 0) {
    return refuse("no_space", state.drives.length === 0
      ? "the cluster has no drives yet: serve formatted drives with 'nvmesh target serve' and give their targets to the TOMA"
      : `no usable drive: none of the cluster's ${state.drives.length} drives is reachable ('nvmesh drive show' says why)`);
  }

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
  const pool = { ordered, candidates, unreachable: state.drives.length - candidates.length };

  if ("concatenated" in shape) {
    for (const [extent_size, group] of ordered) {
      const r = concatenated(cap, extent_size, group);
      if (r) return { ok: true, alloc: r };
    }
    return concatenatedShortfall(req, pool);
  }
  for (const [extent_size, group] of ordered) {
    const need = Math.ceil(shape.column_bytes / extent_size);
    const chosen = shape.place(group.filter((c) => c.free.length >= need));
    if (typeof chosen === "string") continue;
    return {
      ok: true,
      alloc: {
        stripe_width: shape.stripe_width,
        mirrors: shape.mirrors,
        stripe_size_bytes: shape.stripe_size_bytes,
        extent_size_bytes: extent_size,
        columns: chosen.map((c) => ({ drive_uuid: c.drive.drive_uuid, extents: c.free.slice(0, need) })),
      },
    };
  }
  return shortfall(req, cap, shape, pool);
}

/**
 * Checks the request's layout parameters and says what its columns need; or that it is
 * concatenated (its columns are as many and as long as the free space makes them); or why the
 * request is invalid.
 */
function shapeOf(req: VolumeRequest, cap: number, usable_drives: number): Shape | { concatenated: true } | { invalid: string } {
  const mirrored = req.raid_level === "1" || req.raid_level === "10";
  if (!mirrored && req.mirrors !== undefined && req.mirrors !== 1) {
    return { invalid: "number of mirrors applies to raid levels 1 and 10 only" };
  }
  if (req.raid_level === "concatenated") {
    if (req.stripe_width !== undefined && req.stripe_width !== 1) return { invalid: "stripe_width applies to raid_level \"0\" only" };
    if (req.stripe_size_bytes !== undefined) return { invalid: "stripe_size_bytes applies to raid_level \"0\" only" };
    return { concatenated: true };
  }
  const raid1 = req.raid_level === "1";
  if (raid1 && req.stripe_width !== undefined && req.stripe_width !== 1) {
    return { invalid: "a RAID1 volume has one mirror set: use --raid-level 10 to stripe" };
  }
  if (raid1 && req.stripe_size_bytes !== undefined) return { invalid: "stripe_size_bytes applies to raid levels 0 and 10" };
  const stripe = raid1 ? 0 : (req.stripe_size_bytes ?? DEFAULT_STRIPE_SIZE_BYTES);
  if (!raid1 && !isValidStripeSize(stripe)) {
    return { invalid: `stripe_size_bytes must be a power of two multiple of 4096 (at most 1 GiB), got ${stripe}` };
  }
  // RAID0 stripes over every usable drive unless told; RAID10 over 2 mirror sets.
  const width = raid1 ? 1 : (req.stripe_width ?? (mirrored ? 2 : Math.max(1, usable_drives)));
  if (!Number.isSafeInteger(width) || width < 1) return { invalid: `stripe_width must be a positive integer, got ${req.stripe_width}` };
  // A column holds whole stripe units; RAID1's one set is as long as the volume.
  const columnBytes = (physical: number) => (raid1 ? physical : Math.ceil(physical / width / stripe) * stripe);
  const physicalIn = (extents: number, extent_size: number) =>
    raid1 ? extents * extent_size : width * stripe * Math.floor((extents * extent_size) / stripe);

  if (!mirrored) {
    return {
      what: volumeWords(req, "RAID0", ` striped over ${width} drives`),
      needs: `${width} drives`,
      stripe_width: width,
      mirrors: 1,
      stripe_size_bytes: stripe,
      column_bytes: columnBytes(cap),
      place: (eligible) => spreadAcrossTargets(eligible, width) ?? `only ${eligible.length} drives qualify`,
      physicalIn,
    };
  }
  const mirrors = req.mirrors ?? 2;
  if (!Number.isSafeInteger(mirrors) || mirrors < 2 || mirrors > 3) {
    return { invalid: `number of mirrors must be 2 or 3, got ${req.mirrors}` };
  }
  const sameServer = req.allow_same_server ?? false;
  const where = sameServer ? "" : " on different servers";
  return {
    what: raid1 ? volumeWords(req, "RAID1", ` (${mirrors} copies)`) : volumeWords(req, "RAID10", ` (${width} mirror sets of ${mirrors} copies)`),
    needs: raid1 ? `${mirrors} drives${where}` : `${width * mirrors} drives, each set's ${mirrors} copies${where}`,
    stripe_width: width,
    mirrors,
    stripe_size_bytes: stripe,
    column_bytes: columnBytes(cap),
    place: (eligible) => {
      const sets = placeSets(eligible, width, mirrors, sameServer);
      return typeof sets === "string" ? sets : sets.flat();
    },
    physicalIn,
  };
}

interface Pool {
  /** The usable drives by extent size, the roomiest group first. */
  ordered: [number, Candidate[]][];
  candidates: Candidate[];
  /** Drives of the cluster that are not usable now. */
  unreachable: number;
}

/**
 * Why a striped or mirrored volume does not fit, with the numbers to act on: how many drives and
 * servers it needs against what the cluster has, or the largest volume of this layout that fits.
 */
function shortfall(req: VolumeRequest, cap: number, shape: Shape, pool: Pool): AllocResult {
  const has = `the cluster has ${drivesOn(pool.candidates)}${unreachableNote(pool.unreachable)}`;
  // Every drive of a group eligible (free space ignored): does the layout fit its drives at all?
  const roomy = pool.ordered.filter(([, g]) => typeof shape.place(g) !== "string");
  if (roomy.length === 0) {
    if (pool.ordered.length > 1 && typeof shape.place(pool.candidates) !== "string") {
      return short("geometry", `${shape.what} needs ${shape.needs}, all of one extent size; ${has}: ${geometries(pool.ordered)}. ${fixes(lighter(req, cap, shape, pool), "drives formatted with one --extent-size")}`);
    }
    return short("drives", `${shape.what} needs ${shape.needs}; ${has}. ${fixes(lighter(req, cap, shape, pool), "add drives")}`);
  }
  let best = 0;
  for (const [extent_size, group] of roomy) {
    const n = mostExtentsPerColumn(group, shape);
    best = Math.max(best, shape.physicalIn(n, extent_size));
  }
  return short("space", noRoom(shape.what, req.debug_format === true, logical(req, best), pool));
}

function concatenatedShortfall(req: VolumeRequest, pool: Pool): AllocResult {
  const what = volumeWords(req, "concatenated", "");
  const best = Math.max(...pool.ordered.map(([, g]) => freeBytes(g)));
  const total = freeBytes(pool.candidates);
  if (pool.ordered.length > 1 && total >= physicalBytes(req)) {
    return short("geometry", `${what} takes the extents of one extent size, and the free space is split between ${geometries(pool.ordered)}: at most ${exactSize(logical(req, best))} fits on one kind; use drives formatted with one --extent-size`);
  }
  return short("space", noRoom(what, req.debug_format === true, logical(req, best), pool));
}

function noRoom(what: string, debug_format: boolean, most: number, pool: Pool): string {
  const fits = most > 0 ? `at most ${exactSize(most)} fits in this layout` : "nothing fits in this layout";
  const debug = debug_format ? " (the debug format stores 4 × the capacity)" : "";
  return `not enough free space for ${what}: ${fits}${debug}, ${exactSize(freeBytes(pool.candidates))} is free on the usable drives${unreachableNote(pool.unreachable)}. Ask for less, or add drives ('nvmesh drive show' lists each drive's free extents)`;
}

/**
 * The most extents per column the layout can place in this group: placement succeeds for every
 * count up to it and fails above (the drives with room for n+1 are a subset of those with room
 * for n, and they sort first, so the greedy placement only loses options as n grows).
 */
function mostExtentsPerColumn(group: Candidate[], shape: Shape): number {
  let lo = 0; // fits (the caller checked the group's drives take the layout)
  let hi = Math.max(...group.map((c) => c.free.length)) + 1; // does not fit
  while (hi - lo > 1) {
    const mid = Math.floor((lo + hi) / 2);
    if (typeof shape.place(group.filter((c) => c.free.length >= mid)) === "string") hi = mid;
    else lo = mid;
  }
  return lo;
}

/** The volume capacity whose columns take `physical` bytes (debug format: a quarter), in sectors. */
function logical(req: VolumeRequest, physical: number): number {
  const ratio = physicalBytes({ capacity_bytes: 1, debug_format: req.debug_format });
  return Math.floor(physical / ratio / 512) * 512;
}

/** "a RAID1 volume of 2G (2 copies)", "a debug-format concatenated volume of 1G" */
function volumeWords(req: VolumeRequest, level: string, detail: string): string {
  return `a ${req.debug_format ? "debug-format " : ""}${level} volume of ${exactSize(req.capacity_bytes)}${detail}`;
}

/** "Use fewer copies (--number-of-mirrors 2), copies on one server (--allow-same-server), or add drives" */
function fixes(options: string[], last: string): string {
  if (options.length === 0) return `${last[0]!.toUpperCase()}${last.slice(1)}`;
  const use = `Use ${options.join(", ")}`;
  return last === "add drives" ? `${use}, or add drives` : `${use}, or ${last}`;
}

/**
 * The changes to the request, each alone, that would let its layout take the drives of one extent
 * size (free space aside), in the words of the CLI's flags.
 */
function lighter(req: VolumeRequest, cap: number, shape: Shape, pool: Pool): string[] {
  const fits = (r: VolumeRequest) => {
    const s = shapeOf(r, cap, pool.candidates.length);
    return "place" in s && pool.ordered.some(([, g]) => typeof s.place(g) !== "string");
  };
  const out: string[] = [];
  if (req.raid_level === "0" || req.raid_level === "10") {
    // No width above the drive count (per set, for RAID10) can fit: start the search there.
    const top = Math.min(shape.stripe_width - 1, Math.floor(pool.candidates.length / shape.mirrors));
    for (let w = top; w >= 1; w--) {
      if (fits({ ...req, stripe_width: w })) {
        out.push(w === 1 ? "--stripe-width 1" : `--stripe-width ${w} or less`);
        break;
      }
    }
  }
  if (shape.mirrors > 2 && fits({ ...req, mirrors: 2 })) out.push("2 copies (--number-of-mirrors 2)");
  if (shape.mirrors > 1 && !req.allow_same_server && fits({ ...req, allow_same_server: true })) {
    out.push("copies on one server (--allow-same-server)");
  }
  return out;
}

/** "3 usable drives on 2 servers" */
function drivesOn(drives: Candidate[]): string {
  const servers = new Set(drives.map((c) => c.target)).size;
  return `${drives.length} usable drive${drives.length === 1 ? "" : "s"} on ${servers} server${servers === 1 ? "" : "s"}`;
}

function unreachableNote(n: number): string {
  return n === 0 ? "" : ` (and ${n} unreachable drive${n === 1 ? "" : "s"})`;
}

/** "2 drives of 16M extents and 1 of 64M" */
function geometries(ordered: [number, Candidate[]][]): string {
  const parts = [...ordered].sort((a, b) => a[0] - b[0]).map(([e, g], i) => `${g.length}${i === 0 ? ` drive${g.length === 1 ? "" : "s"} of` : " of"} ${exactSize(e)} extents`);
  return parts.slice(0, -1).join(", ") + " and " + parts.at(-1);
}

/**
 * Bytes in the largest unit that divides them exactly ("720M", "229888K"), so that a size the
 * message offers can be given back to --capacity as it is and fits (a rounded "224.5M" might not).
 */
export function exactSize(n: number): string {
  for (const [u, f] of [["T", 2 ** 40], ["G", 2 ** 30], ["M", 2 ** 20], ["K", 2 ** 10]] as const) {
    if (n >= f && n % f === 0) return `${n / f}${u}`;
  }
  return `${n} bytes`;
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
 * Chooses the legs of each set, roomiest first; or says which set could not be placed.
 */
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
    if (legs.length < mirrors) return `set ${s} found ${legs.length} of its ${mirrors} legs`;
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
