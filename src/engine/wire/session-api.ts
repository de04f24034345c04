/**
 * What a requester (client data path, TOMA) sees of one connection to a target.
 * Implemented by ./session.ts over a FrameLink (net/frame-link.ts); requests are pipelined and complete out of
 * order. Every method rejects with TargetError when the target answers a non-OK status, and with
 * SessionClosedError when the connection is gone (in-flight requests fail at once, never hang).
 */
import type { DriveInfo, FenceBody, LockEntry, MetaReadAnswer, TargetInfo } from "./control.ts";
import type { Status } from "./header.ts";
import type { Transport } from "../net/frame-link.ts";

/** The cluster key check of HELLO failed, either way: the message says which side lacks what. */
export class AuthError extends Error {}

export class TargetError extends Error {
  constructor(
    readonly status: Status,
    message: string,
    /** STALE of a control-plane version: the newest version the drive has seen. */
    readonly version: number | null = null,
  ) {
    super(message);
  }
}

export class SessionClosedError extends Error {}

/** Options of the ops that change data (WRITE, TRIM, WRITE_ZEROES). */
export interface WriteOptions {
  /**
   * Set the dirty bits of the regions the range touches first: the target executes the op only
   * once those bits are durable (a degraded mirror's writes, DESIGN.md §3).
   */
  dirty?: boolean;
  /**
   * A mirror leg's write while every leg is written: the target marks the regions until flushes
   * made the write durable, so a lost cache leaves them marked (target/dirty.ts).
   */
  intent?: boolean;
  /**
   * Take the lock of the range's units first, as LOCK does, then run the op (Flag.LOCK); the lock
   * stays held after the answer, until UNLOCK. An error answer may leave it held, as a LOCK's may.
   */
  lock?: boolean;
  /** TOMA only: a copy from a leg that lost its cache (Flag.LOSSY_COPY). */
  lossy?: boolean;
  /**
   * The generation the op was planned under, stamped instead of the session's: a write planned on
   * an older view must be refused by a fence that moved past it, not pass under a newer stamp.
   */
  generation?: number;
}

export interface TargetSession {
  readonly address: string;
  /** From the HELLO exchange. */
  readonly info: TargetInfo;
  readonly closed: boolean;
  /** How the session's frames travel (tcp, rdma, in-process), and why that way (set by who opened it). */
  transport: Transport;
  /** Stamped in every request header: who we are and the topology generation we run (fencing; WriteOptions.generation overrides it per op). */
  client_id: number;
  generation: number;
  /** Called once when the connection ends for any reason. */
  onClose: ((reason: string) => void) | null;

  read(drive: Uint8Array, offset: number, dst: Uint8Array): Promise<void>;
  /**
   * READ with TEST_LOCK: rejects with TargetError(Status.LOCKED), dst then unspecified, if a lock
   * unit of the range is locked now or was locked at any time during the read; read again later.
   */
  readTestLock(drive: Uint8Array, offset: number, dst: Uint8Array): Promise<void>;
  /** These four resolve with the drive's cache epoch (DriveStore.cache_epoch; 0 when it has none). */
  write(drive: Uint8Array, offset: number, src: Uint8Array, fua: boolean, opts?: WriteOptions): Promise<number>;
  flush(drive: Uint8Array): Promise<number>;
  trim(drive: Uint8Array, offset: number, length: number, opts?: WriteOptions): Promise<number>;
  writeZeroes(drive: Uint8Array, offset: number, length: number, fua: boolean, opts?: WriteOptions): Promise<number>;

  /**
   * Locks every 64 KiB lock unit (LOCK_UNIT_BYTES) of the range for this session's client_id, all
   * or nothing; resolves once held, after waiting as long as any unit is held by anyone (this
   * client included). At most MAX_LOCK_BYTES (64 MiB) per call. If the session closes before the
   * answer, the lock may or may not be held: UNLOCK the range (idempotent) before locking again.
   */
  lock(drive: Uint8Array, offset: number, length: number): Promise<void>;
  /** Releases the units of the range held by this session's client_id; others are left alone. */
  /** LOCK that never waits (TEST_LOCK): false, holding nothing, when a unit is held or waited for. */
  tryLock(drive: Uint8Array, offset: number, length: number): Promise<boolean>;
  unlock(drive: Uint8Array, offset: number, length: number): Promise<void>;
  /** UNLOCK on behalf of client_id (a TOMA freeing a dead client's stale lock). */
  unlockFor(drive: Uint8Array, offset: number, length: number, client_id: number): Promise<void>;
  /** Held locks, as runs of units of one client sorted by offset (role "toma" only). */
  lockList(drive: Uint8Array): Promise<LockEntry[]>;
  /** Sets the drive's client registrations (role "toma" only); see FenceRequest. */
  fence(drive: Uint8Array, body: FenceBody): Promise<void>;
  /** Indices of the dirty regions (bitmap_region_bytes, 1 MiB) the range touches, ascending. */
  dirtyGet(drive: Uint8Array, offset: number, length: number): Promise<number[]>;
  /** Those of them set before this serving of the drive began and untouched since (role "toma" only). */
  dirtyInherited(drive: Uint8Array, offset: number, length: number): Promise<number[]>;
  /** Marks every region the range touches dirty; resolves once durable. */
  dirtySet(drive: Uint8Array, offset: number, length: number): Promise<void>;
  /** Clears the dirty bit of every region the range touches; resolves once durable. */
  dirtyClear(drive: Uint8Array, offset: number, length: number): Promise<void>;

  listDrives(): Promise<DriveInfo[]>;
  /** The current slot and what the other one holds (older, torn, unreadable). */
  metaRead(drive: Uint8Array): Promise<MetaReadAnswer>;
  metaWrite(drive: Uint8Array, generation: number, payload: Uint8Array): Promise<void>;
  claim(drive: Uint8Array, cluster_uuid: string): Promise<void>;

  /** Ends the session: every request not answered yet fails now, naming `reason` (why it was given up). */
  close(reason?: string): void;
}
