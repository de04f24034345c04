/**
 * Real processes for real-process tests: the compiled nvmesh binary and real clients nobody here
 * wrote. A missing tool fails the test with the command that installs it (never a skip).
 */
import { existsSync } from "node:fs";
import type { Subprocess } from "bun";

export const ROOT = new URL("../..", import.meta.url).pathname.replace(/\/$/, "");
export const NVMESH = `${ROOT}/dist/nvmesh`;

const PACKAGES: Record<string, string> = {
  fio: "fio",
  "qemu-img": "qemu-utils",
  "qemu-io": "qemu-utils",
  nbdinfo: "libnbd-bin",
  nbdcopy: "libnbd-bin",
  nbdfuse: "nbdfuse",
  nbdkit: "nbdkit",
  "mkfs.ext4": "e2fsprogs",
  e2fsck: "e2fsprogs",
  debugfs: "e2fsprogs",
  losetup: "util-linux",
  fusermount3: "fuse3",
  setpriv: "util-linux",
};

export function requireTool(tool: string): string {
  const path = Bun.which(tool) ?? Bun.which(tool, { PATH: "/usr/sbin:/sbin:/usr/bin:/bin" });
  if (!path) {
    throw new Error(`'${tool}' is not installed: apt-get install -y ${PACKAGES[tool] ?? tool}`);
  }
  return path;
}

export function requireBinary(): string {
  if (!existsSync(NVMESH)) throw new Error(`${NVMESH} is missing: run 'npm run build' first`);
  return NVMESH;
}

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a command to completion (bounded by timeout_ms) and returns its output. */
export async function run(
  cmd: string[],
  opts: { timeout_ms?: number; env?: Record<string, string>; stdin?: Uint8Array; cwd?: string; base_env?: Record<string, string | undefined> } = {},
): Promise<RunResult> {
  const p = Bun.spawn(cmd, {
    stdout: "pipe",
    stderr: "pipe",
    stdin: opts.stdin ?? "ignore",
    cwd: opts.cwd,
    env: { ...(opts.base_env ?? process.env), NO_COLOR: "1", ...opts.env },
  });
  const timer = setTimeout(() => p.kill("SIGKILL"), opts.timeout_ms ?? 60_000);
  const [stdout, stderr, code] = await Promise.all([
    new Response(p.stdout).text(),
    new Response(p.stderr).text(),
    p.exited,
  ]);
  clearTimeout(timer);
  return { code, stdout, stderr };
}

/** Like run(), but throws with the output when the exit code is not 0. */
export async function ok(cmd: string[], opts: Parameters<typeof run>[1] = {}): Promise<string> {
  const r = await run(cmd, opts);
  if (r.code !== 0) {
    throw new Error(`${cmd.join(" ")} exited ${r.code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
  }
  return r.stdout;
}

/** A long-running process whose output is kept and can be waited on. */
export class Daemon {
  readonly proc: Subprocess<"ignore", "pipe", "pipe">;
  output = "";
  /** Each chunk of output with the performance.now() at which it arrived (to line up events). */
  readonly chunks: { at_ms: number; text: string }[] = [];
  private waiters: { re: RegExp; resolve: (m: RegExpMatchArray) => void }[] = [];

  constructor(
    readonly name: string,
    readonly cmd: string[],
    env: Record<string, string> = {},
  ) {
    this.proc = Bun.spawn(cmd, {
      stdout: "pipe",
      stderr: "pipe",
      stdin: "ignore",
      env: { ...process.env, NO_COLOR: "1", ...env },
    });
    this.pump(this.proc.stdout);
    this.pump(this.proc.stderr);
  }

  private async pump(stream: ReadableStream<Uint8Array>): Promise<void> {
    const dec = new TextDecoder();
    for await (const chunk of stream) {
      const text = dec.decode(chunk, { stream: true });
      this.output += text;
      this.chunks.push({ at_ms: performance.now(), text });
      this.waiters = this.waiters.filter((w) => {
        const m = this.output.match(w.re);
        if (m) w.resolve(m);
        return !m;
      });
    }
  }

  get alive(): boolean {
    return this.proc.exitCode === null && this.proc.signalCode === null;
  }

  /** Waits until the output matches re; fails with the output so far when it takes too long. */
  waitFor(re: RegExp, timeout_ms = 20_000): Promise<RegExpMatchArray> {
    const m = this.output.match(re);
    if (m) return Promise.resolve(m);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(new Error(`${this.name}: no ${re} within ${timeout_ms} ms; output:\n${this.output}`));
      }, timeout_ms);
      this.waiters.push({
        re,
        resolve: (mm) => {
          clearTimeout(timer);
          resolve(mm);
        },
      });
      this.proc.exited.then(() => {
        if (!this.output.match(re)) {
          clearTimeout(timer);
          reject(new Error(`${this.name} exited (${this.proc.exitCode}) before ${re}; output:\n${this.output}`));
        }
      });
    });
  }

  async stop(signal: "SIGTERM" | "SIGKILL" = "SIGTERM"): Promise<void> {
    if (!this.alive) return;
    this.proc.kill(signal);
    const t = setTimeout(() => this.proc.kill("SIGKILL"), 10_000);
    await this.proc.exited;
    clearTimeout(t);
  }
}
