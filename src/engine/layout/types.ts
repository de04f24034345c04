/**
 * How a volume maps onto drive extents. The TOMA computes it, persists it in the cluster state and
 * hands it to clients; the client's planner (./planner.ts) turns volume I/O into drive I/O with it.
 * Targets never see it.
 */
export type RaidLevel = "concatenated" | "0" | "1" | "10";

/** Locks and the interleaving of the read/lock leg of a mirror are per unit of this many bytes. */
export { LOCK_UNIT_BYTES } from "../wire/header.ts";

/**
 * Role of one mirror leg in the current topology (DESIGN.md §3): R reads served here, W writes go
 * here, L locks taken here; DEAD: nothing goes there.
 */
export type LegRole = "RWL" | "W" | "WL" | "DEAD";

/** The topology of one mirror set, as the TOMA computed it for a generation. */
export interface SetTopology {
  /** One role per leg, in leg order. */
  legs: LegRole[];
  /** Normal: the read/lock leg alternates between the RWL legs by lock unit. */
  interleaved: boolean;
  /** Some leg is DEAD: every write marks its regions dirty on the legs it reaches. */
  dirty: boolean;
}

/**
 * One column: extents of one drive, addressed as one contiguous byte space of
 * (extent count) * extent_size_bytes. Extent i of the column is the i-th extent its runs list, of
 * the drive's data area (drive data offset extent * extent_size_bytes).
 */
export interface Column {
  drive_uuid: string;
  /**
   * The column's extents as canonical runs [start, count, start, count, ...] (extent-runs.ts):
   * a leg of any size is usually one run, so the layout a client receives and holds grows with
   * the number of legs, not their size. Read through extent-runs.ts (runsLength, extentAt,
   * RunIndex), never expanded.
   */
  runs: number[];
}

export interface VolumeLayout {
  volume_uuid: string;
  /**
   * The cluster generation that created the volume: unique in the cluster, so (volume_uuid,
   * incarnation) names this volume and no other, ever. A client connection is bound to both at
   * HELLO, and targets hold its requests to the volume's extents (docs/protocol.md, "Fencing").
   */
  incarnation: number;
  name: string;
  capacity_bytes: number;
  raid_level: RaidLevel;
  /**
   * concatenated: columns are laid end to end. "0": data striped across all columns.
   * "1"/"10": the columns are the legs, `mirrors` consecutive columns per mirror set; RAID1 has
   * one set, RAID10 stripes over its sets as RAID0 does over columns.
   */
  columns: Column[];
  /** RAID0/RAID10: bytes per stripe unit (chunk) on one column or set. */
  stripe_size_bytes: number;
  /** Copies of each block: 1 unless mirrored (2 or 3). */
  mirrors: number;
  extent_size_bytes: number;
  /** Logical block size the volume exposes (512). */
  block_size: number;
  /**
   * Debug format (docs/debug-format.md): each 512-byte logical sector is stored as a 2048-byte
   * debug sector, so the layout above maps 4 × capacity_bytes of physical address space.
   */
  debug_format?: boolean;
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
  /** The cluster state generation this view was computed from. */
  generation: number;
  /** Generation of the volume's current topology (its last topology change). */
  topology_generation: number;
  /**
   * Every client has switched to this generation or later. I/O done under a topology newer than
   * this completes only once it is stable (docs/mirroring.md: the B-writes / A-reads hazard).
   */
  stable_generation: number;
  /** Mirrored volumes: the topology of each mirror set; empty otherwise. */
  topology: SetTopology[];
}
