/**
 * A whole simulated cluster running the real code: servers (a target each, and on the first one
 * the TOMA), clients (the client daemon, its NBD export, and a workload through the real NBD
 * client), simulated drives, network and clocks. Crash, restart, move and heal any part of it.
 */
import { openDrive } from "../src/engine/drive/formatted-drive.ts";
import { formatDrive } from "../src/engine/drive/format.ts";
import type { FormattedDrive } from "../src/engine/drive/formatted-api.ts";
import { type Env, sleep } from "../src/engine/env.ts";
import { ClientDaemon } from "../src/engine/client/daemon.ts";
import { plan, planMirror } from "../src/engine/layout/planner.ts";
import type { VolumeLayout } from "../src/engine/layout/types.ts";
import { tomaLinkOver } from "../src/engine/client/toma-link.ts";
import { connectNbd, type NbdClient } from "../src/engine/nbd/client.ts";
import { ExportRegistry } from "../src/engine/nbd/exports.ts";
import { NbdServer } from "../src/engine/nbd/server.ts";
import { TargetService } from "../src/engine/target/service.ts";
import { computeGeometry, isInvalid } from "../src/engine/drive/superblock.ts";
import { uuidToString } from "../src/engine/uuid.ts";
import { openSession } from "../src/engine/wire/session.ts";
import { asClientKey } from "../src/engine/wire/cluster-key.ts";
import type { VolumeRequest } from "../src/toma/allocator.ts";
import { managementApi } from "../src/toma/api.ts";
import { ManagementSigner } from "../src/toma/api-auth.ts";
import { Toma, type TomaTimings } from "../src/toma/toma.ts";
import type { ClusterState } from "../src/toma/cluster-state.ts";
import { ClusterMember } from "../src/toma/cluster/member.ts";
import { clusterMemberApi, DRIVE_REPORT_PATH, IDENTITY_PATH, RAFT_PATH } from "../src/toma/cluster/cluster-api.ts";
import { parseIdentity } from "../src/toma/cluster/identity.ts";
import { homedCall } from "../src/toma/homing.ts";
import { Checker } from "./checker.ts";
import { type DriveProfile, openSimDrive, quietDriveProfile, SimMedium } from "./drive.ts";
import { callMgmt, serveMgmt } from "./mgmt-rpc.ts";
import { type NetProfile, quietProfile, SimNetwork } from "./net.ts";
import { type CrashKind, type Incarnation, SimNode } from "./node.ts";
import type { Prng } from "./prng.ts";
import { SECTOR } from "./sector-value.ts";
import { DEFAULT_WORKLOAD, Workload, type WorkloadOptions } from "./workload.ts";
import type { World } from "./world.ts";

export const TARGET_PORT = 4420;
export const MGMT_PORT = 4000;

export interface ClusterSpec {
  servers: number;
  drives_per_server: number;
  drive_bytes: number;
  clients: number;
  volumes: VolumeRequest[];
  net: NetProfile;
  drive: DriveProfile;
  io_timeout_ms: number;
  workload: WorkloadOptions;
  toma_timings: Partial<TomaTimings>;
  /** How long an abandoned write may still land (see checker.ts); at least the network's MSL. */
  settle_ms: number;
  /** Per-node clock rate range (1 = exact). */
  clock_rate: [number, number];
  /**
   * A TOMA on every server (`toma run --peers`: src/toma/cluster/), the leader running the mirror
   * control; clients home on it. Off: one TOMA, on the first server.
   */
  toma_cluster: boolean;
  /**
   * With toma_cluster: every client daemon is given the TOMAs in the same order (all homed on the
   * first server's TOMA) instead of each starting on another server's.
   */
  clients_home_first?: boolean;
  /**
   * With toma_cluster: the TOMAs that do not lead refer client daemons to the leader (421)
   * instead of relaying their calls, so every daemon is homed on the leader itself.
   */
  clients_on_leader?: boolean;
}

/**
 * The mirrored volume the mirroring issue adds to the workload (`bun run sim --mirror`). Not in
 * the default spec yet: some seeds still fail with it (see docs/mirroring.md, "Status").
 */
export const MIRROR_VOLUME: VolumeRequest = { name: "mirror", capacity_bytes: 2 * 1024 * 1024, raid_level: "1", mirrors: 2 };

export function defaultSpec(): ClusterSpec {
  return {
    servers: 3,
    drives_per_server: 2,
    drive_bytes: 64 * 1024 * 1024,
    clients: 2,
    volumes: [
      { name: "stripes", capacity_bytes: 6 * 1024 * 1024, raid_level: "0", stripe_width: 3, stripe_size_bytes: 4096 },
      { name: "concat", capacity_bytes: 3 * 1024 * 1024, raid_level: "concatenated" },
    ],
    net: quietProfile(),
    drive: quietDriveProfile(),
    io_timeout_ms: 10_000,
    workload: DEFAULT_WORKLOAD,
    toma_timings: { poll_ms: 500, sync_ms: 500, request_timeout_ms: 2000, backoff_max_ms: 2000 },
    settle_ms: 2000,
    clock_rate: [0.9, 1.1],
    toma_cluster: false,
  };
}

export interface ServerSim {
  name: string;
  node: SimNode;
  media: SimMedium[];
  target: TargetService | null;
  toma: Toma | null;
  /** With spec.toma_cluster: this server's TOMA, a member of the TOMA cluster. */
  member: ClusterMember | null;
  inc: Incarnation | null;
  /** Drives plugged in while this incarnation was still booting: added once its target is up. */
  plugged_while_booting: FormattedDrive[];
}

export interface ClientSim {
  name: string;
  node: SimNode;
  daemon: ClientDaemon | null;
  workloads: Workload[];
  nbd: NbdClient[];
  /** Checker identity of the current incarnation ("c1#2"). */
  id: string;
  ready: boolean;
}

export class SimCluster {
  readonly net: SimNetwork;
  readonly servers: ServerSim[] = [];
  readonly clients: ClientSim[] = [];
  readonly media: SimMedium[] = [];
  /** A drive's uuid comes from formatting it, not from the medium. */
  readonly uuidOf = new Map<SimMedium, string>();
  readonly checker: Checker;
  layouts: VolumeLayout[] = [];
  private readonly prng: Prng;
  /** The cluster's server key: targets and the TOMA hold it, clients the client key from it. */
  readonly key: Uint8Array;
  workloadsRunning = true;
  /** Every workload of every incarnation, for the liveness check. */
  readonly allWorkloads: Workload[] = [];

  constructor(
    readonly world: World,
    readonly spec: ClusterSpec,
  ) {
    this.prng = world.prng.fork("cluster");
    this.key = new Uint8Array(32);
    world.prng.fork("cluster-key").fill(this.key);
    this.net = new SimNetwork(world, spec.net);
    const clockFor = (name: string) => {
      const p = world.prng.fork(`clock:${name}`);
      return { offset_ms: p.range(0, 1e9), rate: p.range(spec.clock_rate[0], spec.clock_rate[1]) };
    };
    for (let i = 1; i <= spec.servers; i++) {
      const name = `s${i}`;
      const s: ServerSim = { name, node: new SimNode(world, name, this.net, clockFor(name)), media: [], target: null, toma: null, member: null, inc: null, plugged_while_booting: [] };
      for (let d = 0; d < spec.drives_per_server; d++) {
        const m = new SimMedium(world, { name: `${name}-d${d + 1}`, size_bytes: spec.drive_bytes, profile: spec.drive });
        s.media.push(m);
        this.media.push(m);
      }
      this.servers.push(s);
    }
    for (let i = 1; i <= spec.clients; i++) {
      const name = `c${i}`;
      this.clients.push({ name, node: new SimNode(world, name, this.net, clockFor(name)), daemon: null, workloads: [], nbd: [], id: name, ready: false });
    }
    // Without fencing (the mirroring issue adds it), an abandoned write may still land for as long
    // as the network can hold its frames: a dead client's queued segments, a clogged link.
    const settle_ms = Math.max(spec.settle_ms, spec.net.msl_ms + 1000);
    this.checker = new Checker(world, (v, s) => this.driveOf(v, s), settle_ms);
  }

  get tomaServer(): ServerSim {
    return this.servers[0]!;
  }

  get mgmtAddress(): string {
    return `${this.tomaServer.name}:${MGMT_PORT}`;
  }

  /** Every TOMA's management address (one, or every server's with a TOMA cluster). */
  get mgmtAddresses(): string[] {
    return this.spec.toma_cluster ? this.servers.map((s) => `${s.name}:${MGMT_PORT}`) : [this.mgmtAddress];
  }

  /** The member that leads with its control running now, if any (a TOMA cluster). */
  leaderMember(): ClusterMember | null {
    let best: ClusterMember | null = null;
    for (const s of this.servers) {
      const m = s.node.alive ? s.member : null;
      const v = m?.node.view();
      if (!m || v?.role !== "leader" || !m.control.active()) continue;
      if (!best || (v.term ?? 0) > (best.node.view().term ?? 0)) best = m;
    }
    return best;
  }

  /** The cluster state the TOMA acts on now (the single TOMA's, or the leader's applied state). */
  clusterState(): ClusterState | null {
    if (!this.spec.toma_cluster) return this.tomaServer.toma?.state ?? null;
    return this.leaderMember()?.node.appliedState() ?? null;
  }

  /** The drives holding a sector: one, or every leg of its mirror set. */
  private driveOf(volume: number, sector: number): string[] {
    const layout = this.layouts[volume];
    if (!layout) return ["?"];
    if (layout.mirrors > 1) return planMirror(layout, sector * SECTOR, SECTOR)[0]!.legs.map((l) => l.drive_uuid);
    return [plan(layout, sector * SECTOR, SECTOR)[0]!.drive_uuid];
  }

  /** Formats every drive, boots servers, creates the volumes, boots clients and their workloads. */
  async setup(): Promise<void> {
    const installer = new SimNode(this.world, "install", this.net, { offset_ms: 0, rate: 1 });
    const { inc } = installer.boot();
    let formatted = 0;
    for (const m of this.media) {
      const uuid = new Uint8Array(16);
      this.prng.fill(uuid);
      uuid[6] = (uuid[6]! & 0x0f) | 0x40;
      uuid[8] = (uuid[8]! & 0x3f) | 0x80;
      this.uuidOf.set(m, uuidToString(uuid));
      void formatDrive(openSimDrive(this.world, m, inc, this.prng.fork(`format:${m.name}`)), {
        drive_uuid: uuidToString(uuid),
        extent_size_bytes: 1024 * 1024,
        existingCheck: false,
      }).then(() => formatted++);
    }
    await this.runUntil(() => formatted === this.media.length, 60_000, "formatting drives");
    installer.crash("process");
    for (const s of this.servers) this.bootServer(s);
    if (this.spec.toma_cluster) this.watchLeaders();
    if (this.spec.toma_cluster) await this.createVolumesOnLeader();
    else await this.createVolumesOnToma();
    for (const c of this.clients) this.bootClient(c);
    await this.runUntil(() => this.clients.every((c) => c.ready), 60_000, "clients attached");
  }

  private async createVolumesOnToma(): Promise<void> {
    const toma = () => this.tomaServer.toma;
    await this.runUntil(() => toma() !== null, 60_000, "TOMA started");
    let ready = false;
    toma()!.whenReady(60_000).then(
      () => (ready = true),
      (e) => this.world.fail(`TOMA not ready: ${(e as Error).message}`),
    );
    await this.runUntil(() => ready, 60_000, "TOMA ready");
    for (const req of this.spec.volumes) {
      let done = false;
      void toma()!.createVolume(req).then((r) => {
        if (!r.ok) this.world.fail(`cannot create volume ${req.name}: ${r.error}`);
        done = true;
      });
      await this.runUntil(() => done, 60_000, `create volume ${req.name}`);
    }
    this.layouts = this.spec.volumes.map((req) => {
      const vol = toma()!.state!.volumes.find((v) => v.name === req.name)!;
      return toma()!.attachInfo(vol).layout;
    });
  }

  /**
   * Raft's election safety, checked on the real members all along the run: every 20 ms of virtual
   * time, each live member that says it leads names its term, and no term ever has two leaders.
   */
  private watchLeaders(): void {
    const leaderOf = new Map<number, string>();
    const check = () => {
      for (const s of this.servers) {
        const v = s.node.alive ? s.member?.node.view() : undefined;
        if (v?.role !== "leader" || v.term === null || v.node_id === null) continue;
        const other = leaderOf.get(v.term);
        if (other === undefined) leaderOf.set(v.term, v.node_id);
        else if (other !== v.node_id) this.world.fail(`two leaders in term ${v.term}: ${other} and ${v.node_id}`);
      }
      this.world.after(20, check);
    };
    this.world.after(20, check);
  }

  /** Index → the term of the entry first applied there, and by whom. */
  private readonly appliedAt = new Map<number, { term: number; by: string }>();

  /**
   * Raft's state machine safety, checked on the real members as they apply: an applied entry is
   * named by (index, term) (log matching), and no two members, nor two lifetimes of one, ever apply
   * different entries at one index.
   */
  private watchApplied(s: ServerSim, member: ClusterMember): void {
    member.node.onApply = (index, term) => {
      const by = `${s.name} (${member.node.view().node_id})`;
      const first = this.appliedAt.get(index);
      if (first === undefined) this.appliedAt.set(index, { term, by });
      else if (first.term !== term) {
        this.world.fail(`state machine safety: ${by} applied the entry of term ${term} at index ${index}, where ${first.by} applied the entry of term ${first.term}`);
      }
    };
  }

  /** A TOMA cluster: once a leader runs its control with every drive in the pool, it creates the volumes. */
  private async createVolumesOnLeader(): Promise<void> {
    const drives = this.media.length;
    await this.runUntil(() => (this.leaderMember()?.node.appliedState()?.drives.length ?? 0) === drives, 60_000, "a leader with every drive in the pool");
    for (const req of this.spec.volumes) {
      let done = false;
      const leader = this.leaderMember()!;
      leader.volumes.create(req).then(
        () => (done = true),
        (e) => this.world.fail(`cannot create volume ${req.name}: ${(e as Error).message}`),
      );
      await this.runUntil(() => done, 60_000, `create volume ${req.name}`);
    }
    const leader = this.leaderMember()!;
    this.layouts = this.spec.volumes.map((req) => {
      const vol = leader.node.appliedState()!.volumes.find((v) => v.name === req.name)!;
      return leader.control.active()!.attachInfo(vol).layout;
    });
  }

  private readonly envs = new Map<Incarnation, Env>();

  async runUntil(cond: () => boolean, within_ms: number, what: string): Promise<void> {
    const r = await this.world.run(cond, this.world.now + within_ms);
    if (r === "failed") throw new Error(this.world.failure!);
    if (r !== "done") {
      this.world.fail(`${what}: not done within ${within_ms} ms of virtual time (${r})`);
      throw new Error(this.world.failure!);
    }
  }

  // ---- servers ---------------------------------------------------------------------------------

  bootServer(s: ServerSim): void {
    const { env, inc } = s.node.boot();
    s.inc = inc;
    this.envs.set(inc, env);
    s.target = null;
    s.toma = null;
    s.member = null;
    s.plugged_while_booting = [];
    const prng = this.prng.fork(`${s.name}#${inc.number}`);
    // The drives present at power-on; plug() takes care of any that arrive during the boot.
    const present = s.media.filter((m) => m.plugged);
    void (async () => {
      const drives: FormattedDrive[] = [];
      for (const m of present) {
        const epoch = m.epoch;
        try {
          const d = await openDrive(openSimDrive(this.world, m, inc, prng.fork(m.name)), m.name);
          if (this.stillIn(m, s, epoch)) drives.push(d);
        } catch (e) {
          env.log.error("cannot open drive", { drive: m.name, error: (e as Error).message });
        }
      }
      const target = new TargetService(env, { name: s.name, drives, fencing: true, cluster_key: this.key });
      await env.net.listen(`${s.name}:${TARGET_PORT}`, (c) => target.handle(c));
      s.target = target;
      for (const d of s.plugged_while_booting.splice(0)) target.addDrive(d);
      if (this.spec.toma_cluster) await this.bootMember(s, env);
      else if (s === this.tomaServer) {
        const toma = new Toma(env, {
          name: `toma-${s.name}`,
          targets: this.servers.map((x) => `${x.name}:${TARGET_PORT}`),
          timings: this.spec.toma_timings,
          cluster_key: this.key,
        });
        toma.start();
        s.toma = toma;
        const api = managementApi(env, toma, this.key);
        await serveMgmt(env, `${s.name}:${MGMT_PORT}`, () => api);
      }
    })().catch((e) => this.world.fail(`server ${s.name} failed to boot: ${(e as Error).stack}`));
  }

  /** The server's TOMA as a member of the TOMA cluster, over the simulated network. */
  private async bootMember(s: ServerSim, env: Env): Promise<void> {
    const signer = new ManagementSigner({ kind: "server", key: this.key });
    const call = (address: string, method: string, path: string, body?: unknown) => callMgmt(env, address, signer, method, path, 3000, body);
    // A client daemon's call relayed to the leader: shorter than the daemon's own (10 s), longer than a held watch (3 s).
    const call8 = (address: string, method: string, path: string, body?: unknown) => callMgmt(env, address, signer, method, path, 8000, body);
    const keyed = { cluster_key: { kind: "server" as const, key: this.key } };
    const member = new ClusterMember(env, {
      name: s.name,
      targets: [`${s.name}:${TARGET_PORT}`],
      peers: this.mgmtAddresses,
      connect: (address) => openSession(env, address, { version: 1, role: "toma", name: s.name }, keyed),
      control_connect: (address) => openSession(env, address, { version: 1, role: "toma", name: `${s.name}/leader` }, keyed),
      rebuild_connect: (address, tag) => openSession(env, address, { version: 1, role: "toma", name: `${s.name}/rebuild/${tag}` }, keyed),
      post: async (address, bytes) => {
        await call(address, "POST", RAFT_PATH, { envelope: Buffer.from(bytes).toString("base64") });
      },
      ask: async (address) => parseIdentity(await call(address, "GET", IDENTITY_PATH), address),
      report: (address, report) => call(address, "POST", DRIVE_REPORT_PATH, report),
      server_key: this.key,
      relay: this.spec.clients_on_leader ? null : (address, method, path, body) => call8(address, method, path, body),
    });
    this.watchApplied(s, member);
    member.start();
    s.member = member;
    const api = clusterMemberApi(env, member, this.key);
    await serveMgmt(env, `${s.name}:${MGMT_PORT}`, () => api);
  }

  crashServer(s: ServerSim, kind: CrashKind): void {
    if (!s.node.alive) return;
    if (kind === "power") for (const m of s.media) if (m.plugged) this.checker.powerLoss(this.uuidOf.get(m)!);
    s.node.crash(kind);
    s.target = null;
    s.toma = null;
    s.member = null;
  }

  /** Pulls a drive out of its server (a power loss for that drive). */
  unplug(m: SimMedium): void {
    const s = this.serverOf(m);
    if (!m.plugged) return;
    const uuid = this.uuidOf.get(m)!;
    this.checker.powerLoss(uuid);
    s?.target?.removeDrive(uuid);
    m.unplug(this.prng);
  }

  /** Plugs a drive into `to` (any server, not necessarily the one it came from). */
  plug(m: SimMedium, to: ServerSim): void {
    const from = this.serverOf(m);
    if (from) from.media.splice(from.media.indexOf(m), 1);
    to.media.push(m);
    m.replug();
    this.world.log("sim", `drive ${m.name} plugged into ${to.name}`);
    if (!to.node.alive || !to.inc) return; // opened at its next boot
    const inc = to.inc;
    const env = this.envs.get(inc)!;
    const epoch = m.epoch;
    void openDrive(openSimDrive(this.world, m, inc, this.prng.fork(`${m.name}@${to.name}`)), m.name)
      .then((d) => {
        // Pulled again (or moved on) while it was being opened: the handle is dead already.
        if (!inc.alive || !this.stillIn(m, to, epoch)) return;
        if (to.target) to.target.addDrive(d);
        else to.plugged_while_booting.push(d);
      })
      .catch((e) => env.log.error("cannot open plugged drive", { drive: m.name, error: (e as Error).message }));
  }

  /** Where `sector` of `volume` lives: its medium and the byte offset on it. */
  locate(volume: number, sector: number): { medium: SimMedium; byte: number } {
    const seg = plan(this.layouts[volume]!, sector * SECTOR, SECTOR)[0]!;
    const medium = [...this.uuidOf].find(([, u]) => u === seg.drive_uuid)![0];
    const g = computeGeometry(medium.size_bytes, 1024 * 1024);
    if (isInvalid(g)) throw new Error(g.invalid);
    return { medium, byte: g.data_offset + seg.drive_offset };
  }

  /** The drive is still plugged into `s` since the plug that had `epoch`. */
  private stillIn(m: SimMedium, s: ServerSim, epoch: number): boolean {
    return m.plugged && m.epoch === epoch && this.serverOf(m) === s;
  }

  serverOf(m: SimMedium): ServerSim | undefined {
    return this.servers.find((s) => s.media.includes(m));
  }

  // ---- clients ---------------------------------------------------------------------------------

  bootClient(c: ClientSim): void {
    const { env, inc } = c.node.boot();
    this.envs.set(inc, env);
    c.id = `${c.name}#${inc.number}`;
    c.ready = false;
    c.workloads = [];
    c.nbd = [];
    const exports = new ExportRegistry();
    const nbd = new NbdServer(env, exports);
    // A client host holds the client key only: fenced on the data path, its own routes only on
    // the management API (src/engine/target/capability.ts, src/toma/api-auth.ts).
    const key = asClientKey({ kind: "server", key: this.key });
    const signer = new ManagementSigner(key);
    // A watch is held up to 3 s by the TOMA: give it longer than that. Homed on the TOMA that
    // serves clients (the leader of a TOMA cluster), re-homed when it dies (src/toma/homing.ts).
    // With a TOMA on every server, each client starts on another one (its "own server's"): the
    // TOMAs that are not the leader relay its calls (src/toma/cluster/client-relay.ts).
    const all = this.mgmtAddresses;
    const first = this.spec.clients_home_first ? 0 : this.clients.indexOf(c) % all.length;
    const homes = [...all.slice(first), ...all.slice(0, first)];
    // Without the relay only the leader serves clients: its "own" TOMA is no home to go back to.
    const homing = homedCall(
      env,
      homes,
      (address, method, path, body) => callMgmt(env, address, signer, method, path, path.includes("/watch") ? 10_000 : 3000, body),
      { return_home: !this.spec.clients_on_leader },
    );
    const daemon = new ClientDaemon(env, {
      toma: tomaLinkOver(homing.call),
      openSession: (e, address, hello) => openSession(e, address, hello, { cluster_key: key }),
      nbd,
      exports,
      socket_dir: "/run/nvmesh",
      client_name: c.id,
      io_timeout_ms: this.spec.io_timeout_ms,
    });
    c.daemon = daemon;
    const prng = this.prng.fork(`workload:${c.id}`);
    void (async () => {
      for (const [i, req] of this.spec.volumes.entries()) {
        let uri = "";
        for (;;) {
          try {
            uri = (await daemon.attach({ volume: req.name })).uri;
            break;
          } catch (e) {
            env.log.info("attach failed, retrying", { volume: req.name, error: (e as Error).message });
            await sleep(env, 500);
          }
        }
        const socket = uri.slice(uri.indexOf("socket=") + 7);
        const client = await connectNbd(env, `unix:${socket}`, req.name);
        c.nbd.push(client);
        const w = new Workload(env, prng.fork(req.name), this.checker, c.id, i, {
          read: (o, n) => client.read(o, n),
          write: (o, d, fua) => client.write(o, d, fua),
          flush: () => client.flush(),
        }, this.spec.workload);
        c.workloads.push(w);
        this.allWorkloads.push(w);
        if (this.workloadsRunning) w.start();
      }
      c.ready = true;
    })().catch((e) => this.world.fail(`client ${c.name} failed to start: ${(e as Error).stack}`));
  }

  crashClient(c: ClientSim): void {
    if (!c.node.alive) return;
    this.checker.clientLost(c.id);
    c.node.crash("process");
    c.daemon = null;
    c.ready = false;
    c.workloads = [];
  }

  /** Stops every workload; resolves (in virtual time) when their operations in flight are done. */
  async stopWorkloads(within_ms: number): Promise<void> {
    this.workloadsRunning = false;
    let stopped = 0;
    const all = this.clients.flatMap((c) => c.workloads);
    for (const w of all) void w.stop().then(() => stopped++);
    await this.runUntil(() => stopped === all.length, within_ms, "workloads stop (every operation in flight completes)");
  }
}
