/**
 * What a TOMA spends answering clients' attach and watch requests for a large volume: the attach
 * information (volume-views.ts attachInfoOf) and its JSON, for a RAID1 volume whose legs are
 * hundreds of thousands of extents. Each generation is a new applied state (a client registers),
 * and every client's watch is answered from it.
 * The peer, in the same run: the same answer worked out from the record alone (attachInfoOf with
 * no state), which turns every column's extent list into runs on every call, as every answer did
 * before layouts were kept per applied state. Prints each round and the median ratio.
 *
 *   bun bench/attach-info.ts [--tib 10] [--extent-mib 16] [--clients 32] [--generations 20] [--rounds 5]
 */
import { allocate, createVolumeCommand, type Topology } from "../src/toma/allocator.ts";
import { apply, type ClusterState, emptyState } from "../src/toma/cluster-state.ts";
import { attachInfoOf } from "../src/toma/volume-views.ts";
import { flag, median } from "./common.ts";

const TIB = Number(flag("tib", "10"));
const EXTENT = Number(flag("extent-mib", "16")) * 2 ** 20;
const CLIENTS = Number(flag("clients", "32"));
const GENERATIONS = Number(flag("generations", "20"));
const ROUNDS = Number(flag("rounds", "5"));

const uuid = (n: number) => `00000000-0000-4000-8000-${n.toString(16).padStart(12, "0")}`;
function must(r: ReturnType<typeof apply>): ClusterState {
  if (!r.ok) throw new Error(r.error);
  return r.state;
}

// Two drives on two servers, each a little larger than the volume; one RAID1 volume over both.
let state = emptyState(uuid(0xc1));
const usable = new Set<string>();
const target_of = new Map<string, string>();
const topo: Topology = { usable, target_of };
const extent_count = Math.ceil((TIB * 2 ** 40) / EXTENT) + 16;
for (let i = 0; i < 2; i++) {
  const d = uuid(0xd00 + i);
  state = must(apply(state, { kind: "add_drive", drive: { drive_uuid: d, extent_size_bytes: EXTENT, extent_count } }));
  usable.add(d);
  target_of.set(d, `s${i}`);
}
const req = { name: "big", capacity_bytes: TIB * 2 ** 40, raid_level: "1" as const };
const a = allocate(state, req, topo);
if (!a.ok) throw new Error(a.error);
state = must(apply(state, createVolumeCommand(uuid(0x10000), req, a.alloc)));
const vol = state.volumes[0]!;
const where = (d: string) => `${target_of.get(d)}:7000`;

let next_client = 1;
/** Milliseconds per answer over GENERATIONS new states, CLIENTS answers each. */
function run(answer: (st: ClusterState) => unknown): number {
  let bytes = 0;
  const t0 = performance.now();
  for (let g = 0; g < GENERATIONS; g++) {
    state = must(apply(state, { kind: "register_client", id: next_client++, name: "bench" }));
    for (let c = 0; c < CLIENTS; c++) bytes += JSON.stringify(answer(state)).length;
  }
  if (bytes === 0) throw new Error("no answer");
  return (performance.now() - t0) / (GENERATIONS * CLIENTS);
}
const perState = (st: ClusterState) => attachInfoOf(vol, st, where, 0);
const fromRecord = (_st: ClusterState) => attachInfoOf(vol, null, where, 0);

console.log(
  `RAID1 ${TIB} TiB, ${EXTENT / 2 ** 20} MiB extents (${vol.columns[0]!.extents.length} a leg), ` +
    `${GENERATIONS} states x ${CLIENTS} answers, ${ROUNDS} rounds`,
);
run(perState); // warm-up, both paths
run(fromRecord);
const ratios: number[] = [];
for (let r = 0; r < ROUNDS; r++) {
  // The order alternates, so that neither side always runs on a heap the other left.
  let before = 0;
  let after = 0;
  if (r % 2 === 0) {
    before = run(fromRecord);
    after = run(perState);
  } else {
    after = run(perState);
    before = run(fromRecord);
  }
  ratios.push(before / after);
  console.log(`round ${r + 1}: every answer ${before.toFixed(3)} ms, once per state ${after.toFixed(3)} ms (${(before / after).toFixed(1)}x)`);
}
console.log(`median: once per state answers ${median(ratios).toFixed(1)}x faster`);
