/**
 * Hosts as Linux network namespaces on one Ethernet switch, for real-process tests that need
 * separate network stacks: each host is a namespace with one veth (`eth0`, 10.99.0.N/24) whose
 * other end is a port of a bridge in a namespace of its own (the "switch"), so the root
 * namespace's network is never touched. Faults are made at the switch, as a network would make
 * them: a port set down (a pulled cable), and one-way drops with nftables (bridge family), each
 * matching one direction between two hosts, optionally one TCP port.
 *
 * Every name starts with `nvlab<pid>-`, so a lab left behind by a process that died without
 * cleaning up (SIGKILL) is found and removed by the next lab (`sweepStale`). Needs root and
 * iproute2; one-way cuts need nftables.
 */
import { existsSync, readdirSync } from "node:fs";
import { ok, run } from "./proc.ts";

const PREFIX = "nvlab";
const SUBNET = "10.99.0";

export interface OneWayCut {
  /** The nft rule handle (in the switch's table), to delete this cut alone. */
  handle: number;
  from: string;
  to: string;
  /** Human-readable: "client -> s1:4420". */
  label: string;
}

/** The namespaces of labs whose creating process is gone (by the pid in their name). */
function staleNamespaces(): string[] {
  const dir = "/run/netns";
  if (!existsSync(dir)) return [];
  const re = new RegExp(`^${PREFIX}(\\d+)-`);
  return readdirSync(dir).filter((n) => {
    const m = re.exec(n);
    return m !== null && !existsSync(`/proc/${m[1]}`);
  });
}

/** Kills what still runs in a namespace (processes this lab's runs started there), then deletes it. */
async function removeNamespace(ns: string): Promise<void> {
  const pids = (await run(["ip", "netns", "pids", ns])).stdout.split(/\s+/).filter((p) => /^\d+$/.test(p));
  for (const p of pids) {
    try {
      process.kill(Number(p), "SIGKILL");
    } catch {
      // Already gone.
    }
  }
  // A namespace is freed once its last process is reaped; delete is fine before that.
  await run(["ip", "netns", "del", ns]);
}

/** Removes the namespaces (and with them bridges, veths and nft tables) of dead labs. */
export async function sweepStale(): Promise<string[]> {
  const stale = staleNamespaces();
  for (const ns of stale) await removeNamespace(ns);
  return stale;
}

/** Throws with the install command when a tool is missing (nft: only one-way cuts need it). */
export function requireNetnsTool(tool: "ip" | "nft"): void {
  const pkg = { ip: "iproute2", nft: "nftables" }[tool];
  if (!Bun.which(tool, { PATH: "/usr/sbin:/sbin:/usr/bin:/bin" })) throw new Error(`'${tool}' is not installed: apt-get install -y ${pkg}`);
  if (process.getuid?.() !== 0) throw new Error("network namespaces need root (ip netns add)");
}

export class NetLab {
  readonly id = `${PREFIX}${process.pid}-${Math.random().toString(36).slice(2, 6)}`;
  readonly switchNs = `${this.id}-sw`;
  private readonly hosts = new Map<string, { ns: string; ip: string }>();
  private cuts: OneWayCut[] = [];
  private tableReady = false;

  /** Creates the switch and one namespace per host name, addresses in the order given (.1, .2, …). */
  async create(names: string[]): Promise<void> {
    requireNetnsTool("ip");
    await sweepStale();
    await this.sh("ip", "netns", "add", this.switchNs);
    this.hosts.set("(switch)", { ns: this.switchNs, ip: "" });
    await this.sh("ip", "-n", this.switchNs, "link", "add", "br0", "type", "bridge");
    await this.sh("ip", "-n", this.switchNs, "link", "set", "br0", "up");
    for (const [i, name] of names.entries()) {
      if (!/^[a-z][a-z0-9]{0,7}$/.test(name)) throw new Error(`host name ${name}: a short lower-case word`);
      const ns = `${this.id}-${name}`;
      const ip = `${SUBNET}.${i + 1}`;
      await this.sh("ip", "netns", "add", ns);
      this.hosts.set(name, { ns, ip });
      // The switch's port is named after the host: `ip link set NAME down` pulls its cable.
      await this.sh("ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", name, "netns", this.switchNs);
      await this.sh("ip", "-n", this.switchNs, "link", "set", name, "master", "br0", "up");
      await this.sh("ip", "-n", ns, "addr", "add", `${ip}/24`, "dev", "eth0");
      await this.sh("ip", "-n", ns, "link", "set", "eth0", "up");
      await this.sh("ip", "-n", ns, "link", "set", "lo", "up");
    }
  }

  names(): string[] {
    return [...this.hosts.keys()].filter((n) => n !== "(switch)");
  }

  ip(name: string): string {
    return this.host(name).ip;
  }

  /** The host whose address is `ip`. */
  hostOf(ip: string): string | null {
    for (const [name, h] of this.hosts) if (h.ip === ip) return name;
    return null;
  }

  /** The argv prefix that runs a command on host `name`. */
  exec(name: string): string[] {
    return ["ip", "netns", "exec", this.host(name).ns];
  }

  /** Pulls (down) or plugs back (up) the cable of host `name` at the switch. */
  async setLink(name: string, up: boolean): Promise<void> {
    this.host(name);
    await this.sh("ip", "-n", this.switchNs, "link", "set", name, up ? "up" : "down");
  }

  /**
   * Drops every packet from host `from` to host `to` at the switch (the other direction still
   * flows). `to_port` / `from_port` narrow it to TCP packets to / from that port, so that one
   * service of a host is cut and not another on the same address.
   */
  async cutOneWay(from: string, to: string, opts: { to_port?: number; from_port?: number } = {}): Promise<OneWayCut> {
    await this.ensureTable();
    const match = ["ip", "saddr", this.ip(from), "ip", "daddr", this.ip(to)];
    if (opts.from_port !== undefined) match.push("tcp", "sport", String(opts.from_port));
    if (opts.to_port !== undefined) match.push("tcp", "dport", String(opts.to_port));
    const out = await this.sh("ip", "netns", "exec", this.switchNs, "nft", "--echo", "--handle", "add", "rule", "bridge", "nvlab", "cuts", ...match, "drop");
    const m = /# handle (\d+)/.exec(out);
    if (!m) throw new Error(`nft printed no rule handle: ${out}`);
    const label = `${from}${opts.from_port ? `:${opts.from_port}` : ""} -> ${to}${opts.to_port ? `:${opts.to_port}` : ""}`;
    const cut = { handle: Number(m[1]), from, to, label };
    this.cuts.push(cut);
    return cut;
  }

  async heal(cut: OneWayCut): Promise<void> {
    await this.sh("ip", "netns", "exec", this.switchNs, "nft", "delete", "rule", "bridge", "nvlab", "cuts", "handle", String(cut.handle));
    this.cuts = this.cuts.filter((c) => c !== cut);
  }

  /** Every cut healed and every port up. */
  async healAll(): Promise<void> {
    if (this.tableReady) await this.sh("ip", "netns", "exec", this.switchNs, "nft", "flush", "chain", "bridge", "nvlab", "cuts");
    this.cuts = [];
    for (const name of this.names()) await this.setLink(name, true);
  }

  /** The cuts in force (labels). */
  activeCuts(): string[] {
    return this.cuts.map((c) => c.label);
  }

  /**
   * Kills every process still running on the lab's hosts and deletes every namespace (the
   * bridge, veths and nft table go with them). Safe to call twice and after a failed create.
   */
  async destroy(): Promise<void> {
    for (const h of [...this.hosts.values()].reverse()) await removeNamespace(h.ns);
    this.hosts.clear();
    this.cuts = [];
    this.tableReady = false;
  }

  private async ensureTable(): Promise<void> {
    if (this.tableReady) return;
    requireNetnsTool("nft");
    const nft = ["ip", "netns", "exec", this.switchNs, "nft"];
    await this.sh(...nft, "add", "table", "bridge", "nvlab");
    await this.sh(...nft, "add", "chain", "bridge", "nvlab", "cuts", "{ type filter hook forward priority 0; policy accept; }");
    this.tableReady = true;
  }

  private host(name: string): { ns: string; ip: string } {
    const h = this.hosts.get(name);
    if (!h) throw new Error(`no host ${name} in this lab (hosts: ${this.names().join(", ")})`);
    return h;
  }

  private sh(...cmd: string[]): Promise<string> {
    return ok(cmd, { timeout_ms: 30_000 });
  }
}
