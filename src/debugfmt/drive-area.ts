/**
 * Where a drive's debug sectors are: the data area its nvmesh superblock describes (found with the
 * engine's read-only superblock recovery, primary or backup), or with `raw` the whole store.
 */
import { locateSuperblock } from "../engine/drive/locate-superblock.ts";
import type { DriveStore } from "../engine/drive/store.ts";
import { SECTOR_BYTES } from "./sector.ts";

export interface DataArea {
  /** Byte offset of physical sector 0 in the store. */
  offset_bytes: number;
  /** Length in bytes (whole 2048-byte sectors). */
  bytes: number;
  /** The unit in which areas holding debug data are told from areas that do not. */
  extent_bytes: number;
}

export interface LocatedArea {
  area: DataArea;
  /** null with raw. */
  drive_uuid: string | null;
  cluster_uuid: string | null;
  superblock: "primary" | "backup" | null;
  warnings: string[];
}

/** The extent size assumed in raw mode, where no superblock says one. */
export const RAW_EXTENT_BYTES = 1 << 20;

export async function locateDataArea(store: DriveStore, opts: { raw: boolean }): Promise<LocatedArea | { error: string }> {
  if (opts.raw) {
    const bytes = Math.floor(store.size_bytes / SECTOR_BYTES) * SECTOR_BYTES;
    const warnings = bytes === store.size_bytes ? [] : [`the last ${store.size_bytes - bytes} bytes are less than one sector and are not scanned`];
    return { area: { offset_bytes: 0, bytes, extent_bytes: RAW_EXTENT_BYTES }, drive_uuid: null, cluster_uuid: null, superblock: null, warnings };
  }
  let found: Awaited<ReturnType<typeof locateSuperblock>>;
  try {
    found = await locateSuperblock(store);
  } catch (e) {
    return { error: `${store.describe}: ${(e as Error).message}` };
  }
  switch (found.kind) {
    case "not-nvmesh":
      return { error: `${store.describe} is not an nvmesh drive: ${found.reason}; use --raw to scan the whole file as a data area` };
    case "damaged":
      return { error: `${store.describe} has a damaged nvmesh superblock: ${found.reason}; use --raw to scan the whole file as a data area` };
    case "found": {
      const sb = found.sb;
      return {
        area: { offset_bytes: sb.data_offset, bytes: sb.extent_count * sb.extent_size_bytes, extent_bytes: sb.extent_size_bytes },
        drive_uuid: sb.drive_uuid,
        cluster_uuid: sb.cluster_uuid,
        superblock: found.from,
        warnings: found.warnings,
      };
    }
  }
}
