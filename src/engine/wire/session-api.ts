/**
 * What a requester (client data path, TOMA) sees of one connection to a target.
 * Implemented by ./session.ts over an Env connection; requests are pipelined and complete out of
 * order. Every method rejects with TargetError when the target answers a non-OK status, and with
 * SessionClosedError when the connection is gone (in-flight requests fail at once, never hang).
 */
import type { DriveInfo, MetaSlot, TargetInfo } from "./control.ts";
import type { Status } from "./header.ts";

export class TargetError extends Error {
  constructor(
    readonly status: Status,
    message: string,
  ) {
    super(message);
  }
}

export class SessionClosedError extends Error {}

export interface TargetSession {
  readonly address: string;
  /** From the HELLO exchange. */
  readonly info: TargetInfo;
  readonly closed: boolean;
  /** Called once when the connection ends for any reason. */
  onClose: ((reason: string) => void) | null;

  read(drive: Uint8Array, offset: number, dst: Uint8Array): Promise<void>;
  /** These four resolve with the drive's cache epoch (DriveStore.cache_epoch; 0 when it has none). */
  write(drive: Uint8Array, offset: number, src: Uint8Array, fua: boolean): Promise<number>;
  flush(drive: Uint8Array): Promise<number>;
  trim(drive: Uint8Array, offset: number, length: number): Promise<number>;
  writeZeroes(drive: Uint8Array, offset: number, length: number, fua: boolean): Promise<number>;

  listDrives(): Promise<DriveInfo[]>;
  metaRead(drive: Uint8Array): Promise<MetaSlot>;
  metaWrite(drive: Uint8Array, generation: number, payload: Uint8Array): Promise<void>;
  claim(drive: Uint8Array, cluster_uuid: string): Promise<void>;

  close(): void;
}
