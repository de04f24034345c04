/**
 * A guest VM for tests that need what this machine's kernel lacks (kernel nbd, ...): a stock Debian
 * kernel under QEMU booted by the shared `vmlab.sh` (../shared/vmlab/vmlab.sh beside the project,
 * or $NVMESH_VMLAB). Nothing here skips: a missing vmlab.sh, a failed build or a guest that does not
 * boot fails the test with vmlab's own output.
 *
 * The guest reaches the host only on the ports it is given (`fwd`): guest 10.0.2.100:PORT ->
 * host 127.0.0.1:PORT; `share` is mounted read-write at /mnt/host in the guest (9p).
 * Emulated guests are 5–20× slower than the host: use them for function, never for timings.
 */
import { existsSync } from "node:fs";
import { ROOT, run, type RunResult } from "./proc.ts";

/** The address of the host as the guest sees it (slirp's guestfwd). */
export const GUEST_HOST_IP = "10.0.2.100";

export function vmlabScript(): string {
  const path = process.env.NVMESH_VMLAB ?? `${ROOT}/../shared/vmlab/vmlab.sh`;
  if (!existsSync(path)) {
    throw new Error(`vmlab.sh not found at ${path}: the VM tests need ../shared/vmlab/vmlab.sh beside the project (or NVMESH_VMLAB=/path/to/vmlab.sh)`);
  }
  return path;
}

function tail(text: string, lines = 40): string {
  return text.trimEnd().split("\n").slice(-lines).join("\n");
}

async function vmlab(args: string[], timeout_ms: number): Promise<RunResult> {
  return await run(["bash", vmlabScript(), ...args], { timeout_ms });
}

/**
 * `vmlab.sh build`: kernel, initramfs and root image, cached under /var/tmp/vmlab (a cold build
 * downloads about 300 MB of Debian packages and takes a minute or two; a warm one, a second).
 */
export async function buildVmlab(timeout_ms = 900_000): Promise<void> {
  const r = await vmlab(["build"], timeout_ms);
  if (r.code !== 0) throw new Error(`vmlab.sh build failed (exit ${r.code}; needs root and a Debian mirror):\n${tail(r.stdout + r.stderr)}`);
}

export interface GuestOptions {
  mem_mib?: number;
  /** Host ports the guest may reach, as 10.0.2.100:PORT. */
  fwd?: number[];
  /** Host folder mounted at /mnt/host in the guest. */
  share?: string;
  /**
   * A second NIC (eth1): an L2 link to one other guest over 127.0.0.1:PORT, one side "listen",
   * the other "connect" (boot the listening one first), with `ip1` (e.g. 192.168.77.1/24) on it.
   */
  link?: { mode: "listen" | "connect"; port: number; ip1: string };
}

export class Guest {
  private down_done = false;

  private constructor(readonly name: string) {}

  /** Boots a guest and returns once ssh answers in it. */
  static async up(name: string, opts: GuestOptions = {}, timeout_ms = 300_000): Promise<Guest> {
    const args = ["up", name, "--mem", String(opts.mem_mib ?? 1024)];
    for (const p of opts.fwd ?? []) args.push("--fwd", String(p));
    if (opts.share) args.push("--share", opts.share);
    if (opts.link) args.push("--link", `${opts.link.mode}:${opts.link.port}`, "--ip1", opts.link.ip1);
    const g = new Guest(name);
    const r = await vmlab(args, timeout_ms);
    if (r.code !== 0) {
      await g.down();
      throw new Error(`vmlab.sh up ${name} failed (exit ${r.code}):\n${tail(r.stdout + r.stderr)}`);
    }
    return g;
  }

  /** Runs a bash snippet as root in the guest; returns its exit code and output. */
  async sh(snippet: string, timeout_ms = 120_000): Promise<RunResult> {
    return await vmlab(["sh", this.name, snippet], timeout_ms);
  }

  /** Like sh(), but throws with the output when the snippet fails; returns its stdout. */
  async ok(snippet: string, timeout_ms = 120_000): Promise<string> {
    const r = await this.sh(snippet, timeout_ms);
    if (r.code !== 0) {
      throw new Error(`in guest ${this.name}: ${snippet}\nexited ${r.code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
    }
    return r.stdout;
  }

  /** Stops the guest (idempotent; never throws). */
  async down(): Promise<void> {
    if (this.down_done) return;
    this.down_done = true;
    await vmlab(["down", this.name], 60_000).catch(() => {});
  }
}
