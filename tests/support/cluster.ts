/**
 * A whole nvmesh cluster of real processes on loopback for tests and benchmarks: N targets with
 * file drives in a temp folder, one TOMA, one client daemon — all the compiled binary. Faults are
 * real ones: kill -9 of a daemon, a target restarted on its address, a drive file replaced by a
 * blank formatted one. Mirror legs are compared on the drive files themselves.
 */
import { randomBytes } from "node:crypto";
import { mkdtempSync, openSync, closeSync, readFileSync, readSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { realEnv } from "../../src/engine/runtime/real-env.ts";
import { freePort } from "../../src/cmd/demo-procs.ts";
import { uuidFromString } from "../../src/engine/uuid.ts";
import type { LockEntry } from "../../src/engine/wire/control.ts";
import { type ClusterKey, clientKeyOf, formatKeyFile, parseKeyFile } from "../../src/engine/wire/cluster-key.ts";
import { openSession } from "../../src/engine/wire/session.ts";
import type { VolumeJson } from "../../src/toma/api-types.ts";
import { Daemon, NVMESH, ok, requireBinary, run } from "./proc.ts";
import { fromRuns } from "../../src/engine/layout/extent-runs.ts";

/** A formatted drive file: where its data area starts (drive offset 0 of the wire protocol). */
export interface DriveFile {
  path: string;
  uuid: string;
  data_offset: number;
}

/** Where the legs of a mirror set differ (column byte offsets, at most a few listed). */
export interface LegDifference {
  set: number;
  columns: [number, number];
  offset: number;
}

export interface ClusterOptions {
  targets?: number;
  drives_per_target?: number;
  drive_size?: string;
  extent_size?: string;
  /**
   * Run with the cluster's keys (default true): the targets, the TOMA and admin commands get the
   * server key (NVMESH_KEY_FILE), client daemons the client key (clientKeyEnv). False: every
   * daemon runs --insecure.
   */
  key?: boolean;
  /**
   * Target t0's drives are served by the client daemon itself (`client serve --drive`), which
   * then reaches them in-process; targets[0] stays null.
   */
  converged?: boolean;
}

export class Cluster {
  readonly dir: string;
  readonly drives: string[][] = [];
  /** Every drive file formatted so far, by drive uuid (a replaced drive's old entry stays). */
  readonly drive_files = new Map<string, DriveFile>();
  targets: (Daemon | null)[] = [];
  target_addrs: string[] = [];
  toma: Daemon | null = null;
  toma_addr = "";
  /** The client daemons' -m when not toma_addr (a TOMA cluster: every TOMA, comma-separated). */
  client_management: string | null = null;
  client: Daemon | null = null;
  extraClients: ExtraClient[] = [];

  /** NVMESH_KEY_FILE of the server key: targets, the TOMA, admin commands (empty without keys). */
  readonly keyEnv: Record<string, string> = {};
  /** NVMESH_KEY_FILE of the client key: client daemons (empty without keys). */
  readonly clientKeyEnv: Record<string, string> = {};
  /** What each daemon is started with: the flag that runs it without a key, when there is none. */
  readonly insecure: string[] = [];

  constructor(readonly opts: ClusterOptions = {}) {
    requireBinary();
    this.dir = mkdtempSync(`${tmpdir()}/nvmesh-test-`);
    if (opts.key ?? true) {
      const server = new Uint8Array(randomBytes(32));
      const path = `${this.dir}/cluster.key`;
      writeFileSync(path, formatKeyFile({ kind: "server", key: server }), { mode: 0o600 });
      this.keyEnv.NVMESH_KEY_FILE = path;
      const client = `${this.dir}/client.key`;
      writeFileSync(client, formatKeyFile({ kind: "client", key: clientKeyOf(server) }), { mode: 0o600 });
      this.clientKeyEnv.NVMESH_KEY_FILE = client;
    } else {
      this.insecure.push("--insecure");
    }
  }

  /** The server key, for sessions and requests a test makes itself. */
  get key(): ClusterKey | null {
    const path = this.keyEnv.NVMESH_KEY_FILE;
    return path === undefined ? null : parseKeyFile(readFileSync(path, "utf8"));
  }

  /** The client key a client host holds. */
  get clientKey(): ClusterKey | null {
    const path = this.clientKeyEnv.NVMESH_KEY_FILE;
    return path === undefined ? null : parseKeyFile(readFileSync(path, "utf8"));
  }

  get runDir(): string {
    return `${this.dir}/run`;
  }

  async formatDrives(): Promise<void> {
    const n = this.opts.targets ?? 3;
    const per = this.opts.drives_per_target ?? 1;
    for (let t = 0; t < n; t++) {
      const paths: string[] = [];
      for (let d = 0; d < per; d++) {
        const p = `${this.dir}/t${t}d${d}.img`;
        await this.formatDrive(p);
        paths.push(p);
      }
      this.drives.push(paths);
    }
  }

  /** Creates (or overwrites with) a blank drive file of the cluster's drive size and formats it. */
  async formatDrive(path: string): Promise<DriveFile> {
    rmSync(path, { force: true });
    await ok(["truncate", "-s", this.opts.drive_size ?? "256M", path]);
    const args = [NVMESH, "drive", "format", path, "-o", "json"];
    if (this.opts.extent_size) args.push("--extent-size", this.opts.extent_size);
    const sb = JSON.parse(await ok(args)) as { drive_uuid: string; data_offset: number };
    const f: DriveFile = { path, uuid: sb.drive_uuid, data_offset: sb.data_offset };
    this.drive_files.set(f.uuid, f);
    return f;
  }

  /** The drive file of a drive uuid (throws when it is not one of ours). */
  driveFile(uuid: string): DriveFile {
    const f = this.drive_files.get(uuid);
    if (!f) throw new Error(`drive ${uuid} is not one of this cluster's drive files`);
    return f;
  }

  /** kill -9 of target t (its address is kept, so restartTarget brings it back there). */
  async killTarget(t: number): Promise<void> {
    await this.targets[t]?.stop("SIGKILL");
    this.targets[t] = null;
  }

  /** Starts target t again on its old address, with whatever drive files it has now. */
  async restartTarget(t: number): Promise<void> {
    if (this.targets[t]?.alive) throw new Error(`target t${t} is still running`);
    await this.startTarget(t, this.target_addrs[t]);
  }

  /**
   * Puts a blank, freshly formatted drive file (a new drive uuid) in place of drive d of target t,
   * as when a dead disk is swapped. The target must be stopped.
   */
  async replaceDrive(t: number, d = 0): Promise<DriveFile> {
    if (this.targets[t]?.alive) throw new Error(`target t${t} must be stopped to swap its drive`);
    return await this.formatDrive(this.drives[t]![d]!);
  }

  async volume(name: string): Promise<VolumeJson> {
    return await this.cliJson<VolumeJson>("volume", "show", name);
  }

  /** Polls `volume show NAME` until `pred` holds; returns that view. */
  async waitVolume(name: string, what: string, pred: (v: VolumeJson) => boolean, timeout_ms = 60_000): Promise<VolumeJson> {
    const deadline = performance.now() + timeout_ms;
    let last: VolumeJson | null = null;
    for (;;) {
      try {
        last = await this.volume(name);
        if (pred(last)) return last;
      } catch (e) {
        if (performance.now() > deadline) throw e;
      }
      if (performance.now() > deadline) {
        throw new Error(`volume ${name}: not ${what} after ${timeout_ms} ms; last: ${JSON.stringify(last && { state: last.state, legs: last.legs, leg_views: last.leg_views })}\n--- toma:\n${this.toma?.output.slice(-4000)}`);
      }
      await Bun.sleep(100);
    }
  }

  /**
   * The locks a target holds on a drive right now (LOCK_LIST over a connection of its own, with
   * the TOMA's role, which only lists): what a test looks at to see a dead client's locks.
   */
  async locks(t: number, drive_uuid: string): Promise<LockEntry[]> {
    const quiet = { debug() {}, info() {}, warn() {}, error() {} };
    const s = await openSession(realEnv("test", quiet), this.target_addrs[t]!, { version: 1, role: "toma", name: "test-lock-inspector" }, { cluster_key: this.key });
    try {
      return await s.lockList(uuidFromString(drive_uuid));
    } finally {
      s.close();
    }
  }

  /**
   * Compares, byte for byte on the drive files, the legs of every mirror set of a volume (each
   * leg's extents in column order against the first leg's). Read with the daemons running: the
   * caller must have stopped the I/O. Returns the bytes of each leg compared (all sets) and the first
   * differences (one per 1 MiB chunk that differs, at most `limit`).
   */
  compareLegs(vol: VolumeJson, limit = 8): { bytes: number; differences: LegDifference[] } {
    const E = vol.extent_size_bytes;
    const CHUNK = 1 << 20;
    const differences: LegDifference[] = [];
    let bytes = 0;
    const sets = vol.columns.length / vol.mirrors;
    for (let set = 0; set < sets; set++) {
      const legs = Array.from({ length: vol.mirrors }, (_, i) => set * vol.mirrors + i);
      const files = legs.map((c) => {
        const col = vol.columns[c]!;
        const f = this.driveFile(col.drive_uuid);
        return { col: { extents: fromRuns(col.runs) }, f, fd: openSync(f.path, "r") };
      });
      try {
        const n = files[0]!.col.extents.length;
        const bufs = files.map(() => new Uint8Array(CHUNK));
        for (let x = 0; x < n; x++) {
          for (let within = 0; within < E; within += CHUNK) {
            for (const [i, l] of files.entries()) {
              const at = l.f.data_offset + l.col.extents[x]! * E + within;
              const got = readSync(l.fd, bufs[i]!, 0, CHUNK, at);
              if (got !== CHUNK) throw new Error(`short read of ${l.f.path} at ${at}: ${got}`);
            }
            for (let i = 1; i < files.length; i++) {
              if (Buffer.compare(bufs[0]!, bufs[i]!) !== 0 && differences.length < limit) {
                differences.push({ set, columns: [legs[0]!, legs[i]!], offset: x * E + within });
              }
            }
          }
        }
        bytes += n * E;
      } finally {
        for (const l of files) closeSync(l.fd);
      }
    }
    return { bytes, differences };
  }

  /** How the daemon `name` ("t0", "toma", "client") runs nvmesh: the compiled binary. */
  protected nvmesh(_name: string): string[] {
    return [NVMESH];
  }

  async startTarget(t: number, listen = this.target_addrs[t] ?? "127.0.0.1:0"): Promise<string> {
    const args = [...this.nvmesh(`t${t}`), "target", "serve", "--listen", listen, "--name", `t${t}`, ...this.insecure];
    for (const p of this.drives[t]!) args.push("--drive", p);
    const d = new Daemon(`target t${t}`, args, this.keyEnv);
    const m = await d.waitFor(/target ready on (\S+)/);
    this.targets[t] = d;
    this.target_addrs[t] = m[1]!;
    return m[1]!;
  }

  /** Starts the TOMA; with `ready` false, returns once its API listens (before it found the cluster). */
  async startToma(listen = this.toma_addr || "127.0.0.1:0", ready = true): Promise<void> {
    const args = [...this.nvmesh("toma"), "toma", "run", "--listen", listen, ...this.insecure];
    for (const a of this.target_addrs) args.push("--target", a);
    this.toma = new Daemon("toma", args, this.keyEnv);
    const m = await this.toma.waitFor(ready ? /toma ready on (\S+)/ : /management API on (\S+?);/, 30_000);
    this.toma_addr = m[1]!;
  }

  /** The extra arguments the client daemon was last started with. */
  clientArgs: string[] = [];

  async startClient(...extra: string[]): Promise<void> {
    this.clientArgs = extra;
    // A client host holds the client key; a converged one (--drive) also serves drives: the server key.
    const keys = extra.includes("--drive") ? this.keyEnv : this.clientKeyEnv;
    this.client = new Daemon("client", [...this.nvmesh("client"), "client", "serve", "--run-dir", this.runDir, "-m", this.client_management ?? this.toma_addr, ...this.insecure, ...extra], keys);
    await this.client.waitFor(/client ready/);
  }

  /**
   * Another client daemon (another "host"): its own name, run directory and environment (e.g. a
   * test-only evil switch). Stop it with stopExtraClient.
   */
  async startExtraClient(name: string, env: Record<string, string> = {}): Promise<ExtraClient> {
    const runDir = `${this.dir}/run-${name}`;
    const daemon = new Daemon(`client ${name}`, [NVMESH, "client", "serve", "--run-dir", runDir, "-m", this.client_management ?? this.toma_addr, "--name", name, ...this.insecure], { ...this.clientKeyEnv, ...env });
    await daemon.waitFor(/client ready/);
    const c = { name, runDir, daemon };
    this.extraClients.push(c);
    return c;
  }

  /** Attaches a volume through an extra client daemon; returns its NBD URI. */
  async attachOn(c: ExtraClient, volume: string): Promise<string> {
    const out = await ok([NVMESH, "client", "attach", "--volume", volume, "--run-dir", c.runDir]);
    const m = /(nbd(\+unix)?:\/\/\S+)/.exec(out);
    if (!m) throw new Error(`attach printed no NBD URI: ${out}`);
    return m[1]!;
  }

  async detachOn(c: ExtraClient, volume: string): Promise<void> {
    await ok([NVMESH, "client", "detach", "--volume", volume, "--run-dir", c.runDir]);
  }

  async stopExtraClient(c: ExtraClient): Promise<void> {
    await c.daemon.stop();
    this.extraClients = this.extraClients.filter((x) => x !== c);
  }

  /** The drive file of each drive uuid (from the TOMA's drive list). */
  async drivePaths(): Promise<Map<string, string>> {
    const drives = await this.cliJson<{ uuid: string; path: string | null }[]>("drive", "show");
    return new Map(drives.filter((d) => d.path !== null).map((d) => [d.uuid, d.path!]));
  }

  /** Formats drives and starts every daemon. */
  async start(): Promise<this> {
    await this.formatDrives();
    if (!this.opts.converged) {
      for (let t = 0; t < this.drives.length; t++) await this.startTarget(t);
      await this.startToma();
      await this.startClient();
      return this;
    }
    // The TOMA needs t0's address before the client daemon that serves it is up: pick a port.
    this.target_addrs[0] = `127.0.0.1:${await freePort()}`;
    for (let t = 1; t < this.drives.length; t++) await this.startTarget(t);
    await this.startToma(undefined, false);
    const hosted = this.drives[0]!.flatMap((p) => ["--drive", p]);
    await this.startClient(...hosted, "--target-listen", this.target_addrs[0], "--target-name", "t0");
    await this.toma!.waitFor(/toma ready on/, 30_000);
    return this;
  }

  /** How admin commands run nvmesh (on another host: behind `ip netns exec`). */
  protected adminCommand(): string[] {
    return [NVMESH];
  }

  /** Runs an nvmesh admin command against this cluster; throws on a non-zero exit. */
  cli(...args: string[]): Promise<string> {
    return ok([...this.adminCommand(), ...args], { env: this.adminEnv() });
  }

  /** Same, but returns the exit code and output instead of throwing. */
  cliRaw(...args: string[]) {
    return run([...this.adminCommand(), ...args], { env: this.adminEnv() });
  }

  /** Same, bounded by timeout_ms (a paused TOMA never answers): exit code 137 when it took longer. */
  cliWithin(timeout_ms: number, ...args: string[]) {
    return run([...this.adminCommand(), ...args], { env: this.adminEnv(), timeout_ms });
  }

  /** The environment of admin commands: the server key, this cluster's TOMA and run directory. */
  protected adminEnv(): Record<string, string> {
    return { ...this.keyEnv, NVMESH_MANAGEMENT: this.toma_addr, NVMESH_RUN_DIR: this.runDir };
  }

  async cliJson<T = unknown>(...args: string[]): Promise<T> {
    return JSON.parse(await this.cli(...args, "-o", "json")) as T;
  }

  /** Attaches a volume through the client daemon and returns its NBD URI. */
  async attach(volume: string): Promise<string> {
    const out = await this.cli("client", "attach", "--volume", volume);
    const m = /(nbd(\+unix)?:\/\/\S+)/.exec(out);
    if (!m) throw new Error(`attach printed no NBD URI: ${out}`);
    return m[1]!;
  }

  daemons(): Daemon[] {
    return [...this.targets, this.toma, this.client, ...this.extraClients.map((c) => c.daemon)].filter((d): d is Daemon => d !== null);
  }

  async stopAll(signal: "SIGTERM" | "SIGKILL" = "SIGTERM"): Promise<void> {
    // Clients first so they can flush; then the TOMA; targets last.
    for (const c of this.extraClients) await c.daemon.stop(signal);
    await this.client?.stop(signal);
    await this.toma?.stop(signal);
    for (const t of this.targets) await t?.stop(signal);
  }

  async destroy(): Promise<void> {
    await this.stopAll("SIGKILL");
    rmSync(this.dir, { recursive: true, force: true });
  }
}

export interface ExtraClient {
  name: string;
  runDir: string;
  daemon: Daemon;
}

/** Parses the socket path out of an nbd+unix URI. */
export function socketOf(uri: string): string {
  const m = /socket=([^&]+)/.exec(uri);
  if (!m) throw new Error(`not an nbd+unix URI: ${uri}`);
  return m[1]!;
}

/** A TCP port free on 127.0.0.1 right now (bound and released). */
export { freePort };
