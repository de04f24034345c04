/**
 * The debug-format volumes' layouts for `forensics scan`, read (read-only) from the cluster state
 * the TOMA persists in the metadata slots of the scanned drives themselves: the newest valid state
 * among them. With them the scan knows exactly which block belongs at each place of a drive.
 * Without (raw files, a drive outside any cluster, an unreadable state) it judges places from the
 * neighbours, and says why.
 */
import type { LocatedArea } from "../debugfmt/drive-area.ts";
import { layoutPeerPosition, layoutPlacement } from "../debugfmt/placement.ts";
import type { ScanOptions } from "../debugfmt/scan.ts";
import type { DriveStore } from "../engine/drive/store.ts";
import { openDrive } from "../engine/drive/formatted-drive.ts";
import { type ClusterState, decodeState } from "../toma/cluster-state.ts";
import { layoutOf } from "../toma/volume-layout.ts";

export interface ScannedDrive {
  name: string;
  store: DriveStore;
  located: LocatedArea;
}

export interface Layouts {
  placement: ScanOptions["placement"];
  /** With two files: where the second holds the other leg of each block of the first. */
  peer_position: ScanOptions["peer_position"];
  known_volumes: Set<string>;
  /** Where the layouts came from, for people. */
  source: string;
  volumes: { name: string; volume_uuid: string; raid_level: string }[];
}

/** The placement from the newest cluster state on these drives, or why there is none. */
export async function layoutsFromDrives(drives: ScannedDrive[]): Promise<Layouts | { why: string }> {
  let best: { state: ClusterState; from: string } | null = null;
  const problems: string[] = [];
  for (const d of drives) {
    if (d.located.drive_uuid === null) continue;
    try {
      // openDrive and metaRead only read: the superblock, the bitmap and the two metadata slots.
      const slot = await (await openDrive(d.store, d.name)).metaRead();
      if (slot.payload === null) continue;
      const state = decodeState(slot.payload);
      if (best === null || state.generation > best.state.generation) best = { state, from: d.name };
    } catch (e) {
      problems.push(`${d.name}: ${(e as Error).message}`);
    }
  }
  if (best === null) {
    return { why: problems.length > 0 ? `no readable cluster state (${problems.join("; ")})` : "no cluster state on these drives (raw files, or never part of a cluster)" };
  }
  const debug = best.state.volumes.filter((v) => v.debug_format);
  if (debug.length === 0) return { why: `the cluster state (generation ${best.state.generation}) has no debug-format volume` };
  const files = drives.flatMap((d) => (d.located.drive_uuid === null ? [] : [{ name: d.name, drive_uuid: d.located.drive_uuid, extent_bytes: d.located.area.extent_bytes }]));
  const layouts = debug.map(layoutOf);
  return {
    placement: layoutPlacement(files, layouts),
    peer_position: files.length === 2 ? layoutPeerPosition(files[0]!, files[1]!, layouts) : undefined,
    known_volumes: new Set(debug.map((v) => v.uuid)),
    source: `cluster state generation ${best.state.generation} from ${best.from}`,
    volumes: debug.map((v) => ({ name: v.name, volume_uuid: v.uuid, raid_level: v.raid_level })),
  };
}
