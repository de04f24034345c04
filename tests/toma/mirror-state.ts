/** A cluster state in memory for mirror tests: 4 drives of 8 MiB, a RAID1 volume "m" of 2 MiB. */
import { apply, type ClusterState, emptyState } from "../../src/toma/cluster-state.ts";

const MiB = 1024 * 1024;
export const D = (i: number) => `00000000-0000-4000-8000-00000000000${i}`;

export function withMirror(mirrors = 2): ClusterState {
  let s = emptyState("11111111-1111-4111-8111-111111111111");
  for (let i = 1; i <= 4; i++) {
    const r = apply(s, { kind: "add_drive", drive: { drive_uuid: D(i), extent_size_bytes: MiB, extent_count: 8 } });
    if (!r.ok) throw new Error(r.error);
    s = r.state;
  }
  const r = apply(s, {
    kind: "create_volume",
    uuid: "22222222-2222-4222-8222-222222222222",
    name: "m",
    capacity_bytes: 2 * MiB,
    raid_level: "1",
    stripe_width: 1,
    stripe_size_bytes: 0,
    extent_size_bytes: MiB,
    columns: Array.from({ length: mirrors }, (_, i) => ({ drive_uuid: D(i + 1), extents: [0, 1] })),
    mirrors,
  });
  if (!r.ok) throw new Error(r.error);
  return r.state;
}
