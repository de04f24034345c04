/**
 * Binding an attached volume to a kernel block device /dev/nbdN, where the kernel has nbd: the
 * export's socket is handed to the kernel by nbd-client (Debian package nbd-client), which does
 * the NBD handshake and hands the connection over (netlink, or the NBD_SET_SOCK/NBD_DO_IT ioctls).
 * Detection says exactly what is missing.
 *
 * The client daemon owns its bindings (KernelNbdBindings): `client detach` and the daemon's
 * shutdown disconnect the device before the export goes, so no /dev/nbdN stays bound to a socket
 * nobody serves.
 */
import { constants, existsSync, readFileSync } from "node:fs";
import { open } from "node:fs/promises";

export const NBD_DEVICE = /^\/dev\/nbd\d+$/;

/**
 * Why this host cannot bind /dev/nbdN at all (no driver, no such device, no nbd-client), or null.
 * Whether the device is free is for the client daemon that binds it to say. `modprobe_error`:
 * what loadNbdDriver() said when it could not load the driver.
 */
export function kernelNbdProblem(device: string, modprobe_error: string | null = null): string | null {
  if (!NBD_DEVICE.test(device)) return `'${device}' is not an nbd device path (expected /dev/nbdN)`;
  if (!hasNbdDriver()) {
    return `this kernel has no nbd driver (${modprobe_error ?? "no /sys/module/nbd"}); use the NBD URI with qemu, libnbd or nbdfuse instead`;
  }
  if (!existsSync(device)) return `${device} does not exist (the nbd driver is loaded; try nbds_max=)`;
  if (!Bun.which("nbd-client") && !existsSync("/usr/sbin/nbd-client") && !existsSync("/sbin/nbd-client")) {
    return "nbd-client is not installed: apt-get install -y nbd-client";
  }
  return null;
}

/**
 * Loads the nbd driver when the kernel has it as a module not loaded yet (as rbd-nbd does): a
 * stock kernel boots without it. Returns null when the driver is there now, else why not.
 */
export async function loadNbdDriver(): Promise<string | null> {
  if (hasNbdDriver()) return null;
  const modprobe = Bun.which("modprobe") ?? ["/usr/sbin/modprobe", "/sbin/modprobe"].find((p) => existsSync(p));
  if (!modprobe) return "no /sys/module/nbd, and no modprobe to load it";
  try {
    await runChecked([modprobe, "nbd"]);
  } catch (e) {
    return `'modprobe nbd' failed: ${(e as Error).message.replace(/^.*? failed \(\d+\): /, "")}`;
  }
  return hasNbdDriver() ? null : "'modprobe nbd' did not load it";
}

/** loadNbdDriver(), then kernelNbdProblem(). */
export async function prepareKernelNbd(device: string): Promise<string | null> {
  if (!NBD_DEVICE.test(device)) return kernelNbdProblem(device);
  return kernelNbdProblem(device, await loadNbdDriver());
}

function hasNbdDriver(): boolean {
  return existsSync("/sys/module/nbd") || /\bnbd\b/.test(safeRead("/proc/devices"));
}

/** The pid the kernel records for a connected /dev/nbdN, or "" when it is not connected. */
function connectedPid(device: string): string {
  return safeRead(`/sys/block/${device.slice(5)}/pid`).trim();
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
  const p = Bun.spawn(cmd, { stdout: "pipe", stderr: "pipe", stdin: "ignore" });
  const [out, err, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
  if (code !== 0) throw new Error(`${cmd.join(" ")} failed (${code}): ${(err || out).trim()}`);
}

/**
 * Whether something holds the device: a mounted filesystem, a device-mapper or md holder, or any
 * exclusive opener (an O_EXCL open of a block device fails with EBUSY then).
 *
 * Never open a bound device synchronously in the process that serves it: the first open after a
 * connect makes the kernel read the partition table, from us — a synchronous open waits for
 * reads that only this event loop can answer, and the process hangs for good in D state.
 */
export async function deviceInUse(device: string): Promise<boolean> {
  try {
    await (await open(device, constants.O_RDONLY | constants.O_EXCL)).close();
    return false;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "EBUSY") return true;
    throw e;
  }
}

/**
 * Connects `device` to the export `volume` served on unix socket `socket`, with 512-byte logical
 * sectors: those of every other way to the same volume (qemu, a loop device over nbdfuse), so a
 * partition table or a filesystem written through one reads the same through the other.
 */
export async function bindKernelNbd(device: string, socket: string, volume: string): Promise<void> {
  await runChecked([nbdClient(), "-unix", socket, device, "-N", volume, "-b", "512"]);
}

export async function unbindKernelNbd(device: string): Promise<void> {
  await runChecked([nbdClient(), "-d", device]);
}

export class KernelNbdError extends Error {
  constructor(
    message: string,
    readonly code: "invalid" | "conflict" | "unavailable",
  ) {
    super(message);
  }
}

/** The /dev/nbdN devices this client daemon has bound, by volume. */
export class KernelNbdBindings {
  private readonly by_volume = new Map<string, string>();
  /** Devices bound by us, or claimed for a bind in progress. */
  private readonly busy = new Set<string>();

  deviceOf(volume: string): string | undefined {
    return this.by_volume.get(volume);
  }

  /**
   * Claims `device` for `volume` and says why it cannot be bound, before the volume is attached:
   * a claim is released by bind() or release().
   */
  claim(volume: string, device: string, modprobe_error: string | null = null): void {
    if (!NBD_DEVICE.test(device)) throw new KernelNbdError(`'${device}' is not an nbd device path (expected /dev/nbdN)`, "invalid");
    const have = this.by_volume.get(volume);
    if (have !== undefined) throw new KernelNbdError(`volume ${volume} is already bound to ${have}`, "conflict");
    if (this.busy.has(device)) throw new KernelNbdError(`${device} is already bound by this client daemon`, "conflict");
    const problem = kernelNbdProblem(device, modprobe_error);
    if (problem) throw new KernelNbdError(`cannot bind ${device}: ${problem}`, "unavailable");
    const pid = connectedPid(device);
    if (pid) throw new KernelNbdError(`cannot bind ${device}: it is already connected (pid ${pid}); if nothing uses it, 'nbd-client -d ${device}' frees it`, "conflict");
    this.busy.add(device);
  }

  release(device: string): void {
    if (![...this.by_volume.values()].includes(device)) this.busy.delete(device);
  }

  /** Binds a claimed device to the volume's unix socket export. */
  async bind(volume: string, device: string, socket: string): Promise<void> {
    try {
      await bindKernelNbd(device, socket, volume);
    } catch (e) {
      this.busy.delete(device);
      throw new KernelNbdError(`cannot bind ${device}: ${(e as Error).message}`, "unavailable");
    }
    this.by_volume.set(volume, device);
  }

  /**
   * Disconnects the volume's device, if it has one. Refused while the device is in use (mounted,
   * or held) unless `force`: disconnecting under a mounted filesystem fails its I/O.
   */
  async unbind(volume: string, force = false): Promise<void> {
    const device = this.by_volume.get(volume);
    if (device === undefined) return;
    if (!force && (await deviceInUse(device))) {
      throw new KernelNbdError(`${device} is in use (mounted, or held open exclusively): unmount it, then detach`, "conflict");
    }
    await unbindKernelNbd(device);
    this.by_volume.delete(volume);
    this.busy.delete(device);
  }

  /** At shutdown: every device goes, in use or not (nothing will serve it any more). */
  async unbindAll(log: (msg: string) => void): Promise<void> {
    for (const [volume, device] of [...this.by_volume]) {
      try {
        if (await deviceInUse(device)) log(`${device} (volume ${volume}) is still in use: disconnecting it anyway`);
      } catch {}
      await this.unbind(volume, true).catch((e) => log(`cannot disconnect ${device}: ${(e as Error).message}`));
    }
  }
}
