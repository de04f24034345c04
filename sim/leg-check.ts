/**
 * The end-of-run check of a mirror: once the cluster is healed, calm and back to Normal, every leg
 * of every mirror set holds the same bytes in the volume's extents, read straight off the
 * simulated media (what a read would return now, cache over durable). The checker sees only what
 * reads return, from one leg at a time; legs that differ unseen are a mirror that lies later, when
 * a failure moves reads to the other leg.
 */
import { decodeSuperblock, SUPERBLOCK_BYTES } from "../src/engine/drive/superblock.ts";
import { isMirrored, setColumns } from "../src/toma/topology.ts";
import type { SimCluster } from "./cluster.ts";
import type { SimMedium } from "./drive.ts";

export async function checkLegsEqual(cluster: SimCluster): Promise<void> {
  const state = () => cluster.clusterState();
  await cluster.runUntil(
    () => state()?.volumes.filter(isMirrored).every((v) => v.legs.every((l) => l === "ok")) ?? false,
    60_000,
    "every mirror back to Normal with all its legs",
  );
  const offsets = new Map<SimMedium, number>();
  const dataOffset = (m: SimMedium) => {
    if (!offsets.has(m)) offsets.set(m, decodeSuperblock(m.snapshot(0, SUPERBLOCK_BYTES)).data_offset);
    return offsets.get(m)!;
  };
  const mediumOf = new Map<string, SimMedium>([...cluster.uuidOf].map(([m, u]) => [u, m]));
  for (const vol of state()!.volumes.filter(isMirrored)) {
    const E = vol.extent_size_bytes;
    for (let set = 0; set < vol.stripe_width; set++) {
      const [first, ...others] = setColumns(vol, set);
      const bytesOf = (column: number, i: number) => {
        const m = mediumOf.get(vol.columns[column]!.drive_uuid)!;
        return m.snapshot(dataOffset(m) + vol.columns[column]!.extents[i]! * E, E);
      };
      for (let i = 0; i < vol.columns[first!]!.extents.length; i++) {
        const a = bytesOf(first!, i);
        for (const c of others) {
          const b = bytesOf(c, i);
          const at = a.findIndex((x, k) => x !== b[k]);
          if (at >= 0) {
            cluster.world.fail(
              `legs differ: volume ${vol.name} set ${set}, columns ${first} and ${c}, at byte ${i * E + at} of the column (sector ${Math.floor((i * E + at) / 512)} of the leg)`,
            );
            return;
          }
        }
      }
    }
  }
}
