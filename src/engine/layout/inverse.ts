/**
 * The planner read backwards: which byte of a volume's address space a drive byte holds. Forensics
 * uses it to know exactly which block belongs at each place of a drive (no guessing from the
 * neighbours). Pure; the inverse of plan() and planMirror() (tests/engine/planner.test.ts).
 */
import { forEachExtent } from "./extent-runs.ts";
import { columnBytes, physicalBytes } from "./planner.ts";
import type { VolumeLayout } from "./types.ts";

/** The volume offset of byte `column_offset` of column `column`, or null beyond the volume. */
export function volumeOffsetOf(layout: VolumeLayout, column: number, column_offset: number): number | null {
  const end = physicalBytes(layout);
  let v: number;
  if (layout.raid_level === "concatenated") {
    let start = 0;
    for (let c = 0; c < column; c++) start += columnBytes(layout, c);
    v = start + column_offset;
  } else {
    const m = layout.raid_level === "1" || layout.raid_level === "10" ? layout.mirrors : 1;
    const lanes = layout.columns.length / m; // RAID0: columns; mirrors: sets
    const lane = Math.floor(column / m);
    if (layout.raid_level === "1" || lanes === 1) v = column_offset;
    else {
      const S = layout.stripe_size_bytes;
      const row = Math.floor(column_offset / S);
      v = (row * lanes + lane) * S + (column_offset % S);
    }
  }
  return v < end ? v : null;
}

/** A drive's extents that hold part of a volume: drive extent → (layout, column, extent index). */
export function extentOwners(layouts: VolumeLayout[], drive_uuid: string): Map<number, { layout: VolumeLayout; column: number; index: number }> {
  const out = new Map<number, { layout: VolumeLayout; column: number; index: number }>();
  for (const layout of layouts) {
    layout.columns.forEach((c, column) => {
      if (c.drive_uuid !== drive_uuid) return;
      forEachExtent(c.runs, (e, index) => out.set(e, { layout, column, index }));
    });
  }
  return out;
}

/**
 * Which volume byte a byte of the drive's data area holds, if any: (layout, volume offset), or
 * null in an extent no volume of `layouts` uses, or past a volume's end.
 */
export function placeOnDrive(
  owners: Map<number, { layout: VolumeLayout; column: number; index: number }>,
  drive_offset: number,
  extent_size_bytes: number,
): { layout: VolumeLayout; volume_offset: number } | null {
  const owner = owners.get(Math.floor(drive_offset / extent_size_bytes));
  if (owner === undefined) return null;
  const v = volumeOffsetOf(owner.layout, owner.column, owner.index * extent_size_bytes + (drive_offset % extent_size_bytes));
  return v === null ? null : { layout: owner.layout, volume_offset: v };
}
