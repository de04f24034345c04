/**
 * What fits in a TOMA cluster's replicated state: creates volumes of one size with the real
 * allocator on a pool of drives (legs on different servers), each checked against the cluster's
 * bounds exactly as the leader checks it (cluster/volume-ops.ts tooLarge, then apply), until one
 * is refused; prints how many fit, why the next did not, the state's size, and how long the
 * leader's work per command took at the end (allocate, bound checks, apply, encode). A size
 * measurement, not a comparison: nothing to run a peer against.
 *
 *   bun bench/toma-state-size.ts [--drives 12] [--servers 3] [--drive-tib 14] [--extent-mib 16] [--volume-gib 1024] [--raid 1] [--max 100000]
 */
import { parseArgs } from "node:util";
import { allocate, createVolumeCommand, type Topology } from "../src/toma/allocator.ts";
import { apply, type ClusterState, emptyState, encodeState } from "../src/toma/cluster-state.ts";
import { LeaderOpError } from "../src/toma/cluster/leader-gate.ts";
import { tooLarge } from "../src/toma/cluster/volume-ops.ts";
import { encodeProposal } from "../src/toma/consensus/proposal.ts";

const { values } = parseArgs({
  options: {
    drives: { type: "string", default: "12" },
    servers: { type: "string", default: "3" },
    "drive-tib": { type: "string", default: "14" },
    "extent-mib": { type: "string", default: "16" },
    "volume-gib": { type: "string", default: "1024" },
    raid: { type: "string", default: "1" },
    max: { type: "string", default: "100000" },
  },
});
const MiB = 2 ** 20;
const uuid = (n: number) => `00000000-0000-4000-8000-${n.toString(16).padStart(12, "0")}`;
const drives = Number(values.drives);
const servers = Number(values.servers);
const extent = Number(values["extent-mib"]) * MiB;
const extent_count = Math.floor((Number(values["drive-tib"]) * 2 ** 40) / extent);
const capacity_bytes = Number(values["volume-gib"]) * 2 ** 30;
const raid_level = values.raid as "1" | "0" | "10" | "concatenated";

let state: ClusterState = emptyState(uuid(0xc1));
const usable = new Set<string>();
const target_of = new Map<string, string>();
const topo: Topology = { usable, target_of };
for (let i = 0; i < drives; i++) {
  const r = apply(state, { kind: "add_drive", drive: { drive_uuid: uuid(0xd00 + i), extent_size_bytes: extent, extent_count } });
  if (!r.ok) throw new Error(r.error);
  state = r.state;
  usable.add(uuid(0xd00 + i));
  target_of.set(uuid(0xd00 + i), `s${i % servers}`);
}

let made = 0;
let stop = "";
let last_cmd = 0;
const times: number[] = [];
for (; made < Number(values.max); made++) {
  const t0 = performance.now();
  const req = { name: `v${made}`, capacity_bytes, raid_level };
  const a = allocate(state, req, topo);
  if (!a.ok) {
    stop = `allocator: ${a.error}`;
    break;
  }
  const cmd = createVolumeCommand(uuid(0x10000 + made), req, a.alloc);
  const data = encodeProposal({ computed_at: state.generation, cmd });
  try {
    tooLarge(`create volume '${req.name}'`, state, cmd, data);
  } catch (e) {
    if (!(e instanceof LeaderOpError)) throw e;
    stop = `${e.status}: ${e.message}`;
    break;
  }
  const r = apply(state, cmd);
  if (!r.ok) {
    stop = `${r.code}: ${r.error}`;
    break;
  }
  state = r.state;
  encodeState(state);
  last_cmd = data.length;
  times.push(performance.now() - t0);
}
const bytes = encodeState(state).length;
const extents = state.volumes.reduce((n, v) => n + v.columns.reduce((k, c) => k + c.extents.length, 0), 0);
const tail = times.slice(-5).sort((x, y) => x - y);
console.log(
  `${drives} drives of ${values["drive-tib"]} TiB on ${servers} servers, ${values["extent-mib"]} MiB extents, RAID${raid_level} volumes of ${values["volume-gib"]} GiB:\n` +
    `  ${made} created; state ${bytes} bytes (${made ? Math.round(bytes / made) : 0} per volume), ${extents} extents listed; last command ${last_cmd} bytes\n` +
    `  leader's work per command at the end (median of the last 5): ${tail.length ? tail[Math.floor(tail.length / 2)]!.toFixed(1) : "-"} ms\n` +
    `  next refused: ${stop || "(stopped at --max)"}`,
);
