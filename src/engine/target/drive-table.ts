/**
 * The drives one target serves, looked up by the 16-byte uuid of each request. Drives come and go
 * at run time (hot-plug); a request that finds no entry is answered NO_SUCH_DRIVE, while requests
 * already running on a removed drive finish against the drive object they started with.
 */
import type { FormattedDrive } from "../drive/formatted-api.ts";
import { Serial } from "../serial.ts";
import { uuidFromString } from "../uuid.ts";
import type { DriveInfo } from "../wire/control.ts";
import { LOCK_UNIT_BYTES, Status } from "../wire/header.ts";
import { ControlVersionGate } from "./control-version-gate.ts";
import { DirtyBits } from "./dirty.ts";
import { type Admission, AdmittedRequests, DriveFence } from "./fence.ts";
import { LockTable } from "./locks.ts";
import { RequestError } from "./reply.ts";

export interface ServedDrive {
  readonly drive: FormattedDrive;
  /** Bytes a request may address: extent_count * extent_size_bytes. */
  readonly data_bytes: number;
  /**
   * Metadata writes and claims of this drive run one at a time, so two connections racing on
   * the same slot can never both see the old generation and both "win".
   */
  metaChain: Serial;
  /**
   * Fencing: which extents belong to which volume, and which clients may reach which volume, set
   * by FENCE (fence.ts). RAM only, and per served instance: a drive plugged again starts empty.
   */
  readonly fence: DriveFence;
  /** Client requests executing on the drive, for FENCE to wait on (fencing enforced only). */
  readonly admitted: AdmittedRequests;
  readonly locks: LockTable<Admission>;
  readonly dirty: DirtyBits;
  /** The newest control-plane version seen, durable on the drive (control-version-gate.ts). */
  readonly control: ControlVersionGate;
  /**
   * LOSSY_COPY writes received (RAM): they change the epoch in answers (answeredEpoch). Starting
   * again from 0 after a restart changes it too, which at worst fails a flush that had nothing to
   * fear.
   */
  epoch_bumps: number;
  /** Random per serving of the drive: mixed into the answered epoch once there are bumps. */
  readonly epoch_salt: number;
}

/**
 * The cache epoch a drive states in its answers: the drive's own while no LOSSY_COPY came, else
 * a mix of it, this serving's salt and the bumps. A plain sum once let a restart (bumps back to 0)
 * and a later cache loss (epoch + 1) add up to the very number a client had acknowledged writes
 * under, and the loss went unseen (simulator seed 53 with --mirror).
 */
export function answeredEpoch(d: ServedDrive): number {
  const base = (d.drive.data.cache_epoch ?? 0) >>> 0;
  if (d.epoch_bumps === 0) return base;
  return (Math.imul(base ^ d.epoch_salt, 0x9e3779b1) + d.epoch_bumps) >>> 0;
}

const HEX = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, "0"));

/** 32 hex chars; cheap enough to compute per request. */
export function uuidKey(b: Uint8Array): string {
  let s = "";
  for (let i = 0; i < 16; i++) s += HEX[b[i]!];
  return s;
}

function sameUuid(a: Uint8Array, b: Uint8Array): boolean {
  for (let i = 0; i < 16; i++) if (a[i] !== b[i]) return false;
  return true;
}

export class DriveTable {
  private readonly byKey = new Map<string, ServedDrive>();
  /** The last drive found, by its bytes: a connection addresses one drive for long runs. */
  private lastUuid: Uint8Array | null = null;
  private lastEntry: ServedDrive | undefined = undefined;

  add(drive: FormattedDrive, epoch_salt: number): void {
    this.lastUuid = null;
    const key = uuidKey(uuidFromString(drive.info.drive_uuid));
    if (this.byKey.has(key)) throw new Error(`drive ${drive.info.drive_uuid} is already served`);
    const data_bytes = Math.min(
      drive.info.extent_count * drive.info.extent_size_bytes,
      drive.data.size_bytes,
    );
    const locks = new LockTable<Admission>();
    this.byKey.set(key, {
      drive,
      data_bytes,
      metaChain: new Serial(),
      fence: new DriveFence(drive.info.drive_uuid, drive.info.extent_size_bytes, drive.info.extent_count),
      admitted: new AdmittedRequests(),
      locks,
      dirty: new DirtyBits(drive, data_bytes, (offset, length) =>
        locks.anyLocked(Math.floor(offset / LOCK_UNIT_BYTES), Math.floor((offset + length - 1) / LOCK_UNIT_BYTES)),
      ),
      control: new ControlVersionGate(drive),
      epoch_bumps: 0,
      epoch_salt,
    });
  }

  /** Returns the drive that was removed, or undefined if it was not served. */
  remove(drive_uuid: string): FormattedDrive | undefined {
    this.lastUuid = null;
    const key = uuidKey(uuidFromString(drive_uuid));
    const entry = this.byKey.get(key);
    this.byKey.delete(key);
    entry?.locks.failAll(new RequestError(Status.NO_SUCH_DRIVE, `drive ${drive_uuid} was removed while waiting for a lock`));
    return entry?.drive;
  }

  get(uuid: Uint8Array): ServedDrive | undefined {
    if (uuid.length !== 16) return undefined;
    const last = this.lastUuid;
    if (last !== null && sameUuid(last, uuid)) return this.lastEntry;
    const entry = this.byKey.get(uuidKey(uuid));
    if (entry) {
      this.lastUuid = uuid.slice();
      this.lastEntry = entry;
    }
    return entry;
  }

  all(): IterableIterator<ServedDrive> {
    return this.byKey.values();
  }

  infos(): DriveInfo[] {
    return Array.from(this.byKey.values(), (e) => {
      const io_path = e.drive.data.io_path;
      return { ...e.drive.info, cache_epoch: e.drive.data.cache_epoch ?? 0, ...(io_path === undefined ? {} : { io_path }) };
    });
  }
}
