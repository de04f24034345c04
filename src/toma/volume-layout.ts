/**
 * The layout a client (and forensics) uses for a volume record of the cluster state: the one
 * place that turns a VolumeRecord into the engine's VolumeLayout.
 */
import type { VolumeLayout } from "../engine/layout/types.ts";
import type { VolumeRecord } from "./cluster-state.ts";

export function layoutOf(vol: VolumeRecord): VolumeLayout {
  return {
    volume_uuid: vol.uuid,
    incarnation: vol.created_seq,
    name: vol.name,
    capacity_bytes: vol.capacity_bytes,
    raid_level: vol.raid_level,
    columns: vol.columns.map((c) => ({ drive_uuid: c.drive_uuid, extents: [...c.extents] })),
    stripe_size_bytes: vol.stripe_size_bytes,
    extent_size_bytes: vol.extent_size_bytes,
    block_size: 512,
    mirrors: vol.mirrors,
    debug_format: vol.debug_format,
  };
}
