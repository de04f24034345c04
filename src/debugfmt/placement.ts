/**
 * Exact placement for the scan (ScanOptions.placement) from the debug volumes' layouts: which
 * (volume, LBA) belongs at each position of each scanned drive. With it the scan judges every
 * sector's place exactly instead of from its neighbours, which a systematic misdirection in a
 * sparsely written area can fool (docs/debug-format.md, "Placement").
 */
import { extentOwners, placeOnDrive } from "../engine/layout/inverse.ts";
import type { VolumeLayout } from "../engine/layout/types.ts";
import { SECTOR_BYTES } from "./sector.ts";

export interface PlacedFile {
  /** The ScanSource name. */
  name: string;
  drive_uuid: string;
  /** The drive's extent size (its data area's). */
  extent_bytes: number;
}

/** Only debug-format layouts are used: other volumes hold no debug sectors. */
export function layoutPlacement(files: PlacedFile[], layouts: VolumeLayout[]): (source: string, position: number) => { volume_uuid: string; lba: number } | null {
  const debug = layouts.filter((l) => l.debug_format === true);
  const byName = new Map(files.map((f) => [f.name, { owners: extentOwners(debug, f.drive_uuid), extent_bytes: f.extent_bytes }]));
  return (source, position) => {
    const f = byName.get(source);
    if (f === undefined) return null;
    const p = placeOnDrive(f.owners, position * SECTOR_BYTES, f.extent_bytes);
    return p === null ? null : { volume_uuid: p.layout.volume_uuid, lba: Math.floor(p.volume_offset / SECTOR_BYTES) };
  };
}
