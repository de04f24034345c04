/**
 * Binding an attached volume to a kernel block device /dev/nbdN, where the kernel has nbd: the
 * export's socket is handed to the kernel by nbd-client (Debian package nbd-client), which does
 * the NBD handshake and the NBD_SET_SOCK/NBD_DO_IT ioctls. Detection says exactly what is missing.
 */
import { existsSync, readFileSync } from "node:fs";

/** Why /dev/nbdN cannot be used here, or null when it can. */
export function kernelNbdProblem(device: string): string | null {
  if (!/^\/dev\/nbd\d+$/.test(device)) return `'${device}' is not an nbd device path (expected /dev/nbdN)`;
  const hasModule = existsSync("/sys/module/nbd") || /\bnbd\b/.test(safeRead("/proc/devices"));
  if (!hasModule) {
    return "this kernel has no nbd driver (no /sys/module/nbd; 'modprobe nbd' may load it where modules can be loaded); use the NBD URI with qemu, libnbd or nbdfuse instead";
  }
  if (!existsSync(device)) return `${device} does not exist (the nbd driver is loaded; try nbds_max=)`;
  if (!Bun.which("nbd-client") && !existsSync("/usr/sbin/nbd-client") && !existsSync("/sbin/nbd-client")) {
    return "nbd-client is not installed: apt-get install -y nbd-client";
  }
  const pid = safeRead(`/sys/block/${device.slice(5)}/pid`).trim();
  if (pid) return `${device} is already connected (pid ${pid})`;
  return null;
}

function safeRead(path: string): string {
  try {
    return readFileSync(path, "utf8");
  } catch {
    return "";
  }
}

function nbdClient(): string {
  return Bun.which("nbd-client") ?? (existsSync("/usr/sbin/nbd-client") ? "/usr/sbin/nbd-client" : "/sbin/nbd-client");
}

async function runChecked(cmd: string[]): Promise<void> {
  const p = Bun.spawn(cmd, { stdout: "pipe", stderr: "pipe" });
  const [out, err, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
  if (code !== 0) throw new Error(`${cmd.join(" ")} failed (${code}): ${(err || out).trim()}`);
}

/** Connects `device` to the export `volume` served on unix socket `socket`. */
export async function bindKernelNbd(device: string, socket: string, volume: string): Promise<void> {
  await runChecked([nbdClient(), "-unix", socket, device, "-N", volume, "-b", "4096"]);
}

export async function unbindKernelNbd(device: string): Promise<void> {
  await runChecked([nbdClient(), "-d", device]);
}
