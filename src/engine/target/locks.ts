/**
 * The lock table of one drive (DESIGN.md §3), in the target's RAM. A lock covers units of
 * LOCK_UNIT_BYTES of the data area and is owned by a client id, not by a connection: a client
 * that reconnects still holds its locks, and the locks of a client that died stay until its TOMA
 * recovers them (UNLOCK from role "toma" names the dead client's id).
 *
 * LOCK is all or nothing: a request takes every unit of its range at once, or waits, holding
 * none, until all are free. Held by anyone includes held by the same owner (a client serialises
 * its own overlapping writes). Waiters are served in arrival order among those that overlap: a
 * request never overtakes an earlier waiting request that wants one of its units, so none
 * starves; requests over disjoint units never wait for each other.
 *
 * Each acquisition bumps a sequence number per unit (a fixed table indexed by unit modulo its
 * size), which a READ with TEST_LOCK compares before and after reading: a lock taken and released
 * during the read is seen. Two units sharing a slot only cause a spurious LOCKED.
 */
import { Status } from "../wire/header.ts";
import type { LockEntry } from "../wire/control.ts";
import { RequestError } from "./reply.ts";

/** Size of the per-unit acquisition sequence table (a power of two). */
export const LOCK_SEQ_SLOTS = 4096;
/**
 * Units one drive may have locked at once (4 GiB of data at 64 KiB units). It bounds the table's
 * memory and the size of a LOCK_LIST answer; a LOCK that would exceed it is answered BUSY.
 */
export const MAX_LOCKED_UNITS = 65536;

interface Waiter<T> {
  readonly owner: number;
  /** The request's fencing admission when it is subject to fencing (role client), else null. */
  readonly fenced: T | null;
  /** A TOMA's request: its control-plane version (see failWaitingBelow), else null. */
  readonly control: number | null;
  readonly first: number;
  readonly last: number;
  readonly resolve: () => void;
  readonly reject: (e: Error) => void;
  /** Removes the abort listener once the waiter is granted or failed. */
  detach: () => void;
}

/** `T`: what a waiter subject to fencing carries, for failWaiting to judge (target/fence.ts Admission). */
export class LockTable<T = unknown> {
  /** unit index → owning client id. */
  private readonly owners = new Map<number, number>();
  private readonly seq = new Float64Array(LOCK_SEQ_SLOTS);
  private waiters: Waiter<T>[] = [];

  /** Units held now. */
  get held(): number {
    return this.owners.size;
  }

  /** Requests waiting for their units. */
  get waiting(): number {
    return this.waiters.length;
  }

  /**
   * Takes units first..last (inclusive) for owner. Returns null when they were taken at once, or
   * a promise that resolves once they are, after waiting while any is held or wanted by an
   * earlier waiter. The signal aborts the wait (the requester's connection ended): nothing is
   * then taken. Throws or rejects RequestError(BUSY) when MAX_LOCKED_UNITS would be exceeded.
   * `fenced` is the request's admission when it is subject to fencing (see failWaiting);
   * `control` a TOMA's control-plane version (see failWaitingBelow).
   */
  lock(
    owner: number,
    first: number,
    last: number,
    signal: AbortSignal,
    fenced: T | null = null,
    control: number | null = null,
  ): Promise<void> | null {
    if (this.waiters.length === 0 && this.free(first, last, null)) {
      const busy = this.overCap(last - first + 1);
      if (busy !== null) throw busy;
      this.take(owner, first, last);
      return null;
    }
    if (signal.aborted) throw new RequestError(Status.BUSY, "the connection ended while waiting for a lock");
    return new Promise<void>((resolve, reject) => {
      const w: Waiter<T> = { owner, fenced, control, first, last, resolve, reject, detach: () => {} };
      const onAbort = () => {
        const i = this.waiters.indexOf(w);
        if (i < 0) return;
        this.waiters.splice(i, 1);
        w.reject(new RequestError(Status.BUSY, "the connection ended while waiting for a lock"));
        // The units it was waiting for may have held back a later waiter.
        this.grantWaiting();
      };
      signal.addEventListener("abort", onAbort);
      w.detach = () => signal.removeEventListener("abort", onAbort);
      this.waiters.push(w);
      this.grantWaiting();
    });
  }

  /**
   * Takes units first..last for owner if they are free and no waiter wants one of them; else
   * takes nothing and returns false (LOCK with TEST_LOCK: never waits). Throws RequestError(BUSY)
   * when MAX_LOCKED_UNITS would be exceeded.
   */
  tryLock(owner: number, first: number, last: number): boolean {
    if (!this.free(first, last, null)) return false;
    if (this.waiters.some((w) => w.first <= last && first <= w.last)) return false;
    const busy = this.overCap(last - first + 1);
    if (busy !== null) throw busy;
    this.take(owner, first, last);
    return true;
  }

  /**
   * Releases the units of first..last held by owner, and withdraws owner's requests still waiting
   * for any of them (answered BUSY; returns how many); others' units and requests are left alone.
   *
   * Why withdraw: a requester unlocks a range only once it wants nothing of it any more (a client
   * serialises its own writes of a unit, UNLOCK included), so a request of its own still waiting
   * there is one it gave up on — a mirror client gives up a LOCK waiting on a leg that a newer
   * topology took out, and unlocks at once. Granted after this UNLOCK, that request would hold
   * the units with nobody left to free them: the owner is alive (no stale-lock recovery), and
   * its own next write of the unit waits for it for ever (simulator seed 353 with --mirror).
   */
  unlock(owner: number, first: number, last: number): number {
    let released = false;
    for (let u = first; u <= last; u++) {
      if (this.owners.get(u) === owner) {
        this.owners.delete(u);
        released = true;
      }
    }
    const gone = this.waiters.filter((w) => w.owner === owner && w.first <= last && first <= w.last);
    if (gone.length > 0) {
      this.waiters = this.waiters.filter((w) => !gone.includes(w));
      for (const w of gone) {
        w.detach();
        w.reject(new RequestError(Status.BUSY, `withdrawn: client ${owner} unlocked the range while this request waited for it`));
      }
    }
    if ((released || gone.length > 0) && this.waiters.length > 0) this.grantWaiting();
    for (const w of this.waiters) {
      if (w.owner === owner && w.first <= last && first <= w.last) throw new Error(`invariant: client ${owner}'s request for units ${w.first}..${w.last} still waits after its UNLOCK of ${first}..${last}`);
    }
    return gone.length;
  }

  /** True if any unit of first..last is held. */
  anyLocked(first: number, last: number): boolean {
    if (this.owners.size === 0) return false;
    for (let u = first; u <= last; u++) if (this.owners.has(u)) return true;
    return false;
  }

  /**
   * Sum of the acquisition sequence numbers of first..last: it only grows, so an unchanged sum
   * means no unit of the range was acquired in between (exact far beyond 2^32 acquisitions).
   */
  seqSum(first: number, last: number): number {
    let sum = 0;
    for (let u = first; u <= last; u++) sum += this.seq[u & (LOCK_SEQ_SLOTS - 1)]!;
    return sum;
  }

  /** Held locks as runs of consecutive units of one owner, by offset. */
  list(unit_bytes: number): LockEntry[] {
    const units = [...this.owners.keys()].sort((a, b) => a - b);
    const out: LockEntry[] = [];
    let run: LockEntry | null = null;
    let runEnd = -1;
    for (const u of units) {
      const owner = this.owners.get(u)!;
      if (run !== null && runEnd === u && run.client_id === owner) {
        run.length += unit_bytes;
      } else {
        run = { client_id: owner, offset: u * unit_bytes, length: unit_bytes };
        out.push(run);
      }
      runEnd = u + 1;
    }
    return out;
  }

  /**
   * Fails the waiters (subject to fencing) that `refused` names: a FENCE took their client out.
   * They hold nothing; held locks stay, for the TOMA to recover.
   */
  failWaiting(refused: (fenced: T) => boolean, e: (owner: number) => Error): void {
    this.failWhere((w) => w.fenced !== null && refused(w.fenced), e);
  }

  /**
   * Fails the TOMA waiters whose control-plane version is below `version`: a newer TOMA's request
   * reached the drive, and it must not wait for a deposed TOMA's LOCK, which may itself wait for
   * a dead client's lock that only the newer TOMA can recover.
   */
  failWaitingBelow(version: number, e: (owner: number) => Error): void {
    this.failWhere((w) => w.control !== null && w.control < version, e);
  }

  private failWhere(pick: (w: Waiter<T>) => boolean, e: (owner: number) => Error): void {
    const out = this.waiters.filter(pick);
    if (out.length === 0) return;
    this.waiters = this.waiters.filter((w) => !out.includes(w));
    for (const w of out) {
      w.detach();
      w.reject(e(w.owner));
    }
    this.grantWaiting();
  }

  /** Fails every waiter (the drive is no longer served); held locks vanish with the table. */
  failAll(e: Error): void {
    const ws = this.waiters;
    this.waiters = [];
    for (const w of ws) {
      w.detach();
      w.reject(e);
    }
  }

  private free(first: number, last: number, claimed: Set<number> | null): boolean {
    for (let u = first; u <= last; u++) {
      if (this.owners.has(u)) return false;
      if (claimed !== null && claimed.has(u)) return false;
    }
    return true;
  }

  private overCap(count: number): RequestError | null {
    if (this.owners.size + count <= MAX_LOCKED_UNITS) return null;
    return new RequestError(Status.BUSY, `${this.owners.size} lock units are held on this drive, at most ${MAX_LOCKED_UNITS}`);
  }

  private take(owner: number, first: number, last: number): void {
    for (let u = first; u <= last; u++) {
      this.owners.set(u, owner);
      const slot = u & (LOCK_SEQ_SLOTS - 1); // low bits are exact for any unit index below 2^53
      this.seq[slot] = this.seq[slot]! + 1;
    }
  }

  /** Grants, in arrival order, every waiter whose units are free and wanted by no earlier waiter. */
  private grantWaiting(): void {
    const claimed = new Set<number>();
    const keep: Waiter<T>[] = [];
    for (const w of this.waiters) {
      if (!this.free(w.first, w.last, claimed)) {
        keep.push(w);
        for (let u = w.first; u <= w.last; u++) claimed.add(u);
        continue;
      }
      w.detach();
      const busy = this.overCap(w.last - w.first + 1);
      if (busy !== null) {
        w.reject(busy);
        continue;
      }
      this.take(w.owner, w.first, w.last);
      w.resolve();
    }
    this.waiters = keep;
  }
}
