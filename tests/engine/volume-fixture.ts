/**
 * A volume of any layout as the client sees it, over a real target in this process: memory drives
 * served by a TargetService on 127.0.0.1, a TargetPool of real sessions, and the client's
 * VolumeDevice (plus, for a debug-format volume, the DebugVolume the daemon exports).
 */
import type { FormattedDrive } from "../../src/engine/drive/formatted-api.ts";
import { DebugVolume } from "../../src/engine/client/debug-volume.ts";
import { EvilSchedule, type EvilSwitch } from "../../src/engine/client/debug-evil.ts";
import { TargetPool } from "../../src/engine/client/target-pool.ts";
import { VolumeDevice } from "../../src/engine/client/volume-device.ts";
import { layoutProblem, physicalBytes } from "../../src/engine/layout/planner.ts";
import type { AttachInfo, RaidLevel, SetTopology, VolumeLayout } from "../../src/engine/layout/types.ts";
import { openSession } from "../../src/engine/wire/session.ts";
import type { DataArea } from "../../src/debugfmt/drive-area.ts";
import type { ScanSource } from "../../src/debugfmt/scan.ts";
import { memoryDrive, randomUuidString, startTarget, type TargetHarness } from "./target-fixture.ts";

const MiB = 1024 * 1024;
const STRIPE = 64 * 1024;

export interface VolumeFixture {
  target: TargetHarness;
  drives: FormattedDrive[];
  layout: VolumeLayout;
  info: AttachInfo;
  device: VolumeDevice;
  /** Debug-format volumes: what the daemon exports. */
  debug: DebugVolume | null;
  /** Another client of the same volume (its own id, sessions and device), debug format only. */
  client(opts: { client_id: number; client_name: string; evil?: EvilSwitch }): DebugVolume;
  /** Column c's drive data area, as forensics scans it. */
  source(column: number): ScanSource;
  close(): Promise<void>;
}

/** Columns (drives) of each level, and mirror legs per set. */
const SHAPE: Record<RaidLevel, { columns: number; mirrors: number }> = {
  concatenated: { columns: 2, mirrors: 1 },
  "0": { columns: 2, mirrors: 1 },
  "1": { columns: 2, mirrors: 2 },
  "10": { columns: 4, mirrors: 2 },
};

export async function startVolume(
  raid_level: RaidLevel,
  opts: {
    capacity_bytes: number;
    debug_format?: boolean;
    client_id?: number;
    client_name?: string;
    evil?: EvilSwitch;
    topology?: SetTopology[];
    /** Column c's extents start at drive extent 1 + c × skew (legs on different extents). */
    skew?: number;
  },
): Promise<VolumeFixture> {
  const { columns, mirrors } = SHAPE[raid_level];
  const physical = physicalBytes({ capacity_bytes: opts.capacity_bytes, debug_format: opts.debug_format === true });
  const sets = columns / mirrors;
  // Bytes each column holds: concatenated splits the space, RAID0 stripes it over the columns,
  // RAID1 mirrors it whole, RAID10 stripes it over the sets.
  const perColumn = {
    concatenated: Math.ceil(physical / columns),
    "0": Math.ceil(physical / columns / STRIPE) * STRIPE,
    "1": physical,
    "10": Math.ceil(physical / sets / STRIPE) * STRIPE,
  }[raid_level];
  const extents = Math.ceil(perColumn / MiB);
  const drives: FormattedDrive[] = [];
  // Room for the extents from 1 on (extent 0 left unused, so volume and drive offsets differ).
  const skew = opts.skew ?? 0;
  for (let i = 0; i < columns; i++) drives.push(await memoryDrive(extents + 8 + i * skew));
  const target = await startTarget(drives);
  const layout: VolumeLayout = {
    volume_uuid: randomUuidString(),
    incarnation: 5,
    name: `v-${raid_level}`,
    capacity_bytes: opts.capacity_bytes,
    raid_level,
    columns: drives.map((d, c) => ({ drive_uuid: d.info.drive_uuid, runs: [1 + c * skew, extents] })),
    stripe_size_bytes: raid_level === "0" || raid_level === "10" ? STRIPE : 0,
    mirrors,
    extent_size_bytes: MiB,
    block_size: 512,
    debug_format: opts.debug_format === true,
  };
  const problem = layoutProblem(layout);
  if (problem !== null) throw new Error(`fixture layout: ${problem}`);
  const normal: SetTopology = { legs: Array(mirrors).fill("RWL"), interleaved: true, dirty: false };
  const info: AttachInfo = {
    layout,
    drives: drives.map((d) => ({ drive_uuid: d.info.drive_uuid, target: target.address })),
    generation: 5,
    topology_generation: 5,
    stable_generation: 5,
    topology: mirrors > 1 ? (opts.topology ?? Array(sets).fill(normal)) : [],
  };
  const pools: TargetPool[] = [];
  const devices: VolumeDevice[] = [];
  const deviceFor = (client_id: number) => {
    const pool = new TargetPool(target.env, openSession, `fixture-${client_id}`, { uuid: layout.volume_uuid, incarnation: layout.incarnation });
    pool.setIdentity(client_id, info.generation);
    pool.setLocations(info.drives);
    pools.push(pool);
    const device = new VolumeDevice(target.env, pool, info, { refresh: async () => info, report: () => {}, io_timeout_ms: 2000 });
    devices.push(device);
    return device;
  };
  const debugFor = (device: VolumeDevice, o: { client_id: number; client_name: string; evil?: EvilSwitch }) =>
    new DebugVolume(device, {
      volume_uuid: layout.volume_uuid,
      writer: () => ({ client_id: o.client_id, client_name: o.client_name }),
      log: target.env.log,
      evil: o.evil ? new EvilSchedule(o.evil) : null,
    });
  const device = deviceFor(opts.client_id ?? 77);
  const debug = layout.debug_format
    ? debugFor(device, { client_id: opts.client_id ?? 77, client_name: opts.client_name ?? "unit", evil: opts.evil })
    : null;
  return {
    target,
    drives,
    layout,
    info,
    device,
    debug,
    client(o) {
      return debugFor(deviceFor(o.client_id), o);
    },
    source(column: number): ScanSource {
      const d = drives[column]!;
      const area: DataArea = { offset_bytes: 0, bytes: d.data.size_bytes, extent_bytes: MiB };
      return { name: `column${column}`, drive: d.data, area };
    },
    async close() {
      for (const d of devices) await d.close().catch(() => {});
      for (const p of pools) p.close();
      target.stop();
    },
  };
}
