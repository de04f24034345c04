/** What the benchmarks share: `--name value` flags, the nbdkit peer, pre-filling an export, a markdown table. */
import { readFileSync } from "node:fs";
import { freePort } from "../tests/support/cluster.ts";
import { Daemon, ok } from "../tests/support/proc.ts";

const argv = process.argv.slice(2);

/** The value after `--name` on the command line, or `dflt`. */
export function flag(name: string, dflt: string): string {
  const i = argv.indexOf(`--${name}`);
  return i >= 0 && argv[i + 1] ? argv[i + 1]! : dflt;
}

/** CPU time (user + system) a process has used so far, in clock ticks (TICKS_PER_S). */
export function cpuTicks(pid: number): number {
  // Fields after the command name, which is in parentheses and may hold spaces.
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return Number(f[11]) + Number(f[12]); // utime, stime (fields 14 and 15)
}

/** USER_HZ: 100 on every Linux this runs on. */
export const TICKS_PER_S = 100;

/** Writes the whole export once (1 MiB sequential writes), so reads hit data, not holes. */
export async function fill(uri: string): Promise<void> {
  await ok(["fio", "--name=fill", "--ioengine=nbd", `--uri=${uri}`, "--rw=write", "--bs=1M", "--iodepth=8"], {
    timeout_ms: 1_800_000,
  });
}

/** The median of a non-empty list. */
export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/** Prints rows (same keys each) as a markdown table, for the docs. */
export function printTable(rows: Record<string, string>[]): void {
  if (rows.length === 0) return;
  console.log(`\n| ${Object.keys(rows[0]!).join(" | ")} |`);
  console.log(`|${Object.keys(rows[0]!).map(() => "---").join("|")}|`);
  for (const r of rows) console.log(`| ${Object.values(r).join(" | ")} |`);
}

/** `nbdkit file` serving a new sparse file of `size` in `dir`: the peer every bench compares with. */
export async function startNbdkit(dir: string, size: string): Promise<{ daemon: Daemon; uri: string }> {
  const file = `${dir}/nbdkit.img`;
  await ok(["truncate", "-s", size, file]);
  const sock = `${dir}/nbdkit.sock`;
  const daemon = new Daemon("nbdkit", ["nbdkit", "-f", "-U", sock, "file", file]);
  await Bun.sleep(500);
  return { daemon, uri: `nbd+unix:///?socket=${sock}` };
}

/**
 * The two-hop C peer: nbdkit's `nbd` plugin on a unix socket, forwarding over TCP loopback to
 * `nbdkit file` serving a new sparse file of `size`. The same shape as nvmesh's client daemon
 * (NBD on a unix socket) → target (TCP), each hop in C.
 */
export async function startNbdkitTwoHop(dir: string, size: string): Promise<{ daemons: Daemon[]; uri: string }> {
  const file = `${dir}/nbdkit2.img`;
  await ok(["truncate", "-s", size, file]);
  const port = await freePort();
  const back = new Daemon("nbdkit file (TCP)", ["nbdkit", "-f", "-i", "127.0.0.1", "-p", String(port), "file", file]);
  await Bun.sleep(500);
  const sock = `${dir}/nbdkit2.sock`;
  const front = new Daemon("nbdkit nbd", ["nbdkit", "-f", "-U", sock, "nbd", "hostname=127.0.0.1", `port=${port}`]);
  await Bun.sleep(500);
  return { daemons: [front, back], uri: `nbd+unix:///?socket=${sock}` };
}
