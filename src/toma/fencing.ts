/**
 * Keeps every reachable drive's registration table (the target's fence, DESIGN.md §3) equal to
 * what the TOMA knows: each live client that has a volume on the drive, with the generation it
 * last acknowledged as its minimum. A target forgets the table when it restarts, and a frame of
 * an older topology may still be in the network; both are covered by pushing the whole table
 * again whenever the link to the target is new, and whenever a client's entry changes.
 *
 * An expired client is left out of every table; once a drive confirmed a table without it, that
 * drive can no longer execute its I/O (ClientRegistry.fenced).
 *
 * Each push carries the TOMA's control-plane version in the session's `generation` (stamped by
 * the TOMA's sessionOf): a drive that has seen a newer TOMA refuses it STALE, naming that version,
 * and the push fails with that TargetError (docs/protocol.md, "The control-plane version").
 */
import type { TargetSession } from "../engine/wire/session-api.ts";
import type { ClientRecord, ClientRegistry } from "./clients.ts";

export interface FenceEntry {
  client_id: number;
  min_generation: number;
}

export interface FenceDeps {
  clients: ClientRegistry;
  /** The drives each volume uses (every leg, dead ones included). */
  drivesOfVolume: (volume: string) => string[];
  /** The drives of every volume, attached anywhere or not: each keeps a confirmed table. */
  volumeDrives: () => string[];
  /** The session of the target serving the drive now, or null. */
  sessionOf: (drive_uuid: string) => TargetSession | null;
  /** Sends the table (replace) to the drive; rejects on any failure. */
  push: (session: TargetSession, drive_uuid: string, table: FenceEntry[]) => Promise<void>;
  onError: (drive_uuid: string, error: unknown) => void;
}

export class FenceSync {
  /** What each drive confirmed last, and over which session (a new session means a new target). */
  private readonly confirmed = new Map<string, { session: TargetSession; key: string }>();
  private running: Promise<void> | null = null;
  private again = false;

  constructor(private readonly deps: FenceDeps) {}

  /** The table a drive must hold now. */
  tableFor(drive_uuid: string): FenceEntry[] {
    const out: FenceEntry[] = [];
    for (const c of this.deps.clients.all()) {
      if (c.expired) continue;
      if ([...c.volumes].some((v) => this.deps.drivesOfVolume(v).includes(drive_uuid))) {
        out.push({ client_id: c.id, min_generation: c.acked });
      }
    }
    return out.sort((a, b) => a.client_id - b.client_id);
  }

  /**
   * Drives any client or volume involves: every volume's drives, even with no client left. An
   * empty table confirmed there (inSync) is what lets a stale-lock recovery of a dead last client
   * be retried on a later pass, since forget() drops every confirmation on each pass.
   */
  private drives(): Set<string> {
    const out = new Set<string>(this.deps.volumeDrives());
    for (const c of this.deps.clients.all()) {
      for (const v of c.volumes) for (const d of this.deps.drivesOfVolume(v)) out.add(d);
      for (const d of c.unfenced) out.add(d);
    }
    return out;
  }

  /** True when the drive confirmed exactly its current table over its current session. */
  inSync(drive_uuid: string): boolean {
    const s = this.deps.sessionOf(drive_uuid);
    const c = this.confirmed.get(drive_uuid);
    return s !== null && c !== undefined && c.session === s && c.key === JSON.stringify(this.tableFor(drive_uuid));
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
    const session = this.deps.sessionOf(drive_uuid);
    if (!session) return;
    const table = this.tableFor(drive_uuid);
    const key = JSON.stringify(table);
    const prev = this.confirmed.get(drive_uuid);
    if (!prev || prev.session !== session || prev.key !== key) {
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
    const present = new Set(table.map((e) => e.client_id));
    for (const c of this.deps.clients.all() as ClientRecord[]) {
      if (c.expired && c.unfenced.has(drive_uuid) && !present.has(c.id)) this.deps.clients.fenced(c, drive_uuid);
    }
  }
}
