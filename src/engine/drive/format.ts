/**
 * Formats a store as an nvmesh drive: superblock (primary and backup), two empty metadata slots,
 * a zeroed write-intent bitmap. The data area is left as it is: extents are zeroed or fully
 * written when a volume takes them, not here.
 */
import { NIL_UUID, uuidFromString, uuidToString } from "../uuid.ts";
import { DriveFormatError } from "./formatted-api.ts";
import { locateSuperblock } from "./locate-superblock.ts";
import { encodeMetaSlot } from "./meta-slot.ts";
import type { DriveStore } from "./store.ts";
import {
  backupSuperblockOffset,
  computeGeometry,
  DEFAULT_EXTENT_SIZE_BYTES,
  encodeSuperblock,
  FORMAT_VERSION,
  isInvalid,
  metaSlotOffset,
  type Superblock,
  SUPERBLOCK_BYTES,
} from "./superblock.ts";

export interface FormatOptions {
  drive_uuid: string;
  /** Power of two, 1 MiB to 1 GiB; 16 MiB by default. */
  extent_size_bytes?: number;
  /** Overwrite whatever the store holds: another nvmesh drive, a filesystem, a damaged drive. */
  force?: boolean;
  /** Look for foreign filesystems and volumes before formatting (default true). Our own
   * superblock is always looked for unless force is set. */
  existingCheck?: boolean;
}

export async function formatDrive(store: DriveStore, opts: FormatOptions): Promise<Superblock> {
  const drive_uuid = uuidToString(uuidFromString(opts.drive_uuid));
  if (drive_uuid === NIL_UUID) throw new DriveFormatError("refusing to format with the nil drive uuid");
  const extent_size_bytes = opts.extent_size_bytes ?? DEFAULT_EXTENT_SIZE_BYTES;
  const g = computeGeometry(store.size_bytes, extent_size_bytes);
  if (isInvalid(g)) throw new DriveFormatError(`cannot format ${store.describe}: ${g.invalid}`);

  if (!opts.force) await refuseExisting(store, opts.existingCheck ?? true);

  const sb: Superblock = { ...g, format_version: FORMAT_VERSION, flags: 0, drive_uuid, cluster_uuid: NIL_UUID };
  const sbBytes = encodeSuperblock(sb);
  // Invalidate the old primary first: a crash mid-format must not leave an old identity in
  // front of freshly zeroed metadata.
  await store.write(0, new Uint8Array(SUPERBLOCK_BYTES), true);
  await store.writeZeroes(g.meta_offset, 2 * g.meta_slot_bytes, false);
  await store.writeZeroes(g.bitmap_offset, g.bitmap_bytes, false);
  for (const slot_index of [0, 1] as const) {
    const slot = encodeMetaSlot({ generation: 0, payload: null }, { slot_index, drive_uuid, meta_slot_bytes: g.meta_slot_bytes });
    await store.write(metaSlotOffset(g, slot_index), slot, false);
  }
  await store.write(backupSuperblockOffset(g.size_bytes), sbBytes, false);
  await store.flush();
  // The primary goes last: until it is durable, the store is not an nvmesh drive.
  await store.write(0, sbBytes, true);
  return sb;
}

async function refuseExisting(store: DriveStore, foreignCheck: boolean): Promise<void> {
  const found = await locateSuperblock(store);
  switch (found.kind) {
    case "found": {
      const owner = found.sb.cluster_uuid === NIL_UUID ? "unclaimed" : `member of cluster ${found.sb.cluster_uuid}`;
      throw new DriveFormatError(
        `${store.describe} already holds nvmesh drive ${found.sb.drive_uuid} (${owner}); --force reformats it, and its data is lost`,
      );
    }
    case "damaged":
      throw new DriveFormatError(`${store.describe} holds a damaged nvmesh drive: ${found.reason}; --force reformats it`);
    case "not-nvmesh":
      if (found.backup) {
        throw new DriveFormatError(
          `${store.describe} ends with the backup superblock of nvmesh drive ${found.backup.drive_uuid}; --force reformats it`,
        );
      }
      if (foreignCheck && found.foreign) {
        throw new DriveFormatError(`${store.describe} looks like it holds a ${found.foreign}; --force overwrites it`);
      }
  }
}
