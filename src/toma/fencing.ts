/**
 * Keeps every reachable drive's fence table (the target's, DESIGN.md §3; target/fence.ts) equal
 * to what the TOMA knows: which extents of the drive belong to which volume, and each live client
 * that has one of those volumes attached, with the generation it last acknowledged as its minimum
 * and the volumes it may reach. A target forgets the table when it restarts, and a frame of an
 * older topology may still be in the network; both are covered by pushing the whole table again
 * whenever the link to the target is new, and whenever an entry changes.
 *
 * An expired client is left out of every table; once a drive confirmed a table without it, that
 * drive can no longer execute its I/O (ClientRegistry.fenced). Likewise a volume being deleted is
 * left out of every table, and once a drive confirmed a table without it, no client can reach
 * its extents there any more: only then may they belong to another volume (mirror-control.ts).
 *
 * Each push carries the TOMA's control-plane version in the session's `generation` (stamped by
 * the TOMA's sessionOf): a drive that has seen a newer TOMA refuses it STALE, naming that version,
 * and the push fails with that TargetError (docs/protocol.md, "The control-plane version").
 */
import type { FenceVolume } from "../engine/wire/control.ts";
import { sha256 } from "../engine/wire/cluster-key.ts";
import type { TargetSession } from "../engine/wire/session-api.ts";
import type { ClientRecord, ClientRegistry } from "./clients.ts";
import type { ClusterState, Retired, VolumeRecord } from "./cluster-state.ts";

export interface FenceEntry {
  client_id: number;
  min_generation: number;
  /** Uuids of the volumes it may reach on the drive. */
  volumes: string[];
}

/** The table one drive must hold: its volumes' extents and the clients that may reach them. */
export interface FenceTable {
  volumes: FenceVolume[];
  set: FenceEntry[];
}

export interface FenceDeps {
  clients: ClientRegistry;
  /**
   * The table a drive must hold, when it is a function of the applied replicated state alone (a
   * TOMA cluster: stateFenceTable; null while there is no state to act on, and then nothing is
   * pushed). Absent: the single TOMA's table from its own registry.
   */
  table?: (drive_uuid: string) => FenceTable | null;
  /** The volumes of the current state. */
  volumes: () => VolumeRecord[];
  /**
   * A volume being deleted: left out of every table (its drives still get theirs, which is what
   * confirms that no client can reach it there any more).
   */
  leftOut: (volume_uuid: string) => boolean;
  /** Extents given up and not yet released: their drives need a confirmed table too. */
  retired: () => Retired[];
  /**
   * A TOMA cluster: who keeps the drive's table now (local-fences.ts). "confirmed": the drive's
   * own TOMA reports, freshly, that the drive confirmed exactly `table` (its digest); "owner": its
   * own TOMA is on it (reported fresh, not yet confirmed); "self": its TOMA is silent, or has not
   * confirmed for too long: this control pushes it itself. Absent: always "self".
   */
  keeper?: (drive_uuid: string, table_key: string) => "confirmed" | "owner" | "self";
  /** The session of the target serving the drive now, or null. */
  sessionOf: (drive_uuid: string) => TargetSession | null;
  /** Sends the table (replace) to the drive; rejects on any failure. */
  push: (session: TargetSession, drive_uuid: string, table: FenceTable) => Promise<void>;
  onError: (drive_uuid: string, error: unknown) => void;
}

/** A client as a fence table admits it: its id, the volumes it attached, its minimum generation. */
interface Admitted {
  id: number;
  volumes: Iterable<string>;
  acked: number;
}

/** The table of `drive_uuid`: the volumes' extents on it but those left out, and `clients` there. */
function fenceTable(vols: readonly VolumeRecord[], leftOut: (uuid: string) => boolean, clients: readonly Admitted[], drive_uuid: string): FenceTable {
  const volumes: FenceVolume[] = [];
  const here = new Set<string>();
  for (const vol of vols) {
    // Every column the volume has here (the allocator gives each its own drive, but the table
    // must not depend on it: a column left out would be refused its own I/O).
    const extents = vol.columns.filter((c) => c.drive_uuid === drive_uuid).flatMap((c) => c.extents);
    if (extents.length === 0 || leftOut(vol.uuid)) continue;
    here.add(vol.uuid);
    volumes.push({ volume_uuid: vol.uuid, incarnation: vol.created_seq, extents: extentRuns(extents) });
  }
  const set: FenceEntry[] = [];
  for (const c of clients) {
    const mine = [...c.volumes].filter((u) => here.has(u)).sort();
    if (mine.length > 0) set.push({ client_id: c.id, min_generation: c.acked, volumes: mine });
  }
  volumes.sort((a, b) => (a.volume_uuid < b.volume_uuid ? -1 : 1));
  set.sort((a, b) => a.client_id - b.client_id);
  return { volumes, set };
}

/**
 * A TOMA cluster's fence table for a drive: a pure function of the applied replicated state, so
 * that every TOMA that applied a state pushes the same table, stamped with that state's version
 * (docs/toma-cluster.md, "Each TOMA's own drives"). Its volumes' extents on the drive; every
 * client of the state not expired, for its volumes there, with the state's stable generation as
 * its minimum: every client the state lists had acknowledged at least that generation when it
 * was proposed (clients registered later start above it), so no live client is refused a
 * request it may still send, and nothing older than the stable generation is admitted.
 */
export function stateFenceTable(state: ClusterState, drive_uuid: string): FenceTable {
  const clients = state.clients.filter((c) => !c.expired).map((c) => ({ id: c.id, volumes: c.volumes, acked: state.stable }));
  return fenceTable(state.volumes, () => false, clients, drive_uuid);
}

/**
 * The drives a state's fence tables are kept on: every drive of the state. Those of volumes and
 * of retired extents need theirs (a confirmed table is what a stale-lock recovery and a release
 * wait for), and any drive may be one an expired client whose volumes are all gone must be
 * fenced out of (mirror-control.ts expiryDrives); an empty table costs nothing.
 */
export function stateFenceDrives(state: ClusterState): Set<string> {
  const out = new Set<string>(state.drives.map((d) => d.drive_uuid));
  for (const vol of state.volumes) for (const c of vol.columns) out.add(c.drive_uuid);
  for (const r of state.retired) out.add(r.drive_uuid);
  return out;
}

/** A short digest of a table's key (JSON of the table): what a drive report says a drive confirmed. */
export function tableDigest(key: string): string {
  return Buffer.from(sha256(Buffer.from(key, "utf8")).subarray(0, 16)).toString("hex");
}

/** Extent indices as [first, count] runs of consecutive extents, ascending. */
export function extentRuns(extents: readonly number[]): [number, number][] {
  const sorted = [...extents].sort((a, b) => a - b);
  const out: [number, number][] = [];
  for (const e of sorted) {
    const last = out[out.length - 1];
    if (last !== undefined && last[0] + last[1] === e) last[1]++;
    else out.push([e, 1]);
  }
  return out;
}

/** Extent indices as [start, end) byte ranges of runs of consecutive extents, ascending. */
export function extentByteRuns(extents: readonly number[], extent_bytes: number): (readonly [number, number])[] {
  return extentRuns(extents).map(([first, count]) => [first * extent_bytes, (first + count) * extent_bytes] as const);
}

export class FenceSync {
  /** What each drive confirmed last, and over which session (a new session means a new target). */
  private readonly confirmed = new Map<string, { session: TargetSession; key: string }>();
  private running: Promise<void> | null = null;
  private again = false;

  constructor(private readonly deps: FenceDeps) {}

  /** The table a drive must hold now (null: no state to derive it from; nothing is pushed). */
  tableFor(drive_uuid: string): FenceTable | null {
    if (this.deps.table) return this.deps.table(drive_uuid);
    const live = this.deps.clients.all().filter((c) => !c.expired);
    return fenceTable(this.deps.volumes(), this.deps.leftOut, live, drive_uuid);
  }

  /**
   * Drives any client or volume involves: every volume's drives, even with no client left (an
   * empty table confirmed there, inSync, is what lets a stale-lock recovery of a dead last client
   * be retried on a later pass, since forget() drops every confirmation on each pass), and the
   * drives of retired extents (their release waits for a confirmed table).
   */
  private drives(): Set<string> {
    const out = new Set<string>();
    for (const vol of this.deps.volumes()) for (const c of vol.columns) out.add(c.drive_uuid);
    for (const r of this.deps.retired()) out.add(r.drive_uuid);
    for (const c of this.deps.clients.all()) for (const d of c.unfenced) out.add(d);
    return out;
  }

  /** True when the drive confirmed exactly its current table over its current session. */
  inSync(drive_uuid: string): boolean {
    const s = this.deps.sessionOf(drive_uuid);
    const c = this.confirmed.get(drive_uuid);
    const t = this.tableFor(drive_uuid);
    if (t === null) return false;
    const key = JSON.stringify(t);
    if (this.deps.keeper?.(drive_uuid, key) === "confirmed") return true;
    return s !== null && c !== undefined && c.session === s && c.key === key;
  }

  /**
   * Forgets what the drives confirmed, so the next sync pushes every table again. Called on every
   * maintenance pass: a drive pulled out and plugged back into the same target comes back with an
   * empty table over the same session, which nothing else would reveal (simulator seed 58).
   */
  forget(): void {
    this.confirmed.clear();
  }

  /** Brings every reachable drive up to date; coalesces concurrent calls. */
  sync(): Promise<void> {
    if (this.running) {
      this.again = true;
      return this.running;
    }
    this.running = (async () => {
      do {
        this.again = false;
        await Promise.all([...this.drives()].map((d) => this.syncDrive(d)));
      } while (this.again);
    })().finally(() => {
      this.running = null;
    });
    return this.running;
  }

  private async syncDrive(drive_uuid: string): Promise<void> {
    const table = this.tableFor(drive_uuid);
    if (!table) return;
    const key = JSON.stringify(table);
    const keeper = this.deps.keeper?.(drive_uuid, key) ?? "self";
    if (keeper === "owner") return;
    const session = this.deps.sessionOf(drive_uuid);
    if (keeper === "self" && !session) return;
    const prev = this.confirmed.get(drive_uuid);
    if (keeper === "self" && session && (!prev || prev.session !== session || prev.key !== key)) {
      try {
        await this.deps.push(session, drive_uuid, table);
      } catch (e) {
        this.confirmed.delete(drive_uuid);
        this.deps.onError(drive_uuid, e);
        return;
      }
      this.confirmed.set(drive_uuid, { session, key });
    }
    // The table holds no expired client: it is fenced out of this drive.
    const present = new Set(table.set.map((e) => e.client_id));
    for (const c of this.deps.clients.all() as ClientRecord[]) {
      if (c.expired && c.unfenced.has(drive_uuid) && !present.has(c.id)) this.deps.clients.fenced(c, drive_uuid);
    }
  }
}
