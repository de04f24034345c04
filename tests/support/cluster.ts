/**
 * A whole nvmesh cluster of real processes on loopback for tests and benchmarks: N targets with
 * file drives in a temp folder, one TOMA, one client daemon — all the compiled binary.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { Daemon, NVMESH, ok, requireBinary, run } from "./proc.ts";

export interface ClusterOptions {
  targets?: number;
  drives_per_target?: number;
  drive_size?: string;
  extent_size?: string;
}

export class Cluster {
  readonly dir: string;
  readonly drives: string[][] = [];
  targets: (Daemon | null)[] = [];
  target_addrs: string[] = [];
  toma: Daemon | null = null;
  toma_addr = "";
  client: Daemon | null = null;
  extraClients: ExtraClient[] = [];

  constructor(readonly opts: ClusterOptions = {}) {
    requireBinary();
    this.dir = mkdtempSync(`${tmpdir()}/nvmesh-test-`);
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
        await ok(["truncate", "-s", this.opts.drive_size ?? "256M", p]);
        const args = [NVMESH, "drive", "format", p];
        if (this.opts.extent_size) args.push("--extent-size", this.opts.extent_size);
        await ok(args);
        paths.push(p);
      }
      this.drives.push(paths);
    }
  }

  async startTarget(t: number, listen = this.target_addrs[t] ?? "127.0.0.1:0"): Promise<string> {
    const args = [NVMESH, "target", "serve", "--listen", listen, "--name", `t${t}`];
    for (const p of this.drives[t]!) args.push("--drive", p);
    const d = new Daemon(`target t${t}`, args);
    const m = await d.waitFor(/target ready on (\S+)/);
    this.targets[t] = d;
    this.target_addrs[t] = m[1]!;
    return m[1]!;
  }

  async startToma(listen = this.toma_addr || "127.0.0.1:0"): Promise<void> {
    const args = [NVMESH, "toma", "run", "--listen", listen];
    for (const a of this.target_addrs) args.push("--target", a);
    this.toma = new Daemon("toma", args);
    const m = await this.toma.waitFor(/toma ready on (\S+)/, 30_000);
    this.toma_addr = m[1]!;
  }

  async startClient(): Promise<void> {
    this.client = new Daemon("client", [NVMESH, "client", "serve", "--run-dir", this.runDir, "-m", this.toma_addr]);
    await this.client.waitFor(/client ready/);
  }

  /**
   * Another client daemon (another "host"): its own name, run directory and environment (e.g. a
   * test-only evil switch). Stop it with stopExtraClient.
   */
  async startExtraClient(name: string, env: Record<string, string> = {}): Promise<ExtraClient> {
    const runDir = `${this.dir}/run-${name}`;
    const daemon = new Daemon(`client ${name}`, [NVMESH, "client", "serve", "--run-dir", runDir, "-m", this.toma_addr, "--name", name], env);
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
    for (let t = 0; t < this.drives.length; t++) await this.startTarget(t);
    await this.startToma();
    await this.startClient();
    return this;
  }

  /** Runs an nvmesh admin command against this cluster; throws on a non-zero exit. */
  cli(...args: string[]): Promise<string> {
    return ok([NVMESH, ...args], { env: { NVMESH_MANAGEMENT: this.toma_addr, NVMESH_RUN_DIR: this.runDir } });
  }

  /** Same, but returns the exit code and output instead of throwing. */
  cliRaw(...args: string[]) {
    return run([NVMESH, ...args], { env: { NVMESH_MANAGEMENT: this.toma_addr, NVMESH_RUN_DIR: this.runDir } });
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
