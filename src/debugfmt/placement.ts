/**
 * Exact placement for the scan (ScanOptions.placement) from the debug volumes' layouts: which
 * (volume, LBA) belongs at each position of each scanned drive. With it the scan judges every
 * sector's place exactly instead of from its neighbours, which a systematic misdirection in a
 * sparsely written area can fool (docs/debug-format.md, "Placement").
 */
import { forEachExtent, RunIndex } from "../engine/layout/extent-runs.ts";
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

/**
 * For two legs' drives: the position on `to` of the other leg of the block at each position of
 * `from` (same mirror set, same extent index, same offset in the extent), or null where `from`
 * holds no leg of a mirrored debug volume that has a leg on `to`. Lets `--peer` compare legs block
 * by block whatever extents each leg got.
 */
export function layoutPeerPosition(from: PlacedFile, to: PlacedFile, layouts: VolumeLayout[]): (position: number) => number | null {
  const E = from.extent_bytes;
  const map = new Map<number, number>();
  for (const l of layouts) {
    if (l.debug_format !== true || l.mirrors < 2 || l.extent_size_bytes !== E) continue;
    l.columns.forEach((c, column) => {
      if (c.drive_uuid !== from.drive_uuid) return;
      const set = Math.floor(column / l.mirrors);
      const peer = l.columns.slice(set * l.mirrors, (set + 1) * l.mirrors).find((x) => x.drive_uuid === to.drive_uuid);
      if (peer === undefined) return;
      const theirs = RunIndex.of(peer.runs);
      forEachExtent(c.runs, (e, k) => {
        const t = theirs.at(k);
        if (t !== undefined) map.set(e, t.extent);
      });
    });
  }
  const per = E / SECTOR_BYTES;
  return (position) => {
    const e = map.get(Math.floor(position / per));
    return e === undefined ? null : e * per + (position % per);
  };
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
