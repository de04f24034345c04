/**
 * An opened nvmesh drive: the FormattedDrive of formatted-api.ts over any DriveStore. Opening
 * validates everything before trusting it and never writes; metadata and claim writes are
 * serialised, so two concurrent metaWrite calls cannot pick the same slot.
 */
import type { Logger } from "../env.ts";
import { Serial } from "../serial.ts";
import { isNilUuid, NIL_UUID, uuidFromString } from "../uuid.ts";
import type { DriveInfo, MetaReadAnswer, OtherSlot } from "../wire/control.ts";
import { AlreadyClaimedError, DriveFormatError, type FormattedDrive, StaleGenerationError, UnreadableSlotError } from "./formatted-api.ts";
import { CONTROL_VERSION_END, CONTROL_VERSION_OFFSETS, decodeControlVersion, encodeControlVersion } from "./control-version.ts";
import { locateSuperblock } from "./locate-superblock.ts";
import {
  checkMetaSlot,
  chooseMetaSlot,
  encodeMetaSlot,
  maxMetaPayloadBytes,
  type MetaSlotContent,
  metaSlotReadBytes,
  type SlotContext,
} from "./meta-slot.ts";
import { OffsetStore } from "./offset-store.ts";
import type { DriveStore } from "./store.ts";
import {
  backupSuperblockOffset,
  BLOCK_BYTES,
  encodeSuperblock,
  type Invalid,
  isInvalid,
  metaSlotOffset,
  type Superblock,
} from "./superblock.ts";

export interface OpenOptions {
  log?: Logger;
}

/** Opens the nvmesh drive held by store; path is recorded in DriveInfo for people to read. */
export async function openDrive(store: DriveStore, path: string, opts: OpenOptions = {}): Promise<FormattedDrive> {
  const found = await locateSuperblock(store);
  if (found.kind !== "found") throw new DriveFormatError(`${store.describe}: ${found.reason}`);
  for (const w of found.warnings) opts.log?.warn(`drive ${found.sb.drive_uuid}: ${w}`, { drive: store.describe });
  const bitmap = new Uint8Array(found.sb.bitmap_bytes);
  let loaded = true;
  try {
    await store.read(found.sb.bitmap_offset, bitmap);
  } catch (e) {
    loaded = false;
    // An unreadable bitmap cannot say which regions are clean: treating every region as dirty
    // costs a full resync of this drive's mirrors, never a missed one. The block is rewritten
    // (and the sector remapped) the first time a bit of it is persisted.
    bitmap.fill(0xff);
    opts.log?.warn(`drive ${found.sb.drive_uuid}: write-intent bitmap unreadable, every region counts as dirty`, {
      drive: store.describe,
      error: (e as Error).message,
    });
  }
  const cv = await readControlVersion(store, found.sb, opts.log);
  return new Drive(store, path, found.sb, bitmap, loaded, cv);
}

/**
 * The higher of the two control-version copies, and which copy the next write goes to (the
 * other one). A copy that cannot be read counts as holding none; if it held the highest version,
 * the drive has gone back to the other copy's (logged: see docs/on-drive-format.md).
 */
async function readControlVersion(
  store: DriveStore,
  sb: Superblock,
  log: Logger | undefined,
): Promise<{ version: number; next: 0 | 1 }> {
  if (sb.meta_offset < CONTROL_VERSION_END) return { version: 0, next: 0 };
  const found: number[] = [];
  for (const off of CONTROL_VERSION_OFFSETS) {
    const b = new Uint8Array(BLOCK_BYTES);
    try {
      await store.read(off, b);
      const d = decodeControlVersion(b, sb.drive_uuid);
      found.push("version" in d ? d.version : -1);
    } catch (e) {
      log?.warn(`drive ${sb.drive_uuid}: control-version copy at ${off} unreadable`, { drive: store.describe, error: (e as Error).message });
      found.push(-1);
    }
  }
  const [a, b] = found as [number, number];
  return { version: Math.max(0, a, b), next: a >= b ? 1 : 0 };
}

class Drive implements FormattedDrive {
  readonly data: DriveStore;
  readonly bitmap_region_bytes: number;
  private sb: Superblock;
  /** Serialises metaWrite and claim. */
  private readonly slots = new Serial();
  /** Bitmap writes not finished yet: close() waits for them. */
  private readonly bitmapWrites = new Set<Promise<unknown>>();
  control_version: number;
  /** The control-version copy the next write goes to (never the one holding the current value). */
  private cv_next: 0 | 1;
  private readonly cvWrites = new Serial();

  constructor(
    private readonly store: DriveStore,
    private readonly path: string,
    sb: Superblock,
    readonly bitmap: Uint8Array,
    readonly bitmap_loaded: boolean,
    cv: { version: number; next: 0 | 1 },
  ) {
    this.control_version = cv.version;
    this.cv_next = cv.next;
    this.sb = sb;
    this.data = new OffsetStore(store, sb.data_offset, sb.extent_count * sb.extent_size_bytes, "data area");
    this.bitmap_region_bytes = sb.bitmap_region_bytes;
  }

  get info(): DriveInfo {
    const sb = this.sb;
    return {
      drive_uuid: sb.drive_uuid,
      cluster_uuid: sb.cluster_uuid,
      path: this.path,
      size_bytes: sb.size_bytes,
      data_offset_bytes: sb.data_offset,
      extent_size_bytes: sb.extent_size_bytes,
      extent_count: sb.extent_count,
      format_version: sb.format_version,
      state: "ok",
    };
  }

  private ctx(slot_index: 0 | 1): SlotContext {
    return { slot_index, drive_uuid: this.sb.drive_uuid, meta_slot_bytes: this.sb.meta_slot_bytes };
  }

  /** One slot decoded; `io` is set when the read itself failed (a media error), not the content. */
  private async readSlot(slot_index: 0 | 1): Promise<{ slot: MetaSlotContent | Invalid; io: boolean }> {
    const off = metaSlotOffset(this.sb, slot_index);
    const ctx = this.ctx(slot_index);
    try {
      const head = new Uint8Array(BLOCK_BYTES);
      await this.store.read(off, head);
      const need = metaSlotReadBytes(head, ctx);
      if (need === head.length) return { slot: checkMetaSlot(head, ctx), io: false };
      const all = new Uint8Array(need);
      all.set(head);
      await this.store.read(off + head.length, all.subarray(head.length));
      return { slot: checkMetaSlot(all, ctx), io: false };
    } catch (e) {
      // A latent sector error in one slot is what the other slot is for.
      return { slot: { invalid: `unreadable: ${(e as Error).message}` }, io: true };
    }
  }

  /**
   * Both slots: the current one (chooseMetaSlot), the slot the next write goes to, and what that
   * other slot holds. A media error there is "unreadable", never "torn": it may hide a newer write.
   */
  private async readSlots(): Promise<{ current: MetaSlotContent; next_slot: 0 | 1; other: OtherSlot }> {
    const raw = [await this.readSlot(0), await this.readSlot(1)];
    const { current, next_slot } = chooseMetaSlot([raw[0]!.slot, raw[1]!.slot], this.sb.drive_uuid);
    // The other slot is the one not answered: next_slot, except when both are format's empty
    // slots (then slot 0 is both current and next, and slot 1 is the other, equally empty).
    const other_index = current === raw[next_slot]!.slot ? 1 - next_slot : next_slot;
    const o = raw[other_index]!;
    const other: OtherSlot = o.io ? "unreadable" : isInvalid(o.slot) ? "torn" : "older";
    return { current, next_slot, other };
  }

  async metaRead(): Promise<MetaReadAnswer> {
    const { current, other } = await this.readSlots();
    return { generation: current.generation, payload: current.payload, other };
  }

  metaWrite(generation: number, payload: Uint8Array): Promise<void> {
    return this.slots.run(async () => {
      if (!Number.isSafeInteger(generation) || generation < 1) throw new RangeError(`metadata generation must be a positive integer, got ${generation}`);
      const max = maxMetaPayloadBytes(this.sb.meta_slot_bytes);
      if (payload.length > max) throw new RangeError(`metadata payload of ${payload.length} bytes exceeds the slot's ${max}`);
      // Re-read both slots rather than trust a cache: the choice must rest on what is on the
      // drive, and a slot that both decoded as corrupt stops us here instead of being overwritten.
      const { current, next_slot, other } = await this.readSlots();
      if (generation <= current.generation) {
        throw new StaleGenerationError(`drive ${this.sb.drive_uuid}: metadata generation ${generation} is not newer than ${current.generation}`);
      }
      // Writing over a slot we cannot read would erase the only evidence that it held something
      // newer than the current slot (docs/toma-cluster.md, A2b): refuse until a repair blanks both.
      if (other === "unreadable") {
        throw new UnreadableSlotError(
          `drive ${this.sb.drive_uuid}: metadata slot ${next_slot} is unreadable; refusing to write over it (the drive needs a metadata repair)`,
        );
      }
      const bytes = encodeMetaSlot({ generation, payload }, this.ctx(next_slot));
      await this.store.write(metaSlotOffset(this.sb, next_slot), bytes, true);
    });
  }

  claim(cluster_uuid: string): Promise<void> {
    return this.slots.run(async () => {
      const raw = uuidFromString(cluster_uuid);
      if (isNilUuid(raw)) throw new RangeError("cannot claim a drive for the nil cluster uuid");
      if (this.sb.cluster_uuid !== NIL_UUID) {
        throw new AlreadyClaimedError(`drive ${this.sb.drive_uuid} already belongs to cluster ${this.sb.cluster_uuid}`);
      }
      const next: Superblock = { ...this.sb, cluster_uuid: cluster_uuid.toLowerCase() };
      const bytes = encodeSuperblock(next);
      // Primary first: a crash between the two leaves the newer primary, which open prefers.
      await this.store.write(0, bytes, true);
      await this.store.write(backupSuperblockOffset(next.size_bytes), bytes, true);
      this.sb = next;
    });
  }

  persistBitmapBlock(index: number): Promise<void> {
    const blocks = this.bitmap.length / BLOCK_BYTES;
    if (!Number.isInteger(index) || index < 0 || index >= blocks) {
      return Promise.reject(new RangeError(`bitmap block ${index} outside 0..${blocks - 1}`));
    }
    const bytes = this.bitmap.slice(index * BLOCK_BYTES, (index + 1) * BLOCK_BYTES);
    const w = this.store.write(this.sb.bitmap_offset + index * BLOCK_BYTES, bytes, true);
    const tracked = w.catch(() => {});
    this.bitmapWrites.add(tracked);
    tracked.then(() => this.bitmapWrites.delete(tracked));
    return w;
  }

  persistControlVersion(version: number): Promise<void> {
    if (!Number.isSafeInteger(version) || version < 0) return Promise.reject(new RangeError(`bad control-plane version ${version}`));
    // One write at a time, each to the copy not holding the current version.
    return this.cvWrites.run(async () => {
      if (version <= this.control_version) return;
      if (this.sb.meta_offset < CONTROL_VERSION_END) {
        throw new RangeError(`drive ${this.sb.drive_uuid}: metadata at ${this.sb.meta_offset} leaves no room for the control-version record`);
      }
      const at = this.cv_next;
      await this.store.write(CONTROL_VERSION_OFFSETS[at], encodeControlVersion(version, this.sb.drive_uuid), true);
      this.control_version = version;
      this.cv_next = at === 0 ? 1 : 0;
    });
  }

  async close(): Promise<void> {
    await this.slots.idle();
    await this.cvWrites.idle();
    await Promise.all(this.bitmapWrites);
    await this.data.close();
    await this.store.close();
  }
}
