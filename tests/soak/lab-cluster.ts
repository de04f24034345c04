/**
 * An nvmesh cluster whose servers are network namespaces on one switch (tests/support/netns.ts):
 * server sN runs `target serve` on a file drive at 10.99.0.N:4420; the TOMA runs in s1 (single
 * mode) or on every server (cluster mode, `toma run --peers`, each on its server's address); the
 * client host runs `client serve` holding only the client key (given every TOMA in cluster
 * mode); the admin host runs admin commands with the server key. Drive files stay in one folder
 * of the root file system, so the legs of a mirror are compared on them directly
 * (Cluster.compareLegs).
 */
import { rmSync } from "node:fs";
import { Daemon, NVMESH, ok, run } from "../support/proc.ts";
import { Cluster } from "../support/cluster.ts";
import { NetLab } from "../support/netns.ts";
import type { ClusterJson, VolumeJson } from "../../src/toma/api-types.ts";
import { agreement, type Consensus } from "../../src/toma/cluster/agreement.ts";

export const TARGET_PORT = 4420;
/** A TOMA cluster member that knows a leader (its progress line, printed on every change). */
const MEMBER_READY = /TOMA cluster: (leader|follower) in term \d+, leader \d/;
export const TOMA_PORT = 4000;

export interface LabClusterOptions {
  servers: number;
  drive_size: string;
  /** A TOMA on every server (`toma run --peers`) instead of one in s1. */
  cluster_mode: boolean;
  /** client serve --io-timeout. */
  io_timeout?: string;
}

export class LabCluster extends Cluster {
  readonly lab = new NetLab();
  /** Cluster mode: the TOMA of each server (index = target index); single mode: unused. */
  tomas: (Daemon | null)[] = [];
  /** Daemons killed or replaced: their output is kept for the logs. */
  readonly retired: Daemon[] = [];

  constructor(readonly labOpts: LabClusterOptions) {
    super({ targets: labOpts.servers, drive_size: labOpts.drive_size });
  }

  /** The host name of target/server t (0-based). */
  server(t: number): string {
    return `s${t + 1}`;
  }

  /** The server whose drive holds column `column` of a volume. */
  serverOf(v: VolumeJson, column: number): number {
    const path = this.driveFile(v.columns[column]!.drive_uuid).path;
    const t = this.drives.findIndex((ds) => ds.includes(path));
    if (t < 0) throw new Error(`column ${column} of ${v.name} is on no server's drive`);
    return t;
  }

  serverCount(): number {
    return this.labOpts.servers;
  }

  tomaAddress(t: number): string {
    return `${this.lab.ip(this.server(t))}:${TOMA_PORT}`;
  }

  protected override nvmesh(name: string): string[] {
    const t = /^t(\d+)$/.exec(name);
    if (t) return [...this.lab.exec(this.server(Number(t[1]))), NVMESH];
    const k = /^toma(\d+)$/.exec(name);
    if (k) return [...this.lab.exec(this.server(Number(k[1]))), NVMESH];
    if (name === "toma") return [...this.lab.exec(this.server(0)), NVMESH];
    if (name === "client") return [...this.lab.exec("client"), NVMESH];
    throw new Error(`no host for daemon ${name}`);
  }

  protected override adminCommand(): string[] {
    return [...this.lab.exec("admin"), NVMESH];
  }

  override async start(): Promise<this> {
    const hosts = Array.from({ length: this.labOpts.servers }, (_, t) => this.server(t));
    await this.lab.create([...hosts, "client", "admin"]);
    // The client host gets the client key the way an operator makes it.
    await ok([NVMESH, "cluster", "client-key", "--force", "--out", this.clientKeyEnv.NVMESH_KEY_FILE!], { env: this.keyEnv });
    await this.formatDrives();
    for (let t = 0; t < hosts.length; t++) await this.startTarget(t, `${this.lab.ip(hosts[t]!)}:${TARGET_PORT}`);
    if (this.labOpts.cluster_mode) {
      await requirePeersFlag();
      for (let t = 0; t < hosts.length; t++) await this.startTomaOn(t, false);
      for (const d of this.tomas) await d!.waitFor(MEMBER_READY, 60_000);
      // The client daemon homes on the first TOMA that answers (which relays its calls to the
      // leader) and re-homes on another when it dies: every TOMA.
      this.client_management = Array.from({ length: hosts.length }, (_, t) => this.tomaAddress(t)).join(",");
      const agreed = await this.agreement(60_000);
      if (agreed === null) throw new Error("the TOMAs did not agree on a leader within 60 s");
      this.toma_addr = this.tomaAddress(agreed.leader);
      await this.waitDrives(hosts.length, 60_000);
    } else {
      await this.startToma(this.tomaAddress(0));
    }
    const extra = this.labOpts.io_timeout ? ["--io-timeout", this.labOpts.io_timeout] : [];
    await this.startClient(...extra);
    return this;
  }

  /** Cluster mode: starts the TOMA of server t with every server as its peer. */
  async startTomaOn(t: number, ready = true): Promise<void> {
    const peers = Array.from({ length: this.labOpts.servers }, (_, i) => this.tomaAddress(i)).join(",");
    const args = [...this.nvmesh(`toma${t}`), "toma", "run", "--listen", this.tomaAddress(t), "--target", `${this.lab.ip(this.server(t))}:${TARGET_PORT}`, "--peers", peers, "--name", this.server(t)];
    const d = new Daemon(`toma ${this.server(t)}`, args, this.keyEnv);
    this.tomas[t] = d;
    await d.waitFor(ready ? MEMBER_READY : /management API on/, 60_000);
  }

  /** Attaches a volume on the client host (which holds the client key only); its NBD URI. */
  override async attach(volume: string): Promise<string> {
    const out = await ok([...this.lab.exec("client"), NVMESH, "client", "attach", "--volume", volume, "--run-dir", this.runDir], { env: this.clientKeyEnv });
    const m = /(nbd(\+unix)?:\/\/\S+)/.exec(out);
    if (!m) throw new Error(`attach printed no NBD URI: ${out}`);
    return m[1]!;
  }

  override async killTarget(t: number): Promise<void> {
    const d = this.targets[t];
    if (d) this.retired.push(d);
    await super.killTarget(t);
  }

  async killToma(): Promise<void> {
    if (!this.toma) return;
    this.retired.push(this.toma);
    await this.toma.stop("SIGKILL");
    this.toma = null;
  }

  async restartToma(): Promise<void> {
    await this.startToma(this.toma_addr);
  }

  async killTomaOn(t: number): Promise<void> {
    const d = this.tomas[t];
    if (!d) return;
    this.retired.push(d);
    await d.stop("SIGKILL");
    this.tomas[t] = null;
  }

  /** Cluster mode: TOMA t's view of the TOMA cluster, null when it does not answer within 5 s. */
  async consensusOf(t: number): Promise<Consensus | null> {
    if (!this.tomas[t]?.alive) return null;
    const r = await run([...this.adminCommand(), "cluster", "status", "-o", "json"], { env: { ...this.adminEnv(), NVMESH_MANAGEMENT: this.tomaAddress(t) }, timeout_ms: 5_000 });
    if (r.code !== 0) return null;
    return (JSON.parse(r.stdout) as { cluster?: ClusterJson }).cluster?.consensus ?? null;
  }

  /** Cluster mode: every TOMA's view, asked at once (index = server; null: no answer). */
  consensusAll(): Promise<(Consensus | null)[]> {
    return Promise.all(Array.from({ length: this.labOpts.servers }, (_, t) => this.consensusOf(t)));
  }

  /** The server whose management address this is (`10.99.0.N:4000`), or -1. */
  serverAt(address: string): number {
    const host = this.lab.hostOf(address.replace(/:\d+$/, ""));
    return host && /^s\d+$/.test(host) ? Number(host.slice(1)) - 1 : -1;
  }

  /**
   * Cluster mode: polls until every TOMA runs and answers, exactly one claims to lead (ready, an
   * entry of its term applied) and every one names it in that term; null after timeout_ms.
   */
  async agreement(timeout_ms: number): Promise<{ leader: number; term: number } | null> {
    const deadline = performance.now() + timeout_ms;
    const addrs = Array.from({ length: this.labOpts.servers }, (_, t) => this.tomaAddress(t));
    while (performance.now() < deadline) {
      const a = agreement(addrs, await this.consensusAll());
      if (a !== null) {
        if (a.index < 0) throw new Error(`leader ${a.address} is none of the servers`);
        return { leader: a.index, term: a.term };
      }
      await Bun.sleep(250);
    }
    return null;
  }

  /** Polls `drive show` until `count` drives are members of the pool. */
  async waitDrives(count: number, timeout_ms: number): Promise<void> {
    const deadline = performance.now() + timeout_ms;
    let last = "";
    while (performance.now() < deadline) {
      const r = await this.cliWithin(10_000, "drive", "show", "-o", "json");
      if (r.code === 0 && (JSON.parse(r.stdout) as { member: boolean }[]).filter((d) => d.member).length >= count) return;
      last = r.code === 0 ? r.stdout.slice(0, 300) : r.stderr.slice(0, 300);
      await Bun.sleep(250);
    }
    throw new Error(`fewer than ${count} drives in the pool after ${timeout_ms} ms: ${last}`);
  }

  /**
   * Cluster mode: the server whose TOMA leads, as the TOMAs say in `cluster status -o json`:
   * the one claiming the lead, else the leader the others name. No answer naming one is an
   * error, not a guess.
   */
  async leader(): Promise<number> {
    const views = await this.consensusAll();
    const claim = views.find((v) => v?.role === "leader" && v.leader_ready) ?? views.find((v) => v?.leader?.address);
    const addr = claim?.role === "leader" ? claim.address : claim?.leader?.address;
    if (!addr) throw new Error(`no TOMA named a leader in cluster status: ${JSON.stringify(views.map((v) => v && { role: v.role, term: v.term, reason: v.reason }))}`);
    const idx = this.serverAt(addr);
    if (idx < 0) throw new Error(`leader ${addr} is none of the servers`);
    this.toma_addr = this.tomaAddress(idx);
    return idx;
  }

  /**
   * Cluster mode: asks the last leader known first (reads answer from a TOMA's applied state: the
   * leader's is the newest), then each other TOMA in turn until one answers (the one asked first
   * may be the server that is down); single mode: the one TOMA.
   */
  override async cliWithin(timeout_ms: number, ...args: string[]) {
    if (!this.labOpts.cluster_mode) return await super.cliWithin(timeout_ms, ...args);
    let last = await super.cliWithin(timeout_ms, ...args);
    for (let t = 0; t < this.labOpts.servers && last.code !== 0; t++) {
      if (this.tomaAddress(t) === this.toma_addr || !this.tomas[t]?.alive) continue;
      last = await run([...this.adminCommand(), ...args], { env: { ...this.adminEnv(), NVMESH_MANAGEMENT: this.tomaAddress(t) }, timeout_ms });
    }
    return last;
  }

  /** Cluster mode: `volume show NAME` from the leader known, else any TOMA that answers. */
  override async volume(name: string): Promise<VolumeJson> {
    if (!this.labOpts.cluster_mode) return await super.volume(name);
    const r = await this.cliWithin(10_000, "volume", "show", name, "-o", "json");
    if (r.code !== 0) throw new Error(`volume show ${name}: no TOMA answered: exit ${r.code} ${r.stderr.trim().slice(0, 300)}`);
    return JSON.parse(r.stdout) as VolumeJson;
  }

  /** Every daemon that ran, alive or retired, with a name for its log file. */
  allDaemons(): Daemon[] {
    return [...this.retired, ...this.daemons(), ...this.tomas.filter((d): d is Daemon => d !== null)];
  }

  /** Stops every daemon, removes the lab's namespaces, and the folder unless `keep`. */
  override async destroy(keep = false): Promise<void> {
    try {
      // Killed outright: a paused process handles no SIGTERM, and the data was checked already.
      for (const d of this.tomas) await d?.stop("SIGKILL");
      await this.stopAll("SIGKILL");
    } finally {
      await this.lab.destroy();
      if (!keep) rmSync(this.dir, { recursive: true, force: true });
    }
  }
}

/** Cluster mode needs `toma run --peers`: fail with a clear message where this build lacks it. */
export async function requirePeersFlag(): Promise<void> {
  const r = await run([NVMESH, "toma", "run", "--help"]);
  if (!/--peers/.test(r.stdout + r.stderr)) {
    throw new Error("--cluster needs a TOMA per server (`nvmesh toma run --peers …`), which this build of nvmesh does not have yet; run without --cluster (one TOMA in s1)");
  }
}
