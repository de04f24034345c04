/**
 * The checker: holds every read against the history of the sectors it covers.
 *
 * Per 512-byte sector (the unit a drive writes atomically), a read that ran from ri to rc may
 * return the value of write w only if
 *   (a) w was invoked before the read completed, and
 *   (b) w was not definitely superseded before the read began: no acknowledged write w2 to the
 *       sector was invoked after w's effect window closed, completed before ri, and is certain to
 *       be there throughout the read.
 * An acknowledged write is certain to be there unless its drive (for a mirror: any leg's drive)
 * lost power after the write was invoked (up to the read's end) and the write had not been made
 * durable before that loss. A mirror may serve a read from the leg that lost it until that leg is
 * taken out; after the next FLUSH it may not (mirroring.md). It is made durable by a FUA
 * acknowledgement, or by a FLUSH *from the same client* invoked after the write completed (NBD:
 * a flush covers the writes completed on that client before it; another machine's flush promises
 * nothing about them). A FLUSH that succeeds vouches for every write it covers, even one whose
 * drive lost power before the flush: if that data was lost, the flush had to fail. A failed FLUSH
 * makes the writes it covered doubtful: they may be gone, and they never supersede anything again.
 * This is the NBD/NVMe contract: nothing acknowledged is lost after a FLUSH or a FUA; unflushed
 * writes may be lost or torn per sector by a power loss, but never mixed within a sector or moved
 * to another sector.
 *
 * A write's effect window is [invoked, completed] when it completed; a write that failed, or was
 * in flight when its client crashed, is indeterminate: it may or may not have landed, up to
 * `settle_ms` after it was given up on (frames already on the wire, drive queues). Pending
 * writes may land at any time.
 *
 * Sound but not complete: it never flags a correct history, and it may miss a value that was
 * lost to a power loss and then "came back" (it does not narrow the candidates after a read).
 */
import { decodeSector, SECTOR } from "./sector-value.ts";

export type Outcome = "pending" | "ok" | "failed" | "unknown" | "doubtful";

export interface WriteRecord {
  readonly id: number;
  readonly client: string;
  readonly volume: number;
  readonly first: number;
  readonly sectors: number;
  readonly fua: boolean;
  readonly inv: number;
  /** End of the effect window: completion, or give-up + settle; Infinity while pending. */
  cmp: number;
  outcome: Outcome;
  /** When it became durable (FUA ack or covering FLUSH completion); Infinity until then. */
  durableAt: number;
}

const INITIAL: WriteRecord = {
  id: 0,
  client: "format",
  volume: -1,
  first: 0,
  sectors: 0,
  fua: true,
  inv: -Infinity,
  cmp: -Infinity,
  outcome: "ok",
  durableAt: -Infinity,
};

export interface CheckerClock {
  now: number;
  fail(why: string): void;
}

export interface FlushToken {
  readonly client: string;
  readonly volume: number;
  readonly inv: number;
}

export class Checker {
  private nextId = 1;
  private readonly writes = new Map<number, WriteRecord>();
  /** volume → sector → writes covering it, in invocation order. */
  private readonly bySector: Map<number, WriteRecord[]>[] = [];
  /** client:volume → its acknowledged writes not yet durable. */
  private readonly volatile = new Map<string, Set<WriteRecord>>();
  private readonly pendingByClient = new Map<string, Set<WriteRecord>>();
  /** drive → times of its power losses. */
  private readonly powerLosses = new Map<string, number[]>();
  readonly stats = { writes: 0, reads: 0, flushes: 0, sectors_checked: 0, read_errors: 0, write_errors: 0 };

  constructor(
    private readonly world: CheckerClock,
    /** The drive (uuid) that holds `sector` of `volume`: power losses are per drive. */
    private readonly driveOf: (volume: number, sector: number) => string[],
    private readonly settle_ms: number,
  ) {}

  private sectorList(volume: number, sector: number): WriteRecord[] {
    let m = this.bySector[volume];
    if (!m) {
      m = new Map();
      this.bySector[volume] = m;
    }
    let l = m.get(sector);
    if (!l) {
      l = [];
      m.set(sector, l);
    }
    return l;
  }

  /** Records a write's invocation and returns its record; the caller encodes `id` into the data. */
  writeStart(client: string, volume: number, first: number, sectors: number, fua: boolean): WriteRecord {
    const w: WriteRecord = {
      id: this.nextId++,
      client,
      volume,
      first,
      sectors,
      fua,
      inv: this.world.now,
      cmp: Infinity,
      outcome: "pending",
      durableAt: Infinity,
    };
    this.writes.set(w.id, w);
    for (let s = first; s < first + sectors; s++) this.sectorList(volume, s).push(w);
    let p = this.pendingByClient.get(client);
    if (!p) {
      p = new Set();
      this.pendingByClient.set(client, p);
    }
    p.add(w);
    return w;
  }

  writeEnd(w: WriteRecord, ok: boolean): void {
    if (w.outcome !== "pending") return; // its client was declared lost meanwhile
    this.pendingByClient.get(w.client)?.delete(w);
    this.stats.writes++;
    if (ok) {
      w.outcome = "ok";
      w.cmp = this.world.now;
      if (w.fua) w.durableAt = w.cmp;
      else this.volatileOf(w.client, w.volume).add(w);
    } else {
      this.stats.write_errors++;
      w.outcome = "failed";
      w.cmp = this.world.now + this.settle_ms;
    }
  }

  private volatileOf(client: string, volume: number): Set<WriteRecord> {
    const key = `${client}:${volume}`;
    let set = this.volatile.get(key);
    if (!set) {
      set = new Set();
      this.volatile.set(key, set);
    }
    return set;
  }

  flushStart(client: string, volume: number): FlushToken {
    return { client, volume, inv: this.world.now };
  }

  flushEnd(t: FlushToken, ok: boolean): void {
    this.stats.flushes++;
    const set = this.volatileOf(t.client, t.volume);
    for (const w of set) {
      if (w.cmp >= t.inv) continue;
      if (ok) w.durableAt = this.world.now;
      else w.outcome = "doubtful";
      set.delete(w);
    }
  }

  /** A client crashed: its writes in flight may land until settle_ms from now, or never. */
  clientLost(client: string): void {
    const p = this.pendingByClient.get(client);
    if (!p) return;
    for (const w of p) {
      w.outcome = "unknown";
      w.cmp = this.world.now + this.settle_ms;
    }
    p.clear();
  }

  /** The drive lost power: its writes not yet durable may be lost or torn (per sector). */
  powerLoss(drive_uuid: string): void {
    let l = this.powerLosses.get(drive_uuid);
    if (!l) {
      l = [];
      this.powerLosses.set(drive_uuid, l);
    }
    l.push(this.world.now);
  }

  /**
   * Certain to be there throughout a read running from `ri` to `rc`: vouched for (FUA or FLUSH)
   * before the read began, or no power loss of its drive from its invocation to the read's end
   * that found it not yet durable (a loss during the read may take it from under the read).
   */
  private persisted(w: WriteRecord, drives: string[], ri: number, rc: number): boolean {
    if (w.durableAt < ri) return true;
    for (const drive of drives) {
      const losses = this.powerLosses.get(drive);
      if (!losses) continue;
      for (const tc of losses) if (tc >= w.inv && tc < rc && w.durableAt > tc) return false;
    }
    return true;
  }

  /**
   * Checks a completed read of `data` from `first` (invoked at `inv`, completing now). Reports
   * the first violation to the world and returns it, or null.
   */
  readEnd(client: string, volume: number, first: number, data: Uint8Array, inv: number): string | null {
    this.stats.reads++;
    const rc = this.world.now;
    for (let i = 0; i * SECTOR < data.length; i++) {
      const s = first + i;
      this.stats.sectors_checked++;
      const bad = this.checkSector(volume, s, data.subarray(i * SECTOR, (i + 1) * SECTOR), inv, rc);
      if (bad) {
        const why = `${client} read volume ${volume} sector ${s} (invoked ${inv.toFixed(3)}): ${bad}`;
        this.world.fail(why);
        return why;
      }
    }
    return null;
  }

  readFailed(): void {
    this.stats.reads++;
    this.stats.read_errors++;
  }

  get now(): number {
    return this.world.now;
  }

  private checkSector(volume: number, s: number, bytes: Uint8Array, ri: number, rc: number): string | null {
    const r = decodeSector(bytes, volume, s);
    if (r.kind === "garbage") return "sector is neither zeroes nor one whole write (torn within a sector or corrupt)";
    if (r.kind === "misplaced") {
      return `sector holds write #${r.id} meant for volume ${r.volume} sector ${r.sector} (misdirected or misplanned)`;
    }
    const w = r.id === 0 ? INITIAL : this.writes.get(r.id);
    if (!w) return `sector holds write #${r.id}, which was never issued`;
    if (w !== INITIAL && (w.volume !== volume || s < w.first || s >= w.first + w.sectors)) {
      return `sector holds write #${r.id}, which did not cover it`;
    }
    if (!(w.inv < rc)) return `returned write #${w.id}, invoked after the read completed`;
    const drive = this.driveOf(volume, s);
    for (const w2 of this.sectorList(volume, s)) {
      if (w2 === w || w2.outcome !== "ok") continue;
      if (w2.inv > w.cmp && w2.cmp < ri && this.persisted(w2, drive, ri, rc)) {
        const what = w === INITIAL ? "the initial zeroes" : `write #${w.id} by ${w.client} (${w.outcome})`;
        return (
          `returned ${what}, but write #${w2.id} by ${w2.client} was acknowledged at ${w2.cmp.toFixed(3)}` +
          `${w2.durableAt < Infinity ? ` and durable at ${w2.durableAt.toFixed(3)}` : ""}, before the read began: lost or stale data (drive ${drive.join(", ")})`
        );
      }
    }
    return null;
  }

  /** Writes not yet completed, for the liveness check. */
  pendingWrites(): WriteRecord[] {
    const out: WriteRecord[] = [];
    for (const p of this.pendingByClient.values()) out.push(...p);
    return out;
  }
}
