/**
 * The demo's TOMA cluster: one `toma run --peers` per server, each managing its own server's
 * target, on 127.0.0.1 ports chosen before any starts (every TOMA is given every address). What
 * the demo asks of it: who leads, in which term (each TOMA's `cluster status`, over HTTP), and a
 * line that shows the whole TOMA cluster, as `cluster status` does from each TOMA.
 */
import { tomaClient, type TomaClient } from "../toma/api-client.ts";
import { type Agreement, agreement, type Consensus } from "../toma/cluster/agreement.ts";
import type { ClusterKey } from "../engine/wire/cluster-key.ts";
import { type Child, freePort, spawnChild, waitForOutput } from "./demo-procs.ts";


export class DemoTomas {
  readonly addresses: string[] = [];
  readonly children: (Child | null)[] = [];
  private readonly clients: TomaClient[] = [];

  private constructor(
    readonly names: readonly string[],
    private readonly targets: () => readonly string[],
    /** Whether server i's target runs now. */
    private readonly targetRuns: (i: number) => boolean,
    private readonly log: string[],
    private readonly onSpawn: (c: Child) => void,
  ) {}

  /** Chooses every TOMA's address; starts none. */
  static async plan(
    names: readonly string[],
    targets: () => readonly string[],
    targetRuns: (i: number) => boolean,
    key: ClusterKey,
    log: string[],
    onSpawn: (c: Child) => void,
  ): Promise<DemoTomas> {
    const t = new DemoTomas(names, targets, targetRuns, log, onSpawn);
    for (let i = 0; i < names.length; i++) {
      t.addresses.push(`127.0.0.1:${await freePort()}`);
      t.clients.push(tomaClient(t.addresses[i]!, { key, timeout_ms: 2000 }));
      t.children.push(null);
    }
    return t;
  }

  /** Starts TOMA i (again after a kill: same name, address and peers; it finds its state on its drives). */
  async start(i: number): Promise<void> {
    const args = ["toma", "run", "--listen", this.addresses[i]!, "--target", this.targets()[i]!, "--name", this.names[i]!, "--peers", this.addresses.join(",")];
    const child = spawnChild(`toma${i + 1}`, args, this.log);
    this.onSpawn(child);
    this.children[i] = child;
    await waitForOutput(child, /management API on/);
  }

  /** kill -9 of TOMA i; returns once it is gone. */
  async kill(i: number): Promise<void> {
    const c = this.children[i]!;
    c.proc.kill("SIGKILL");
    await c.proc.exited;
    this.children[i] = null;
  }

  /**
   * The indexes of the TOMAs running now with their own target. One whose target is down keeps
   * its hard state nowhere: it neither votes nor follows until its drives are back, so it has no
   * say in who leads.
   */
  running(): number[] {
    return this.names.map((_, i) => i).filter((i) => this.children[i] !== null && this.targetRuns(i));
  }

  api(i: number): TomaClient {
    return this.clients[i]!;
  }

  /** TOMA i's view of the TOMA cluster; null while it does not answer. */
  async consensus(i: number): Promise<Consensus | null> {
    return (await this.clients[i]!.cluster().catch(() => null))?.consensus ?? null;
  }

  /** Polls the running TOMAs (with their targets) until they agree on a ready leader and `pred` holds. */
  async agreed(pred: (a: Agreement) => boolean = () => true, timeout_ms = 60_000): Promise<Agreement> {
    const deadline = performance.now() + timeout_ms;
    let last = "";
    for (;;) {
      const which = this.running();
      const views = await Promise.all(which.map((i) => this.consensus(i)));
      const a = agreement(this.addresses, views);
      if (a && pred(a)) return a;
      last = which.map((i, k) => `${this.names[i]}: ${describe(views[k] ?? null)}`).join("; ");
      if (performance.now() > deadline) throw new Error(`the TOMA cluster did not agree on a leader within ${timeout_ms / 1000} s; last: ${last}`);
      await Bun.sleep(100);
    }
  }

  /** The leader's management API, as the running TOMAs name it now. */
  async leaderApi(timeout_ms = 60_000): Promise<TomaClient> {
    return this.api((await this.agreed(() => true, timeout_ms)).index);
  }

  /**
   * The TOMA that says it leads, with an entry of its term applied, among those that answer now
   * (for the live view, where a TOMA may have been stopped behind the demo's back); null if none.
   */
  async leaderNow(): Promise<TomaClient | null> {
    const views = await Promise.all(this.names.map((_, i) => this.consensus(i)));
    const i = views.findIndex((v) => v?.role === "leader" && v.leader_ready);
    return i < 0 ? null : this.clients[i]!;
  }

  /** The server whose TOMA is at `address` (the name the demo gave it), or the address itself. */
  nameOf(address: string | null | undefined): string {
    const i = address ? this.addresses.indexOf(address) : -1;
    return i >= 0 ? this.names[i]! : (address ?? "(none)");
  }

  /**
   * "TOMA cluster: term 3, leader server2 (ADDR) · server1 follower (term 3), target up · …": each
   * TOMA as its `cluster status` says, with its own server's target.
   */
  async statusLine(): Promise<string> {
    const all = await Promise.all(this.names.map((_, i) => (this.children[i] ? this.clients[i]!.cluster().catch(() => null) : Promise.resolve(null))));
    const lead = all.find((c) => c?.consensus?.role === "leader")?.consensus;
    const head = lead ? `term ${lead.term}, leader ${this.nameOf(lead.address)} (${lead.address})` : "no leader";
    const each = this.names.map((n, i) => {
      const c = all[i];
      if (!this.children[i]) return `${n} down`;
      if (!c) return `${n} not answering`;
      return `${n} ${describe(c.consensus ?? null)}, target ${c.targets.up === c.targets.total ? "up" : "down"}`;
    });
    return `TOMA cluster: ${head} · ${each.join(" · ")}`;
  }
}

function describe(v: Consensus | null): string {
  if (v === null) return "not in a TOMA cluster";
  if (v.phase !== "running") return v.phase;
  return `${v.role} (term ${v.term})`;
}
