/**
 * The demo's mirror act, live: a RAID1 volume written through NBD without pause while one of its
 * servers is killed (kill -9) and brought back. The volume goes Degraded and the writes go on;
 * back, the regions written meanwhile are copied (a progress bar), the volume is Normal again, the
 * data is read back and checked, and the two legs are compared byte for byte on the drive files.
 */
import { closeSync, openSync, readSync } from "node:fs";
import { consola } from "consola";
import { connectNbd, type NbdClient } from "../engine/nbd/client.ts";
import { realEnv } from "../engine/runtime/real-env.ts";
import type { TomaClient } from "../toma/api-client.ts";
import type { VolumeJson } from "../toma/api-types.ts";
import { formatBytes } from "./args.ts";
import { pattern } from "./demo-procs.ts";
import { progressBar } from "./volume.ts";

/** One server of the demo: its drive file and where its target listens. */
export interface DemoServer {
  name: string;
  drive_path: string;
  drive_uuid: string;
  /** Where the drive's data area starts in the file (drive offset 0). */
  data_offset: number;
  address: string;
}

export interface MirrorActDeps {
  api: TomaClient;
  servers: DemoServer[];
  /** kill -9 of server i's target. */
  killTarget: (i: number) => void;
  /** Starts server i's target again, on its address, with its drive. */
  startTarget: (i: number) => Promise<void>;
  attach: (volume: string) => Promise<string>;
  capacity_bytes: number;
}

const MiB = 2 ** 20;
const CHUNK_BYTES = 256 * 1024;
const WRITES_IN_FLIGHT = 8;

/** Writes the pattern over a range of the volume, round after round, until stopped. */
class Writer {
  written_bytes = 0;
  longest_pause_ms = 0;
  private last_ms = performance.now();
  /** The pattern seed each chunk was last written with (0: never written). */
  readonly seeds: Uint32Array;
  private stopping = false;
  private done: Promise<void> | null = null;
  error: Error | null = null;

  constructor(
    private readonly nbd: NbdClient,
    readonly range_bytes: number,
  ) {
    this.seeds = new Uint32Array(range_bytes / CHUNK_BYTES);
  }

  start(): void {
    this.done = Promise.all(Array.from({ length: WRITES_IN_FLIGHT }, (_, lane) => this.lane(lane))).then(() => {});
  }

  /** Each lane writes every WRITES_IN_FLIGHT-th chunk; a round's seed is its round number. */
  private async lane(lane: number): Promise<void> {
    for (let round = 1; !this.stopping; round++) {
      for (let i = lane; i < this.seeds.length && !this.stopping; i += WRITES_IN_FLIGHT) {
        const off = i * CHUNK_BYTES;
        try {
          await this.nbd.write(off, pattern(off, CHUNK_BYTES, round));
        } catch (e) {
          this.error ??= e as Error;
          this.stopping = true;
          return;
        }
        this.seeds[i] = round;
        this.written_bytes += CHUNK_BYTES;
        this.completed();
      }
    }
  }

  private completed(): void {
    const now = performance.now();
    this.longest_pause_ms = Math.max(this.longest_pause_ms, now - this.last_ms);
    this.last_ms = now;
  }

  /** How long since the last write completed (a pause in progress shows here). */
  get pause_ms(): number {
    return performance.now() - this.last_ms;
  }

  async stop(): Promise<void> {
    this.stopping = true;
    await this.done;
    if (this.error) throw this.error;
    await this.nbd.flush();
  }
}

async function until<T>(what: string, probe: () => Promise<T | null>, timeout_ms = 90_000): Promise<T> {
  const deadline = performance.now() + timeout_ms;
  for (;;) {
    const got = await probe().catch(() => null);
    if (got !== null) return got;
    if (performance.now() > deadline) throw new Error(`${what}: not reached after ${timeout_ms / 1000} s`);
    await Bun.sleep(100);
  }
}

/** Runs the act; returns the mirrored volume's NBD URI. */
export async function mirrorAct(d: MirrorActDeps): Promise<string> {
  const { api } = d;
  consola.start("a mirrored volume: RAID1, one leg on each of two servers");
  let vol = await api.createVolume({ name: "mirror", capacity_bytes: d.capacity_bytes, raid_level: "1" });
  const serverOf = (v: VolumeJson, column: number) => d.servers.findIndex((s) => s.drive_uuid === v.columns[column]!.drive_uuid);
  const legs = [0, 1].map((c) => d.servers[serverOf(vol, c)]!.name);
  const uri = await d.attach("mirror");
  consola.success(`volume mirror: ${formatBytes(vol.capacity_bytes)} RAID1, legs on ${legs.join(" and ")}, attached: ${uri}`);

  const nbd = await connectNbd(realEnv("demo"), `unix:${uri.replace(/^.*socket=/, "")}`, "mirror");
  // The writer works on the first half: only what it writes while a leg is away needs copying.
  const writer = new Writer(nbd, Math.floor(d.capacity_bytes / 2 / CHUNK_BYTES) * CHUNK_BYTES);
  writer.start();
  const rate = async (ms: number) => {
    const [b0, t0] = [writer.written_bytes, performance.now()];
    await Bun.sleep(ms);
    return (writer.written_bytes - b0) / MiB / ((performance.now() - t0) / 1000);
  };
  consola.info(`writing a check pattern through NBD, without pause, over the first ${formatBytes(writer.range_bytes)}: ${(await rate(2000)).toFixed(0)} MiB/s`);

  const victim = serverOf(vol, 1);
  const name = d.servers[victim]!.name;
  consola.warn(`kill -9 ${name}: its target dies with a leg of the mirror (and a third of the striped volume)`);
  const killed_at = performance.now();
  const before = writer.written_bytes;
  d.killTarget(victim);
  vol = await until("Degraded", async () => {
    const v = await api.volume("mirror");
    return v.legs.includes("dead") ? v : null;
  });
  consola.success(`mirror Degraded after ${((performance.now() - killed_at) / 1000).toFixed(1)} s: legs ${vol.legs.join(", ")}; writes go on to the surviving leg, marking their regions dirty`);
  for (let i = 0; i < 3; i++) {
    const r = await rate(1000);
    consola.info(`  degraded: ${r.toFixed(0)} MiB/s, ${formatBytes(writer.written_bytes - before)} written since the kill, longest pause ${writer.longest_pause_ms.toFixed(0)} ms`);
  }
  const striped = (await api.volumes()).filter((v) => v.mirrors === 1 && v.state !== "online");
  for (const v of striped) consola.info(`volume ${v.name} is ${v.state}: it has no second copy, so it waits for ${name}`);

  consola.start(`bringing ${name} back (same drive, same address); the TOMA takes the leg back once it sees it again`);
  const back_at = performance.now();
  await d.startTarget(victim);
  let next_pct = 0;
  const tty = process.stdout.isTTY === true;
  let total = 0;
  vol = await until("Normal again", async () => {
    const v = await api.volume("mirror");
    const r = v.leg_views[1]?.rebuild;
    if (v.legs[1] === "syncing" && r && r.total_bytes > 0) {
      total = r.total_bytes;
      const pct = Math.floor((100 * r.done_bytes) / r.total_bytes);
      const line = `  rebuilding leg 1: ${progressBar(r.done_bytes, r.total_bytes)} of ${formatBytes(r.total_bytes)} · writer ${formatBytes(writer.written_bytes - before)} since the kill`;
      if (tty) process.stdout.write(`\r${line}   `);
      else if (pct >= next_pct) {
        // Not a terminal (a log, a test): a line at every quarter instead of a live bar.
        consola.log(line);
        next_pct = (Math.floor(pct / 25) + 1) * 25;
      }
    }
    return v.state === "online" && v.legs.every((l) => l === "ok") ? v : null;
  });
  if (tty) process.stdout.write("\n");
  consola.success(
    `mirror Normal again ${((performance.now() - back_at) / 1000).toFixed(1)} s after ${name} was restarted: ${total > 0 ? `the rebuild copied ${formatBytes(total)}, only the regions written while ${name} was away, ` : ""}` +
      `not the whole ${formatBytes(vol.capacity_bytes)} leg; longest pause of the writes: ${writer.longest_pause_ms.toFixed(0)} ms`,
  );

  consola.start("stopping the writer, reading everything back, comparing the legs on the drive files");
  await writer.stop();
  for (let i = 0; i < writer.seeds.length; i++) {
    const off = i * CHUNK_BYTES;
    const got = await nbd.read(off, CHUNK_BYTES);
    const want = writer.seeds[i] === 0 ? new Uint8Array(CHUNK_BYTES) : pattern(off, CHUNK_BYTES, writer.seeds[i]!);
    if (!Buffer.from(got).equals(Buffer.from(want))) throw new Error(`mirror: data at offset ${off} is not what was last written there`);
  }
  await nbd.close();
  const equal = compareLegs(d.servers, vol);
  consola.success(
    `every byte the writer wrote (${formatBytes(writer.written_bytes)} in all) reads back as last written, ` +
      `and the two legs are byte-identical (${formatBytes(equal)} of each compared on the drive files)`,
  );
  return uri;
}

/** Compares the two legs of a RAID1 volume on the drive files; returns the bytes of each compared. */
function compareLegs(servers: DemoServer[], vol: VolumeJson): number {
  const E = vol.extent_size_bytes;
  const legs = vol.columns.map((c) => {
    const s = servers.find((x) => x.drive_uuid === c.drive_uuid)!;
    return { s, extents: c.extents, fd: openSync(s.drive_path, "r"), buf: new Uint8Array(MiB) };
  });
  try {
    for (let x = 0; x < legs[0]!.extents.length; x++) {
      for (let within = 0; within < E; within += MiB) {
        for (const l of legs) readSync(l.fd, l.buf, 0, MiB, l.s.data_offset + l.extents[x]! * E + within);
        if (!Buffer.from(legs[0]!.buf).equals(Buffer.from(legs[1]!.buf))) {
          throw new Error(`mirror: the legs differ at offset ${x * E + within} of the volume`);
        }
      }
    }
  } finally {
    for (const l of legs) closeSync(l.fd);
  }
  return legs[0]!.extents.length * E;
}
