/**
 * The layout a client (and forensics) uses for a volume record of the cluster state: the one
 * place that turns a VolumeRecord into the engine's VolumeLayout.
 */
import { toRuns } from "../engine/layout/extent-runs.ts";
import type { VolumeLayout } from "../engine/layout/types.ts";
import type { VolumeRecord } from "./cluster-state.ts";

export function layoutOf(vol: VolumeRecord): VolumeLayout {
  return {
    volume_uuid: vol.uuid,
    incarnation: vol.created_seq,
    name: vol.name,
    capacity_bytes: vol.capacity_bytes,
    raid_level: vol.raid_level,
    // Runs, as the cluster state stores them: a 10 TiB leg is one pair, not 655360 numbers.
    columns: vol.columns.map((c) => ({ drive_uuid: c.drive_uuid, runs: toRuns(c.extents) })),
    stripe_size_bytes: vol.stripe_size_bytes,
    extent_size_bytes: vol.extent_size_bytes,
    block_size: 512,
    mirrors: vol.mirrors,
    debug_format: vol.debug_format,
  };
}
