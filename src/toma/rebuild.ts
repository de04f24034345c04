/**
 * Copies a syncing mirror leg back into the set (the Rebuild step of DESIGN.md §3): one pass over
 * the dirty bits of an in-sync leg (the source) and of the syncing leg itself (regions whose
 * cached writes it may have lost: target/dirty.ts), copying each region source → syncing leg
 * under the source's lock, then clearing both bits. Ordinary writes go to both legs meanwhile, so a
 * region copied once stays equal. Resumable after a crash of anything: a bit is cleared only after
 * its region was copied durably, and a blank leg had every bit of its volume set first.
 *
 * Also recovers the locks of a client that died mid-write: the legs of each locked unit are made
 * equal (from the first locked leg, which the client wrote under its lock), then the locks are
 * freed (`recoverSetLocks`).
 *
 * Runs through the TOMA's own sessions (role "toma": the authority, not fenced) and only while the
 * topology it works for is stable (every client switched to it).
 */
import type { Env } from "../engine/env.ts";
import { sleep } from "../engine/env.ts";
import { uuidFromString } from "../engine/uuid.ts";
import type { TargetSession } from "../engine/wire/session-api.ts";
import type { VolumeRecord } from "./cluster-state.ts";
import type { RangeClaims } from "./range-claims.ts";
import { lockLegsOf } from "../engine/layout/mirror-roles.ts";
import { LOCK_UNIT_BYTES } from "../engine/wire/header.ts";
import { setColumns, setTopologies } from "./topology.ts";

export interface RebuildDeps {
  env: Env;
  sessionOf: (drive_uuid: string) => TargetSession | null;
  /** Bitmap region size of a drive (from its superblock, as the target listed it). */
  regionBytes: (drive_uuid: string) => number;
  /** Pause after each region copied, so that foreground I/O keeps most of the bandwidth. */
  pause_ms: number;
  /** Our lock owner id (the TOMA locks like a client). */
  owner_id: number;
  /**
   * The drive lost its cache and the cluster has not settled that yet (mirror-control.ts): a copy
   * from it may lack acknowledged writes, so it is written with LOSSY_COPY.
   */
  lossy: (drive_uuid: string) => boolean;
  /** Our exclusion over drive ranges: every lock of ours is taken under a claim. */
  claims: RangeClaims;
}

export interface RebuildProgress {
  done_bytes: number;
  total_bytes: number;
}

export class LegUnavailable extends Error {}

function need(deps: RebuildDeps, drive_uuid: string): TargetSession {
  const s = deps.sessionOf(drive_uuid);
  if (!s) throw new LegUnavailable(`drive ${drive_uuid} is not reachable`);
  return s;
}

/** Drive offset of column byte `at` (extents need not be contiguous on the drive). */
function driveOffset(vol: VolumeRecord, column: number, at: number): number {
  const E = vol.extent_size_bytes;
  const idx = Math.floor(at / E);
  return vol.columns[column]!.extents[idx]! * E + (at - idx * E);
}

/**
 * One pass copying the dirty regions of `source` into `column` (both legs of one set). When
 * `clearBits` is false (another leg of the set is still dead and needs them) the bits stay set.
 */
export async function copyLeg(
  deps: RebuildDeps,
  vol: VolumeRecord,
  column: number,
  source: number,
  clearBits: boolean,
  progress: RebuildProgress,
  cancelled: () => boolean,
): Promise<void> {
  const E = vol.extent_size_bytes;
  const srcDrive = vol.columns[source]!.drive_uuid;
  const dstDrive = vol.columns[column]!.drive_uuid;
  const src = uuidFromString(srcDrive);
  const dst = uuidFromString(dstDrive);
  const R = deps.regionBytes(srcDrive);
  const extents = vol.columns[source]!.extents;
  if (vol.rebuild_blank[column]) {
    // A blank leg lacks everything: mark every region of the source's extents first (idempotent,
    // persisted), so that a crash halfway resumes from the bits instead of starting over.
    for (const x of extents) await need(deps, srcDrive).dirtySet(src, x * E, E);
  }
  // The dirty regions of each extent of both legs, as column offsets: the source's (written while
  // this leg was away) and this leg's own (writes it may have lost from its cache).
  const marked = new Set<number>();
  for (const [drive, uuid, exts] of [
    [srcDrive, src, extents],
    [dstDrive, dst, vol.columns[column]!.extents],
  ] as const) {
    const Rd = deps.regionBytes(drive);
    for (let i = 0; i < exts.length; i++) {
      for (const r of await need(deps, drive).dirtyGet(uuid, exts[i]! * E, E)) {
        const from = Math.max(0, r * Rd - exts[i]! * E);
        const to = Math.min(E, (r + 1) * Rd - exts[i]! * E);
        for (let at = Math.floor(from / R) * R; at < to; at += R) marked.add(i * E + at);
      }
    }
  }
  const todo = [...marked].sort((a, b) => a - b);
  progress.total_bytes = todo.length * R;
  progress.done_bytes = 0;
  const buf = new Uint8Array(R);
  const opts = { lossy: deps.lossy(srcDrive) };
  for (const at of todo) {
    if (cancelled()) return;
    const so = driveOffset(vol, source, at);
    const doff = driveOffset(vol, column, at);
    const s = need(deps, srcDrive);
    const release = await deps.claims.claim(srcDrive, so, R);
    try {
      // A lock of ours may be left here by a copy whose UNLOCK was lost: it would hold us back.
      await s.unlock(src, so, R);
      await s.lock(src, so, R);
      try {
        await s.read(src, so, buf);
        await need(deps, dstDrive).write(dst, doff, buf, true, opts);
      } finally {
        // A lost UNLOCK leaves our lock held; the next claimant of the range frees it.
        await s.unlock(src, so, R).catch(() => {});
      }
    } finally {
      release();
    }
    if (clearBits) {
      await s.dirtyClear(src, so, R);
      await need(deps, dstDrive).dirtyClear(dst, doff, R);
    } else {
      // Kept for the dead leg, but known now: no longer inherited from a lost lock table.
      await need(deps, dstDrive).dirtySet(dst, doff, R);
    }
    progress.done_bytes += R;
    if (deps.pause_ms > 0) await sleep(deps.env, deps.pause_ms);
  }
}

export interface HeldLock {
  client_id: number;
  offset: number;
  length: number;
}

/** A lock held by a client that is no longer admitted (dead and fenced), on one drive. */
export interface StaleLock extends HeldLock {
  drive_uuid: string;
}

/**
 * Frees the locks dead (fenced) clients hold on the legs of mirror set `set`, lock unit by lock
 * unit of the set: the unit is copied from its first locked leg that is complete to the set's
 * other writable legs, then every dead lock of the unit, on every leg, is freed. Returns the units
 * recovered; one left for later is recovered by a later call.
 *
 * No live write may land between the copy's read and its writes, or the copy would put older data
 * over it on one leg only (simulator seed 359 with --mirror: the dead client's lock on one leg was
 * freed first, a writer locked that leg and wrote it, then the copy for the other leg's lock
 * overwrote it). So the unit's dead locks are all held until its copy is done, and the locks that
 * writers of the current topology take for the unit are taken too, without waiting: a writer may
 * hold one while it waits for a dead lock (two lock legs), so a unit whose lock is busy is left
 * for the next round.
 */
export async function recoverSetLocks(deps: RebuildDeps, vol: VolumeRecord, set: number, stale: StaleLock[]): Promise<number> {
  const E = vol.extent_size_bytes;
  const U = LOCK_UNIT_BYTES;
  const cols = setColumns(vol, set);
  const units = new Map<number, { column: number; drive_offset: number; client_id: number }[]>();
  for (const l of stale) {
    const column = cols.find((c) => vol.columns[c]!.drive_uuid === l.drive_uuid);
    if (column === undefined) continue;
    for (let off = l.offset - (l.offset % U); off < l.offset + l.length; off += U) {
      const idx = vol.columns[column]!.extents.indexOf(Math.floor(off / E));
      if (idx < 0) continue; // a lock on another volume's extent
      const unit = Math.floor((idx * E + (off % E)) / U);
      units.set(unit, [...(units.get(unit) ?? []), { column, drive_offset: off, client_id: l.client_id }]);
    }
  }
  const topology = setTopologies(vol)[set]!;
  let n = 0;
  for (const [unit, held] of units) {
    const at = unit * U;
    const dead = new Set(held.map((h) => h.column));
    const ours: { drive_uuid: string; offset: number; release: () => void; locked: boolean }[] = [];
    try {
      let busy = false;
      for (const c of lockLegsOf(topology, unit).map((i) => cols[i]!)) {
        if (dead.has(c)) continue;
        const drive_uuid = vol.columns[c]!.drive_uuid;
        const offset = driveOffset(vol, c, at);
        const mine = { drive_uuid, offset, release: await deps.claims.claim(drive_uuid, offset, U), locked: false };
        ours.push(mine);
        const s = need(deps, drive_uuid);
        await s.unlock(uuidFromString(drive_uuid), offset, U); // one of ours left by a lost UNLOCK (range-claims.ts)
        mine.locked = await s.tryLock(uuidFromString(drive_uuid), offset, U);
        if (!mine.locked) {
          busy = true;
          break;
        }
      }
      if (busy) continue;
      const source = cols.find((c) => dead.has(c) && vol.legs[c] === "ok");
      if (source !== undefined) {
        const src = vol.columns[source]!.drive_uuid;
        const s = need(deps, src);
        const buf = new Uint8Array(U);
        const so = driveOffset(vol, source, at);
        await s.read(uuidFromString(src), so, buf);
        const opts = { lossy: deps.lossy(src) };
        for (const other of cols) {
          if (other === source || vol.legs[other] === "dead") continue;
          const od = vol.columns[other]!.drive_uuid;
          await need(deps, od).write(uuidFromString(od), driveOffset(vol, other, at), buf, true, opts);
        }
        // A dead leg lacks what the client wrote here: the region is the rebuild's to copy. (The
        // client's own mark, set by its LOCK, is this target's and would clear once unlocked.)
        if (cols.some((c) => vol.legs[c] === "dead")) await s.dirtySet(uuidFromString(src), so, U);
      }
      for (const h of held) {
        const d = vol.columns[h.column]!.drive_uuid;
        await need(deps, d).unlockFor(uuidFromString(d), h.drive_offset, U, h.client_id);
      }
      n++;
    } finally {
      for (const o of ours) {
        if (o.locked) await deps.sessionOf(o.drive_uuid)?.unlock(uuidFromString(o.drive_uuid), o.offset, U).catch(() => {});
        o.release();
      }
    }
  }
  return n;
}
