/**
 * The persisted cluster state and the commands that change it. The state only changes through
 * `apply(state, cmd)`, a pure function, so that the multi-TOMA issue can replicate the command log
 * unchanged. Anything non-deterministic (a new volume's uuid, where its extents go) is decided by
 * the proposer and carried *inside* the command; apply() only re-checks that it is admissible.
 *
 * The state is stored as CBOR in the metadata slot of every data drive. A slot's bytes are never
 * trusted: decodeState() validates every field and every cross-field invariant.
 */
import { encode } from "cbor-x";
import * as v from "valibot";
import { physicalBytes } from "../engine/layout/planner.ts";
import type { RaidLevel } from "../engine/layout/types.ts";
import { ExtentSet } from "./extent-set.ts";
import { expandAll, MAX_DECODED_EXTENTS, MAX_RUN_NUMBERS, toRuns } from "../engine/layout/extent-runs.ts";
import { parseCbor } from "./parse-cbor.ts";

/**
 * 2: every column's and retired list's extents as runs (extent-runs.ts). 1: as plain extent
 * lists, as nvmesh wrote them before; still read (a drive may hold one), never written.
 */
export const STATE_FORMAT = 2;
export const STATE_FORMATS_READ = [1, 2] as const;
export const VOLUME_NAME_RE = /^[A-Za-z0-9._-]{1,64}$/;

const Uuid = v.pipe(v.string(), v.regex(/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/));
const Count = v.pipe(v.number(), v.integer(), v.minValue(0), v.maxValue(Number.MAX_SAFE_INTEGER));
const Positive = v.pipe(Count, v.minValue(1));

export const DriveRecordSchema = v.strictObject({
  drive_uuid: Uuid,
  extent_size_bytes: Positive,
  extent_count: Count,
  /**
   * The drive's cache epoch as the cluster last accepted it (DriveInfo.cache_epoch). A drive that
   * comes back with another one may have lost cached writes (mirror-control.ts).
   */
  cache_epoch: v.optional(Count),
});
export type DriveRecord = v.InferOutput<typeof DriveRecordSchema>;

const ColumnSchema = v.strictObject({
  drive_uuid: Uuid,
  extents: v.array(Count),
});
/**
 * One column of a volume as the state holds it in memory: its plain extent list, which the
 * allocator and the topology index (runs only where it is encoded; a client's layout carries runs).
 */
export type Column = v.InferOutput<typeof ColumnSchema>;

/**
 * The persisted state of one mirror leg (one column of a mirrored volume); the roles clients use
 * are derived from it (topology.ts).
 *   ok: in sync (R/W/L).  dead: out of the mirror (its regions written meanwhile are dirty on the
 *   others).  syncing: being rebuilt, written but not read (W).  synced: rebuilt, written and
 *   locked but not yet read (W/L, the dual-lock step).  Unmirrored volumes: every column "ok".
 */
export const LegStateSchema = v.picklist(["ok", "dead", "syncing", "synced"]);
export type LegState = v.InferOutput<typeof LegStateSchema>;

export const VolumeRecordSchema = v.strictObject({
  uuid: Uuid,
  name: v.pipe(v.string(), v.regex(VOLUME_NAME_RE)),
  capacity_bytes: Positive,
  raid_level: v.picklist(["concatenated", "0", "1", "10"]),
  /** Number of columns (RAID10: of mirror sets); for "concatenated" how many drives it spans. */
  stripe_width: Positive,
  /** RAID0/RAID10 chunk size; 0 for "concatenated" and RAID1. */
  stripe_size_bytes: Count,
  extent_size_bytes: Positive,
  /** Mirrored: stripe_width * mirrors columns, each set's legs consecutive. */
  columns: v.array(ColumnSchema),
  /** Copies of each block (1 unmirrored, 2 or 3 for RAID1/RAID10). */
  mirrors: v.optional(Positive, 1),
  /** One per column. */
  legs: v.optional(v.array(LegStateSchema), []),
  /** A syncing leg on a blank drive must be copied whole (its dirty bits were all set). */
  rebuild_blank: v.optional(v.array(v.boolean()), []),
  /** Generation of the last change of its topology (creation, leg states, a replaced leg). */
  topology_seq: v.optional(Count, 0),
  /** Generation of the command that created it: the volume's topology generation for now. */
  created_seq: Positive,
  /**
   * Debug format (docs/debug-format.md): every 512-byte sector is stored as a 2048-byte debug
   * sector, so its columns hold 4 × capacity_bytes. Absent (false) in states written before it.
   */
  debug_format: v.optional(v.boolean(), false),
});
export type VolumeRecord = v.InferOutput<typeof VolumeRecordSchema>;

/**
 * Extents a volume gave up (deleted, or a mirror leg replaced) on a drive that has not yet
 * confirmed a fence table without that volume: a client of it may still reach them there, so
 * they belong to nothing else until the drive confirms (docs/toma.md, "Deleting a volume").
 */
export const RetiredSchema = v.strictObject({
  volume_uuid: Uuid,
  drive_uuid: Uuid,
  extents: v.array(Count),
});
export type Retired = v.InferOutput<typeof RetiredSchema>;

/**
 * A client daemon registered with a TOMA cluster (replicated, so that a new leader knows it:
 * docs/toma-cluster.md, "Clients in a TOMA cluster"). Its secret is never stored: any TOMA
 * derives it from the server key and the id (api-auth.ts clientSecret).
 */
export const ClientEntrySchema = v.strictObject({
  id: Positive,
  name: v.pipe(v.string(), v.maxLength(256)),
  /** Uuids of the volumes it attached, ascending. */
  volumes: v.array(Uuid),
  /**
   * Expired by the leader (silent past its timeout): left out of every fence table derived from
   * the state, so every TOMA fences it out of its own drives; removed once fenced out everywhere.
   * Absent (false) until then.
   */
  expired: v.optional(v.literal(true)),
});
export type ClientEntry = v.InferOutput<typeof ClientEntrySchema>;

export const ClusterStateSchema = v.strictObject({
  /** The format it was read in (STATE_FORMAT when built here); encodeState writes STATE_FORMAT. */
  format: v.picklist(STATE_FORMATS_READ),
  cluster_uuid: Uuid,
  /** Bumped by every applied command and by every rewrite; equals the metadata slot generation. */
  generation: Count,
  /**
   * The single TOMA's term: taken anew (+1) by every start of a TOMA before it acts, so its
   * control-plane version `term × 2^32 + generation` is above every version an earlier process
   * used (docs/toma.md, "Fenced at the drives"). Absent (0) in states written before it.
   */
  term: v.optional(Count, 0),
  drives: v.array(DriveRecordSchema),
  volumes: v.array(VolumeRecordSchema),
  /** Absent (empty) in states written before it, and whenever nothing is retired. */
  retired: v.optional(v.array(RetiredSchema), []),
  /**
   * The registered client daemons of a TOMA cluster (the single TOMA keeps its clients in memory:
   * always empty there). Absent (empty) in states written before it, and whenever there is none.
   */
  clients: v.optional(v.array(ClientEntrySchema), []),
  /**
   * A generation every registered client had acknowledged when a leader last proposed a command
   * (its stable generation then): what a new leader may assume of a client it has not heard
   * acknowledge yet. Absent (0) in the single TOMA's states and before it existed.
   */
  stable: v.optional(Count, 0),
});
export type ClusterState = v.InferOutput<typeof ClusterStateSchema>;

/** What a state holds on a drive, in either format; decodeState expands runs into extent lists. */
const RunList = v.pipe(v.array(Count), v.maxLength(MAX_RUN_NUMBERS));
const StateV1Schema = v.strictObject({ ...ClusterStateSchema.entries, format: v.literal(1) });
const StateV2Schema = v.strictObject({
  ...ClusterStateSchema.entries,
  format: v.literal(2),
  volumes: v.array(v.strictObject({ ...VolumeRecordSchema.entries, columns: v.array(v.strictObject({ drive_uuid: Uuid, runs: RunList })) })),
  retired: v.optional(v.array(v.strictObject({ volume_uuid: Uuid, drive_uuid: Uuid, runs: RunList })), []),
});
const StateWireSchema = v.variant("format", [StateV1Schema, StateV2Schema]);

export type Command =
  | { kind: "add_drive"; drive: DriveRecord }
  | {
      kind: "create_volume";
      uuid: string;
      name: string;
      capacity_bytes: number;
      raid_level: RaidLevel;
      stripe_width: number;
      stripe_size_bytes: number;
      extent_size_bytes: number;
      columns: Column[];
      mirrors: number;
      debug_format?: boolean;
    }
  /**
   * Volumes are named by uuid: a name can be deleted and taken again between two views.
   * `released`: drives that confirmed a fence table without the volume (and hold no lock of it):
   * its extents there are free at once. Its extents on every other drive are retired.
   */
  | { kind: "delete_volume"; uuid: string; released?: string[] }
  /** A drive confirmed a fence table without the volume: its retired extents there are free. */
  | { kind: "release_extents"; volume_uuid: string; drive_uuid: string }
  /** A topology step of a mirrored volume: new leg states (topology.ts checks adjacency). */
  | { kind: "set_legs"; uuid: string; legs: LegState[] }
  /** Puts a blank leg (new extents on another drive) in place of a dead one; it starts syncing. */
  | { kind: "replace_leg"; uuid: string; column: number; with: Column }
  /** Accepts a drive's new cache epoch, once whatever it may have lost is taken care of. */
  | { kind: "set_cache_epoch"; drive_uuid: string; cache_epoch: number }
  /** A client daemon registered with the leader under a new random id (TOMA cluster only). */
  | { kind: "register_client"; id: number; name: string }
  /** A registered client attached a volume (by uuid): the fences admit it there. */
  | { kind: "attach_client"; id: number; volume_uuid: string }
  /** A client left, or expired and was fenced out of every drive of its volumes. */
  | { kind: "remove_client"; id: number }
  /** A client no longer trusted (silent past its timeout): every fence table leaves it out. */
  | { kind: "expire_client"; id: number }
  /**
   * Changes nothing but the generation: it carries the proposer's stable generation (consensus/
   * proposal.ts), which every fence table takes as its clients' minimum (fencing.ts stateFenceTable).
   */
  | { kind: "note_stable" };

/** How many client daemons a TOMA cluster's state holds at most. */
export const MAX_CLIENTS = 256;

/** Why a command was refused; the API maps each code to an HTTP status. */
export type RefusalCode = "invalid" | "not_found" | "name_taken" | "no_space" | "in_use";
export type ApplyResult = { ok: true; state: ClusterState } | { ok: false; code: RefusalCode; error: string };

export function emptyState(cluster_uuid: string): ClusterState {
  return { format: STATE_FORMAT, cluster_uuid, generation: 0, term: 0, drives: [], volumes: [], retired: [], clients: [], stable: 0 };
}

function refuse(code: RefusalCode, error: string): ApplyResult {
  return { ok: false, code, error };
}

/** Applies one command; never mutates `state`. On refusal nothing changes. */
export function apply(state: ClusterState, cmd: Command): ApplyResult {
  const generation = state.generation + 1;
  switch (cmd.kind) {
    case "add_drive": {
      const bad = v.safeParse(DriveRecordSchema, cmd.drive);
      if (!bad.success) return refuse("invalid", `bad drive record: ${bad.issues[0]!.message}`);
      if (state.drives.some((d) => d.drive_uuid === cmd.drive.drive_uuid)) {
        return refuse("invalid", `drive ${cmd.drive.drive_uuid} is already part of the cluster`);
      }
      return { ok: true, state: { ...state, generation, drives: [...state.drives, { ...cmd.drive }] } };
    }
    case "delete_volume": {
      const vol = state.volumes.find((x) => x.uuid === cmd.uuid);
      if (!vol) return refuse("not_found", `no volume ${cmd.uuid}`);
      const released = new Set(cmd.released ?? []);
      const retired = [...state.retired, ...vol.columns.filter((c) => !released.has(c.drive_uuid)).map((c) => retire(vol, c))];
      // Its clients no longer have it attached: the fences leave them out of it.
      const clients = state.clients.map((c) => (c.volumes.includes(vol.uuid) ? { ...c, volumes: c.volumes.filter((u) => u !== vol.uuid) } : c));
      return { ok: true, state: { ...state, generation, volumes: state.volumes.filter((x) => x !== vol), retired, clients } };
    }
    case "release_extents": {
      const keep = state.retired.filter((r) => r.volume_uuid !== cmd.volume_uuid || r.drive_uuid !== cmd.drive_uuid);
      if (keep.length === state.retired.length) {
        return refuse("not_found", `no extents of volume ${cmd.volume_uuid} are retired on drive ${cmd.drive_uuid}`);
      }
      return { ok: true, state: { ...state, generation, retired: keep } };
    }
    case "create_volume": {
      const vol: VolumeRecord = {
        uuid: cmd.uuid,
        name: cmd.name,
        capacity_bytes: cmd.capacity_bytes,
        raid_level: cmd.raid_level,
        stripe_width: cmd.stripe_width,
        stripe_size_bytes: cmd.stripe_size_bytes,
        extent_size_bytes: cmd.extent_size_bytes,
        columns: cmd.columns.map((c) => ({ drive_uuid: c.drive_uuid, extents: [...c.extents] })),
        mirrors: cmd.mirrors,
        legs: cmd.columns.map(() => "ok" as const),
        rebuild_blank: cmd.columns.map(() => false),
        topology_seq: generation,
        created_seq: generation,
        debug_format: cmd.debug_format === true,
      };
      if (!VOLUME_NAME_RE.test(cmd.name)) {
        return refuse("invalid", `bad volume name '${cmd.name}': use 1 to 64 of [A-Za-z0-9._-]`);
      }
      if (state.volumes.some((x) => x.name === cmd.name)) {
        return refuse("name_taken", `a volume named '${cmd.name}' already exists`);
      }
      if (state.volumes.some((x) => x.uuid === cmd.uuid)) {
        return refuse("invalid", `volume uuid ${cmd.uuid} already in use`);
      }
      const why = extentsBeyondBound(state, vol.columns) ?? volumeProblem(state, vol);
      if (why) return refuse(why.code, why.error);
      return { ok: true, state: { ...state, generation, volumes: [...state.volumes, vol] } };
    }
    case "set_legs": {
      const i = state.volumes.findIndex((x) => x.uuid === cmd.uuid);
      if (i < 0) return refuse("not_found", `no volume ${cmd.uuid}`);
      const vol = state.volumes[i]!;
      if (vol.mirrors < 2) return refuse("invalid", `volume '${vol.name}' is not mirrored`);
      if (cmd.legs.length !== vol.columns.length) return refuse("invalid", `volume '${vol.name}' has ${vol.columns.length} legs`);
      const step = legStepProblem(vol, cmd.legs);
      if (step) return refuse("invalid", `volume '${vol.name}': ${step}`);
      // A blank leg stays blank until its copy is done (synced): one that fails while syncing and
      // comes back must be copied in full again, not from the source's dirty bits alone.
      const rebuild_blank = vol.rebuild_blank.map((b, c) => b && (cmd.legs[c] === "syncing" || cmd.legs[c] === "dead"));
      const next = { ...vol, legs: [...cmd.legs], rebuild_blank, topology_seq: generation };
      return { ok: true, state: { ...state, generation, volumes: state.volumes.with(i, next) } };
    }
    case "set_cache_epoch": {
      const i = state.drives.findIndex((d) => d.drive_uuid === cmd.drive_uuid);
      if (i < 0) return refuse("not_found", `drive ${cmd.drive_uuid} is not part of the cluster`);
      if (!v.is(Count, cmd.cache_epoch)) return refuse("invalid", `bad cache epoch ${cmd.cache_epoch}`);
      const drives = state.drives.with(i, { ...state.drives[i]!, cache_epoch: cmd.cache_epoch });
      return { ok: true, state: { ...state, generation, drives } };
    }
    case "register_client": {
      if (!v.is(Positive, cmd.id) || cmd.id > 2 ** 48) return refuse("invalid", `bad client id ${cmd.id}`);
      if (typeof cmd.name !== "string" || cmd.name.length > 256) return refuse("invalid", "bad client name");
      if (state.clients.some((c) => c.id === cmd.id)) return refuse("invalid", `client id ${cmd.id} is already registered`);
      if (state.clients.length >= MAX_CLIENTS) return refuse("no_space", `the cluster has ${MAX_CLIENTS} client daemons registered already`);
      return { ok: true, state: { ...state, generation, clients: [...state.clients, { id: cmd.id, name: cmd.name, volumes: [] }] } };
    }
    case "attach_client": {
      const i = state.clients.findIndex((c) => c.id === cmd.id);
      if (i < 0) return refuse("not_found", `client ${cmd.id} is not registered`);
      if (!state.volumes.some((x) => x.uuid === cmd.volume_uuid)) return refuse("not_found", `no volume ${cmd.volume_uuid}`);
      const c = state.clients[i]!;
      if (c.volumes.includes(cmd.volume_uuid)) return refuse("invalid", `client ${cmd.id} has volume ${cmd.volume_uuid} attached already`);
      const volumes = [...c.volumes, cmd.volume_uuid].sort();
      return { ok: true, state: { ...state, generation, clients: state.clients.with(i, { ...c, volumes }) } };
    }
    case "remove_client": {
      if (!state.clients.some((c) => c.id === cmd.id)) return refuse("not_found", `client ${cmd.id} is not registered`);
      return { ok: true, state: { ...state, generation, clients: state.clients.filter((c) => c.id !== cmd.id) } };
    }
    case "expire_client": {
      const i = state.clients.findIndex((c) => c.id === cmd.id);
      if (i < 0) return refuse("not_found", `client ${cmd.id} is not registered`);
      if (state.clients[i]!.expired) return refuse("invalid", `client ${cmd.id} is expired already`);
      return { ok: true, state: { ...state, generation, clients: state.clients.with(i, { ...state.clients[i]!, expired: true }) } };
    }
    case "note_stable":
      return { ok: true, state: { ...state, generation } };
    case "replace_leg": {
      const i = state.volumes.findIndex((x) => x.uuid === cmd.uuid);
      if (i < 0) return refuse("not_found", `no volume ${cmd.uuid}`);
      const vol = state.volumes[i]!;
      if (vol.legs[cmd.column] !== "dead") return refuse("invalid", `leg ${cmd.column} of '${vol.name}' is not dead`);
      const columns = vol.columns.with(cmd.column, { drive_uuid: cmd.with.drive_uuid, extents: [...cmd.with.extents] });
      // A client on an old view may still reach the old leg's extents until its drive confirms.
      const retired = [...state.retired, retire(vol, vol.columns[cmd.column]!)];
      const next: VolumeRecord = {
        ...vol,
        columns,
        legs: vol.legs.with(cmd.column, "syncing"),
        rebuild_blank: vol.rebuild_blank.with(cmd.column, true),
        topology_seq: generation,
      };
      const others = { ...state, volumes: state.volumes.filter((_, j) => j !== i), retired };
      const why = extentsBeyondBound(state, [cmd.with]) ?? volumeProblem(others, next);
      if (why) return refuse(why.code, why.error);
      return { ok: true, state: { ...state, generation, volumes: state.volumes.with(i, next), retired } };
    }
  }
}

/**
 * Every extent a state lists is held in memory as a number wherever the state is decoded, so a
 * state lists at most MAX_DECODED_EXTENTS (extent-runs.ts) in all: what apply() accepts always
 * decodes again.
 */
function extentsBeyondBound(state: ClusterState, added: readonly { extents: readonly number[] }[]): { code: RefusalCode; error: string } | null {
  let n = 0;
  for (const x of state.volumes) for (const c of x.columns) n += c.extents.length;
  for (const r of state.retired) n += r.extents.length;
  const more = added.reduce((k, c) => k + c.extents.length, 0);
  if (n + more <= MAX_DECODED_EXTENTS) return null;
  return {
    code: "no_space",
    error: `the cluster state would list ${n + more} extents, above the ${MAX_DECODED_EXTENTS} it may hold (each is held in memory); use drives formatted with a larger --extent-size`,
  };
}

/**
 * Leg-state changes of one step must keep every mirror set readable and move legs only along
 * ok → dead → syncing → synced → ok (and syncing/synced → dead when the leg fails again).
 */
function legStepProblem(vol: VolumeRecord, legs: LegState[]): string | null {
  const allowed: Record<LegState, LegState[]> = {
    ok: ["ok", "dead"],
    dead: ["dead", "syncing"],
    syncing: ["syncing", "synced", "dead"],
    synced: ["synced", "ok", "dead"],
  };
  for (let c = 0; c < legs.length; c++) {
    if (!allowed[vol.legs[c]!].includes(legs[c]!)) return `leg ${c} cannot go from ${vol.legs[c]} to ${legs[c]}`;
  }
  for (let set = 0; set < vol.stripe_width; set++) {
    const mine = legs.slice(set * vol.mirrors, (set + 1) * vol.mirrors);
    if (!mine.includes("ok")) return `mirror set ${set} would have no leg in sync`;
  }
  return null;
}

function retire(vol: VolumeRecord, c: Column): Retired {
  return { volume_uuid: vol.uuid, drive_uuid: c.drive_uuid, extents: [...c.extents] };
}

/**
 * The extents in use on each drive, computed from the volumes and the retired extents (never
 * stored twice): a retired extent is not free.
 */
export function usedExtents(state: ClusterState): Map<string, ExtentSet> {
  const used = new Map<string, ExtentSet>();
  for (const d of state.drives) used.set(d.drive_uuid, new ExtentSet());
  const add = (c: { drive_uuid: string; extents: number[] }) => {
    let s = used.get(c.drive_uuid);
    if (!s) used.set(c.drive_uuid, (s = new ExtentSet()));
    for (const e of c.extents) s.add(e);
  };
  for (const vol of state.volumes) for (const c of vol.columns) add(c);
  for (const r of state.retired) add(r);
  return used;
}

/** How many extents each drive holds retired (given up by a volume, not yet free: docs/toma.md). */
export function retiredCounts(state: ClusterState): Map<string, number> {
  const retired = new Map<string, number>();
  for (const r of state.retired) retired.set(r.drive_uuid, (retired.get(r.drive_uuid) ?? 0) + r.extents.length);
  return retired;
}

/**
 * Checks a volume against the rest of the state: its columns name known drives of its extent
 * size, extents in range and free, and enough of them for its capacity. Used by apply() for a new
 * volume and by decodeState() for every volume of a decoded state.
 */
function volumeProblem(
  state: ClusterState,
  vol: VolumeRecord,
  used: Map<string, ExtentSet> = usedExtents(state),
): { code: RefusalCode; error: string } | null {
  const invalid = (error: string) => ({ code: "invalid" as const, error: `volume '${vol.name}': ${error}` });
  if (!Number.isSafeInteger(vol.capacity_bytes) || vol.capacity_bytes <= 0 || vol.capacity_bytes % 512 !== 0) {
    return invalid(`capacity ${vol.capacity_bytes} is not a positive multiple of 512`);
  }
  const mirrored = vol.raid_level === "1" || vol.raid_level === "10";
  const physical = physicalBytes(vol);
  if (!Number.isSafeInteger(physical)) return invalid(`capacity ${vol.capacity_bytes} is too large for the debug format`);
  if (mirrored ? vol.mirrors < 2 || vol.mirrors > 3 : vol.mirrors !== 1) {
    return invalid(`${vol.mirrors} mirrors for raid level ${vol.raid_level}`);
  }
  if (vol.raid_level === "1" && vol.stripe_width !== 1) return invalid("a RAID1 volume has one mirror set");
  if (vol.columns.length === 0 || vol.columns.length !== vol.stripe_width * vol.mirrors) {
    return invalid(`has ${vol.columns.length} columns for stripe_width ${vol.stripe_width} and ${vol.mirrors} mirrors`);
  }
  if (vol.legs.length !== vol.columns.length || vol.rebuild_blank.length !== vol.columns.length) {
    return invalid("needs one leg state per column");
  }
  if (!mirrored && vol.legs.some((l) => l !== "ok")) return invalid("an unmirrored column is never out of sync");
  for (let set = 0; mirrored && set < vol.stripe_width; set++) {
    if (!vol.legs.slice(set * vol.mirrors, (set + 1) * vol.mirrors).includes("ok")) {
      return invalid(`mirror set ${set} has no leg in sync`);
    }
  }
  const drives = new Map(state.drives.map((d) => [d.drive_uuid, d]));
  const seen = new Set<string>();
  let total_bytes = 0;
  for (const c of vol.columns) {
    const d = drives.get(c.drive_uuid);
    if (!d) return invalid(`column on unknown drive ${c.drive_uuid}`);
    if (d.extent_size_bytes !== vol.extent_size_bytes) {
      return invalid(`drive ${c.drive_uuid} has extent size ${d.extent_size_bytes}, not ${vol.extent_size_bytes}`);
    }
    if (seen.has(c.drive_uuid)) return invalid(`two columns on drive ${c.drive_uuid}`);
    seen.add(c.drive_uuid);
    if (c.extents.length === 0) return invalid(`empty column on drive ${c.drive_uuid}`);
    const mine = new ExtentSet();
    for (const e of c.extents) {
      if (!Number.isInteger(e) || e < 0 || e >= d.extent_count) return invalid(`extent ${e} outside drive ${c.drive_uuid}`);
      if (mine.has(e) || used.get(c.drive_uuid)?.has(e)) {
        return { code: "no_space", error: `volume '${vol.name}': extent ${e} of drive ${c.drive_uuid} is already in use` };
      }
      mine.add(e);
    }
    total_bytes += c.extents.length * vol.extent_size_bytes;
  }
  if (vol.raid_level === "concatenated") {
    if (vol.stripe_size_bytes !== 0) return invalid("stripe_size_bytes must be 0 for a concatenated volume");
    if (total_bytes < physical) return invalid(`columns hold ${total_bytes} bytes, less than its capacity`);
  } else if (vol.raid_level === "1") {
    if (vol.stripe_size_bytes !== 0) return invalid("stripe_size_bytes must be 0 for a RAID1 volume");
    if (vol.columns.some((c) => c.extents.length * vol.extent_size_bytes < physical)) {
      return invalid("a leg is smaller than the capacity");
    }
  } else {
    const s = vol.stripe_size_bytes;
    if (!isValidStripeSize(s)) return invalid(`stripe size ${s} is not a power of two multiple of 4096`);
    const column_bytes = Math.ceil(physical / vol.stripe_width / s) * s;
    if (vol.columns.some((c) => c.extents.length * vol.extent_size_bytes < column_bytes)) {
      return invalid(`a column is smaller than the ${column_bytes} bytes RAID0 needs`);
    }
  }
  return null;
}

export function isValidStripeSize(s: number): boolean {
  return Number.isSafeInteger(s) && s >= 4096 && (s & (s - 1)) === 0 && s <= 2 ** 30;
}

/** Canonical CBOR of a state, format STATE_FORMAT: keys in schema order, so equal states give equal bytes. */
export function encodeState(state: ClusterState): Uint8Array {
  // The volumes' optional keys are left out when at their default: v.InferInput, not the output.
  const canonical: v.InferInput<typeof StateV2Schema> = {
    format: 2,
    cluster_uuid: state.cluster_uuid,
    generation: state.generation,
    // Only once taken, so that the bytes of states written before the term existed stay as they were.
    ...(state.term > 0 ? { term: state.term } : {}),
    drives: state.drives.map((d) => ({
      drive_uuid: d.drive_uuid,
      extent_size_bytes: d.extent_size_bytes,
      extent_count: d.extent_count,
      // Persisted: left out, every TOMA restart took each leg drive for one that lost its cache.
      ...(d.cache_epoch === undefined ? {} : { cache_epoch: d.cache_epoch }),
    })),
    volumes: state.volumes.map((x) => ({
      uuid: x.uuid,
      name: x.name,
      capacity_bytes: x.capacity_bytes,
      raid_level: x.raid_level,
      stripe_width: x.stripe_width,
      stripe_size_bytes: x.stripe_size_bytes,
      extent_size_bytes: x.extent_size_bytes,
      columns: x.columns.map((c) => ({ drive_uuid: c.drive_uuid, runs: toRuns(c.extents) })),
      mirrors: x.mirrors,
      legs: [...x.legs],
      rebuild_blank: [...x.rebuild_blank],
      topology_seq: x.topology_seq,
      created_seq: x.created_seq,
      // Only when set, so that the bytes of states without debug volumes stay as they were.
      ...(x.debug_format ? { debug_format: true } : {}),
    })),
    // Likewise only when something is retired.
    ...(state.retired.length > 0
      ? { retired: state.retired.map((r) => ({ volume_uuid: r.volume_uuid, drive_uuid: r.drive_uuid, runs: toRuns(r.extents) })) }
      : {}),
    // Both only in a TOMA cluster's states: the single TOMA's bytes stay as they were.
    ...(state.clients.length > 0 ? { clients: state.clients.map((c) => ({ id: c.id, name: c.name, volumes: [...c.volumes], ...(c.expired ? { expired: true } : {}) })) } : {}),
    ...(state.stable > 0 ? { stable: state.stable } : {}),
  };
  return encode(canonical);
}

export class CorruptStateError extends Error {}

/**
 * Decodes and fully validates a slot payload, in either format (STATE_FORMATS_READ). Throws
 * CorruptStateError saying why.
 */
export function decodeState(bytes: Uint8Array): ClusterState {
  const r = parseCbor(bytes, StateWireSchema, "cluster state");
  if (!r.ok) throw new CorruptStateError(r.error);
  const state = r.value.format === 1 ? r.value : expandState(r.value);
  const drive_ids = new Set<string>();
  for (const d of state.drives) {
    if (drive_ids.has(d.drive_uuid)) throw new CorruptStateError(`drive ${d.drive_uuid} listed twice`);
    drive_ids.add(d.drive_uuid);
  }
  // Re-admit volumes one by one: catches overlapping extents, unknown drives and bad geometry.
  // The extents in use grow with each admitted volume (linear, not recomputed per volume).
  const names = new Set<string>();
  const acc: ClusterState = { ...state, volumes: [], retired: [] };
  const in_use = usedExtents(acc);
  for (const vol of state.volumes) {
    if (names.has(vol.name)) throw new CorruptStateError(`volume name '${vol.name}' used twice`);
    names.add(vol.name);
    if (vol.created_seq > state.generation) {
      throw new CorruptStateError(`volume '${vol.name}' created after the state's generation`);
    }
    const why = volumeProblem(acc, vol, in_use);
    if (why) throw new CorruptStateError(why.error);
    acc.volumes.push(vol);
    for (const c of vol.columns) for (const e of c.extents) in_use.get(c.drive_uuid)!.add(e);
  }
  // Retired extents: on member drives, in range, and shared with nothing else.
  const drives = new Map(state.drives.map((d) => [d.drive_uuid, d]));
  for (const r of state.retired) {
    const d = drives.get(r.drive_uuid);
    if (!d) throw new CorruptStateError(`retired extents on unknown drive ${r.drive_uuid}`);
    if (acc.volumes.some((x) => x.uuid === r.volume_uuid && x.columns.some((c) => c.drive_uuid === r.drive_uuid))) {
      throw new CorruptStateError(`volume ${r.volume_uuid} both holds and retired extents on drive ${r.drive_uuid}`);
    }
    const used = in_use.get(r.drive_uuid)!;
    for (const e of r.extents) {
      if (e >= d.extent_count) throw new CorruptStateError(`retired extent ${e} outside drive ${r.drive_uuid}`);
      if (used.has(e)) throw new CorruptStateError(`retired extent ${e} of drive ${r.drive_uuid} is also in use`);
      used.add(e);
    }
  }
  if (state.stable > state.generation) throw new CorruptStateError(`stable generation ${state.stable} above the state's generation ${state.generation}`);
  const client_ids = new Set<number>();
  for (const c of state.clients) {
    if (client_ids.has(c.id)) throw new CorruptStateError(`client ${c.id} listed twice`);
    client_ids.add(c.id);
    for (const u of c.volumes) if (!state.volumes.some((x) => x.uuid === u)) throw new CorruptStateError(`client ${c.id} attached unknown volume ${u}`);
  }
  return state;
}

/** A format-2 state with its runs expanded into extent lists; throws CorruptStateError. */
function expandState(w: v.InferOutput<typeof StateV2Schema>): ClusterState {
  const lists = [
    ...w.volumes.flatMap((x) => x.columns.map((c) => ({ what: `volume '${x.name}' column on drive ${c.drive_uuid}`, runs: c.runs }))),
    ...w.retired.map((r) => ({ what: `retired extents of volume ${r.volume_uuid} on drive ${r.drive_uuid}`, runs: r.runs })),
  ];
  const e = expandAll(lists);
  if (!e.ok) throw new CorruptStateError(`cluster state: ${e.error}`);
  let i = 0;
  const volumes = w.volumes.map((x) => ({ ...x, columns: x.columns.map((c) => ({ drive_uuid: c.drive_uuid, extents: e.value[i++]! })) }));
  const retired = w.retired.map((r) => ({ volume_uuid: r.volume_uuid, drive_uuid: r.drive_uuid, extents: e.value[i++]! }));
  return { ...w, volumes, retired };
}

export function majority(n: number): number {
  return Math.floor(n / 2) + 1;
}
