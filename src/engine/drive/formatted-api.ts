/**
 * A formatted nvmesh drive as the target serves it: the superblock's identity, the data area as
 * a DriveStore of its own (offset 0 = first data byte, so a request can never reach metadata),
 * the two alternating metadata slots, and the write-intent bitmap. Implemented in
 * ./formatted-drive.ts.
 */
import type { DriveInfo, MetaReadAnswer } from "../wire/control.ts";
import type { DriveStore } from "./store.ts";

export interface FormattedDrive {
  /** Identity and geometry from the superblock; state "ok". */
  readonly info: DriveInfo;
  /** The data area only. */
  readonly data: DriveStore;
  /**
   * The newest slot whose CRC is valid ({generation 0, payload null} if none was ever written),
   * and what the other slot holds (older, torn, or unreadable).
   */
  metaRead(): Promise<MetaReadAnswer>;
  /**
   * Writes the older slot and makes it durable. Throws StaleGenerationError if not newer, and
   * UnreadableSlotError if that slot cannot be read (it is never written over).
   */
  metaWrite(generation: number, payload: Uint8Array): Promise<void>;
  /** Sets the cluster uuid of an unclaimed drive, durably. Throws AlreadyClaimedError otherwise. */
  claim(cluster_uuid: string): Promise<void>;
  /**
   * The write-intent (dirty) bitmap in RAM, read from the drive at open (all ones if it could not
   * be read: every region is then treated as dirty). Bit i (byte i >> 3, bit i & 7, LSB first)
   * covers data-area region i, bytes [i × bitmap_region_bytes, (i + 1) × bitmap_region_bytes).
   * The owner (the target) changes bits here and makes them durable with persistBitmapBlock.
   */
  readonly bitmap: Uint8Array;
  readonly bitmap_region_bytes: number;
  /** False when the bitmap could not be read at open: the all-ones RAM copy is not on the drive. */
  readonly bitmap_loaded: boolean;
  /**
   * Writes 4 KiB block `index` of the RAM bitmap (bits 32768 × index ..) to the drive's bitmap
   * area with FUA; resolves once durable. The block's content is taken at the call. Writes of the
   * same block must not overlap: the caller serialises them (target/dirty.ts).
   */
  persistBitmapBlock(index: number): Promise<void>;
  /**
   * The highest control-plane version this drive has durably recorded (0: none yet, or a drive
   * formatted before the record existed). Read at open; raised by persistControlVersion.
   */
  readonly control_version: number;
  /**
   * Records durably (FUA) that the drive has seen `version`; nothing to do when the record is at
   * or above it already. Writes are serialised and alternate between two copies, so a torn write
   * leaves the previous one. Rejects on an I/O error, or on a drive whose layout has no room for
   * the record.
   */
  persistControlVersion(version: number): Promise<void>;
  close(): Promise<void>;
}

export class DriveFormatError extends Error {}
export class StaleGenerationError extends Error {}
/** The slot a metadata write would go to cannot be read: refused (docs/toma-cluster.md, A2b). */
export class UnreadableSlotError extends Error {}
export class AlreadyClaimedError extends Error {}
