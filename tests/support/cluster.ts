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
    return [...this.targets, this.toma, this.client].filter((d): d is Daemon => d !== null);
  }

  async stopAll(signal: "SIGTERM" | "SIGKILL" = "SIGTERM"): Promise<void> {
    // Client first so it can flush; then the TOMA; targets last.
    await this.client?.stop(signal);
    await this.toma?.stop(signal);
    for (const t of this.targets) await t?.stop(signal);
  }

  async destroy(): Promise<void> {
    await this.stopAll("SIGKILL");
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** Parses the socket path out of an nbd+unix URI. */
export function socketOf(uri: string): string {
  const m = /socket=([^&]+)/.exec(uri);
  if (!m) throw new Error(`not an nbd+unix URI: ${uri}`);
  return m[1]!;
}
