/**
 * The demo's mirror act, live: a RAID1 volume written through NBD without pause while the server of
 * the TOMA cluster's leader is killed (kill -9 of its TOMA and its target) and brought back. A new
 * leader is elected and takes over the mirror control, the volume goes Degraded and the writes go
 * on without an error; back, the server's TOMA rejoins as the same node, the regions written
 * meanwhile are copied (a progress bar), the volume is Normal again, the data is read back and
 * checked, and the two legs are compared byte for byte on the drive files.
 */
import { closeSync, openSync, readSync } from "node:fs";
import { consola } from "consola";
import { connectNbd, type NbdClient } from "../engine/nbd/client.ts";
import { realEnv } from "../engine/runtime/real-env.ts";
import type { VolumeJson } from "../toma/api-types.ts";
import { formatBytes } from "./args.ts";
import { atLeader } from "./at-leader.ts";
import type { DemoTomas } from "./demo-toma.ts";
import { pattern } from "./demo-procs.ts";
import { progressBar } from "./volume.ts";
import { fromRuns } from "../engine/layout/extent-runs.ts";

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
  /** The TOMA cluster: server i's TOMA is tomas' i. */
  tomas: DemoTomas;
  servers: DemoServer[];
  /** kill -9 of server i's target; returns once it is gone. */
  killTarget: (i: number) => Promise<void>;
  /** Starts server i's target again, on its address, with its drive. */
  startTarget: (i: number) => Promise<void>;
  /** What the client daemon printed so far. */
  clientOutput: () => string;
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

/** A check of the demo that failed: `until` stops on it rather than asking again. */
class CheckFailed extends Error {}

async function until<T>(what: string, probe: () => Promise<T | null>, timeout_ms = 90_000): Promise<T> {
  const deadline = performance.now() + timeout_ms;
  for (;;) {
    const got = await probe().catch((e) => {
      if (e instanceof CheckFailed) throw e;
      return null;
    });
    if (got !== null) return got;
    if (performance.now() > deadline) throw new Error(`${what}: not reached after ${timeout_ms / 1000} s`);
    await Bun.sleep(100);
  }
}

/** Runs the act; returns the mirrored volume's NBD URI. */
export async function mirrorAct(d: MirrorActDeps): Promise<string> {
  const { tomas } = d;
  const name = (i: number) => d.servers[i]!.name;
  const leaderVolume = async () => (await tomas.leaderApi(5000)).volume("mirror");
  // Three copies: on three servers, the leader's server holds one whichever TOMA leads.
  consola.start("a mirrored volume: RAID1, three copies, each leg on a server of its own");
  const lead = await tomas.agreed();
  let vol = await atLeader({ management: lead.address }, (t) => t.createVolume({ name: "mirror", capacity_bytes: d.capacity_bytes, raid_level: "1", mirrors: 3 }));
  const legServers = vol.columns.map((c) => d.servers.findIndex((s) => s.drive_uuid === c.drive_uuid));
  const uri = await d.attach("mirror");
  consola.success(`volume mirror: ${formatBytes(vol.capacity_bytes)} RAID1, legs on ${legServers.map(name).join(" and ")}, attached: ${uri}`);

  const nbd = await connectNbd(realEnv("demo"), `unix:${uri.replace(/^.*socket=/, "")}`, "mirror");
  // The writer works on the first half: only what it writes while a leg is away needs copying.
  const writer = new Writer(nbd, Math.floor(d.capacity_bytes / 2 / CHUNK_BYTES) * CHUNK_BYTES);
  writer.start();
  const rate = async (ms: number) => {
    const [b0, t0] = [writer.written_bytes, performance.now()];
    await Bun.sleep(ms);
    if (writer.error) throw new Error(`the writer saw an I/O error: ${writer.error.message}`);
    return (writer.written_bytes - b0) / MiB / ((performance.now() - t0) / 1000);
  };
  // The rate is taken once writes flow (a new mirror's first writes take a moment).
  const started_at = performance.now();
  await until("the writer's first write", async () => {
    if (writer.error) throw new CheckFailed(`the writer saw an I/O error: ${writer.error.message}`);
    return writer.written_bytes > 0 ? true : null;
  });
  const first_s = ((performance.now() - started_at) / 1000).toFixed(1);
  consola.info(`writing a check pattern through NBD, without pause, over the first ${formatBytes(writer.range_bytes)} (first write done after ${first_s} s): ${(await rate(2000)).toFixed(0)} MiB/s`);

  // The leader's whole server goes: its TOMA (the mirror control, the client daemon's home) and
  // its target. When it holds no leg, a leg's target goes with it, so that the mirror degrades.
  const before = await tomas.agreed();
  const victim = before.index;
  const node_id = (await tomas.consensus(victim))?.node_id;
  if (!node_id) throw new Error(`${name(victim)}'s TOMA does not say its node id`);
  consola.info(`the TOMA cluster's leader is ${name(victim)} (TOMA on ${before.address}, node ${node_id}), term ${before.term}: it runs the mirror control and serves the client daemon`);
  // With more servers than legs the leader's may hold none: a leg's target goes too, when the
  // TOMAs left with their own drives (a TOMA keeps its state there) are still a majority.
  const n = d.servers.length;
  const holdsLeg = legServers.includes(victim);
  const twoDown = !holdsLeg && n - 2 > n / 2;
  const deadLeg = holdsLeg ? legServers.indexOf(victim) : twoDown ? 0 : null;
  const downTargets = holdsLeg || !twoDown ? [victim] : [victim, legServers[0]!];
  const down = downTargets.map(name).join(" and ");
  if (holdsLeg) consola.warn(`kill -9 ${name(victim)}, the leader's server: its TOMA and its target, with leg ${deadLeg} of the mirror (and a share of the striped volume)`);
  else if (twoDown) {
    consola.warn(
      `kill -9 ${name(victim)}, the leader's server (its TOMA and its target), and the target of ${name(legServers[0]!)}: ` +
        `${name(victim)} holds no leg of the mirror, so leg 0 goes with ${name(legServers[0]!)}'s target`,
    );
  } else {
    consola.warn(
      `kill -9 ${name(victim)}, the leader's server (its TOMA and its target): it holds no leg of the mirror, which stays Normal ` +
        `(a leg's target killed too would leave fewer than a majority of the ${n} TOMAs with their drives)`,
    );
  }
  const killed_at = performance.now();
  const secs = (from: number) => ((performance.now() - from) / 1000).toFixed(1);
  const written_before = writer.written_bytes;
  // From here the longest pause is the failover's.
  writer.longest_pause_ms = 0;
  await Promise.all([tomas.kill(victim), ...downTargets.map((t) => d.killTarget(t))]);
  const after = await tomas.agreed((a) => a.address !== before.address);
  consola.success(`new leader: ${name(after.index)} in term ${after.term}, ${secs(killed_at)} s after the kill (it was ${name(victim)} in term ${before.term}); it took over the mirror control`);
  if (deadLeg !== null) {
    vol = await until("Degraded", async () => {
      const v = await leaderVolume();
      return v.legs[deadLeg] === "dead" ? v : null;
    });
    consola.success(`mirror Degraded after ${secs(killed_at)} s: legs ${vol.legs.join(", ")}; writes go on to the surviving legs, marking their regions dirty`);
  }
  for (let i = 0; i < 3; i++) {
    const r = await rate(1000);
    consola.info(`  ${deadLeg === null ? "" : "degraded: "}${r.toFixed(0)} MiB/s, ${formatBytes(writer.written_bytes - written_before)} written since the kill, no I/O error, longest pause since the kill ${writer.longest_pause_ms.toFixed(0)} ms`);
  }
  if (d.clientOutput().includes("client daemon homed on another TOMA")) consola.info(`the client daemon re-homed on the new leader ${name(after.index)}`);
  const striped = (await (await tomas.leaderApi(5000)).volumes()).filter((v) => v.mirrors === 1 && v.state !== "online");
  for (const v of striped) consola.info(`volume ${v.name} is ${v.state}: it has no second copy, so it waits for ${down}`);

  consola.start(
    `bringing ${name(victim)} back: ${holdsLeg ? "its target" : `its target and ${name(downTargets[1]!)}'s`} (same drive, same address), ` +
      `and its TOMA, which finds its identity and its log on its own drives and rejoins as the same node`,
  );
  const back_at = performance.now();
  for (const t of downTargets) await d.startTarget(t);
  await tomas.start(victim);
  let next_pct = 0;
  const tty = process.stdout.isTTY === true;
  let total = 0;
  let rejoined = false;
  const say = (line: string) => {
    if (tty) process.stdout.write("\r\x1b[K");
    consola.success(line);
  };
  vol = await until("Normal again", async () => {
    if (!rejoined) {
      const k = await tomas.consensus(victim);
      if (k?.phase === "running" && k.leader && k.leader.address !== k.address) {
        if (k.node_id !== node_id) throw new CheckFailed(`${name(victim)}'s TOMA came back as node ${k.node_id}, not as ${node_id}`);
        say(`${name(victim)}'s TOMA rejoined ${secs(back_at)} s after its restart: node ${k.node_id}, the same node, ${k.role} in term ${k.term} of leader ${tomas.nameOf(k.leader.address)}`);
        rejoined = true;
      }
    }
    const v = await leaderVolume();
    const r = deadLeg === null ? null : v.leg_views[deadLeg]?.rebuild;
    if (deadLeg !== null && v.legs[deadLeg] === "syncing" && r && r.total_bytes > 0) {
      total = r.total_bytes;
      const pct = Math.floor((100 * r.done_bytes) / r.total_bytes);
      const line = `  rebuilding leg ${deadLeg}: ${progressBar(r.done_bytes, r.total_bytes)} of ${formatBytes(r.total_bytes)} · writer ${formatBytes(writer.written_bytes - written_before)} since the kill`;
      if (tty) process.stdout.write(`\r${line}   `);
      else if (pct >= next_pct) {
        // Not a terminal (a log, a test): a line at every quarter instead of a live bar.
        consola.log(line);
        next_pct = (Math.floor(pct / 25) + 1) * 25;
      }
    }
    return rejoined && v.state === "online" && v.legs.every((l) => l === "ok") ? v : null;
  });
  if (tty) process.stdout.write("\n");
  consola.success(
    `mirror Normal again ${secs(back_at)} s after ${name(victim)} was restarted: ${total > 0 ? `the rebuild copied ${formatBytes(total)}, only the regions written while ${down} ${downTargets.length > 1 ? "were" : "was"} away, ` : ""}` +
      `not the whole ${formatBytes(vol.capacity_bytes)} leg; longest pause of the writes since the kill: ${writer.longest_pause_ms.toFixed(0)} ms`,
  );
  const end = await tomas.agreed();
  consola.info(`the TOMA cluster: leader ${name(end.index)} in term ${end.term}, named by all ${end.views.length} TOMAs`);

  consola.start("stopping the writer, reading everything back, comparing the legs on the drive files");
  const writes = writer.written_bytes / CHUNK_BYTES;
  await writer.stop();
  consola.success(`the writer saw no I/O error: all ${writes} of its writes (${formatBytes(writer.written_bytes)}) succeeded, ${formatBytes(writer.written_bytes - written_before)} of them after the kill`);
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
      `and the ${vol.columns.length} legs are byte-identical (${formatBytes(equal)} of each compared on the drive files)`,
  );
  return uri;
}

/** Compares the legs of a RAID1 volume on the drive files; returns the bytes of each compared. */
function compareLegs(servers: DemoServer[], vol: VolumeJson): number {
  const E = vol.extent_size_bytes;
  const legs = vol.columns.map((c) => {
    const s = servers.find((x) => x.drive_uuid === c.drive_uuid)!;
    return { s, extents: fromRuns(c.runs), fd: openSync(s.drive_path, "r"), buf: new Uint8Array(MiB) };
  });
  try {
    for (let x = 0; x < legs[0]!.extents.length; x++) {
      for (let within = 0; within < E; within += MiB) {
        for (const l of legs) readSync(l.fd, l.buf, 0, MiB, l.s.data_offset + l.extents[x]! * E + within);
        for (let l = 1; l < legs.length; l++) {
          if (!Buffer.from(legs[0]!.buf).equals(Buffer.from(legs[l]!.buf))) {
            throw new Error(`mirror: legs 0 and ${l} differ at offset ${x * E + within} of the volume`);
          }
        }
      }
    }
  } finally {
    for (const l of legs) closeSync(l.fd);
  }
  return legs[0]!.extents.length * E;
}
