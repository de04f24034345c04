/**
 * A formatted nvmesh drive as the target serves it: the superblock's identity, the data area as
 * a DriveStore of its own (offset 0 = first data byte, so a request can never reach metadata),
 * and the two alternating metadata slots. Implemented in ./formatted-drive.ts.
 */
import type { DriveInfo, MetaSlot } from "../wire/control.ts";
import type { DriveStore } from "./store.ts";

export interface FormattedDrive {
  /** Identity and geometry from the superblock; state "ok". */
  readonly info: DriveInfo;
  /** The data area only. */
  readonly data: DriveStore;
  /** The newest slot whose CRC is valid; {generation 0, payload null} if none was ever written. */
  metaRead(): Promise<MetaSlot>;
  /** Writes the older slot and makes it durable. Throws StaleGenerationError if not newer. */
  metaWrite(generation: number, payload: Uint8Array): Promise<void>;
  /** Sets the cluster uuid of an unclaimed drive, durably. Throws AlreadyClaimedError otherwise. */
  claim(cluster_uuid: string): Promise<void>;
  close(): Promise<void>;
}

export class DriveFormatError extends Error {}
export class StaleGenerationError extends Error {}
export class AlreadyClaimedError extends Error {}
