/**
 * How a volume maps onto drive extents. The TOMA computes it, persists it in the cluster state and
 * hands it to clients; the client's planner (./planner.ts) turns volume I/O into drive I/O with it.
 * Targets never see it.
 */
export type RaidLevel = "concatenated" | "0";

/**
 * One column: a run of extents on one drive, addressed as one contiguous byte space of
 * extents.length * extent_size_bytes. Extent i of the column is extent `extents[i]` of the drive's
 * data area, i.e. drive data offset extents[i] * extent_size_bytes.
 */
export interface Column {
  drive_uuid: string;
  extents: number[];
}

export interface VolumeLayout {
  volume_uuid: string;
  name: string;
  capacity_bytes: number;
  raid_level: RaidLevel;
  /** concatenated: columns are laid end to end. "0": data striped across all columns. */
  columns: Column[];
  /** RAID0 only: bytes per stripe unit (chunk) on one column. */
  stripe_size_bytes: number;
  extent_size_bytes: number;
  /** Logical block size the volume exposes (512). */
  block_size: number;
}

/** Where each drive is served right now: what a client needs besides the layout. */
export interface DriveLocation {
  drive_uuid: string;
  /** "host:port" of the target serving it, or null when no target currently serves it. */
  target: string | null;
}

export interface AttachInfo {
  layout: VolumeLayout;
  drives: DriveLocation[];
  /** Topology generation of the volume (fencing from the mirroring issue on). */
  generation: number;
}
