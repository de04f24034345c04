/**
 * A TOMA cluster of real processes for end-to-end tests: one `toma run --peers` per target of a
 * test Cluster (TOMA i manages target i), on 127.0.0.1 ports of its own, and the polling of
 * `cluster status` until they agree on a leader.
 */
import type { ClusterJson } from "../../src/toma/api-types.ts";
import { agreement, type Consensus } from "../../src/toma/cluster/agreement.ts";
import { type Cluster, freePort } from "./cluster.ts";
import { Daemon, NVMESH, run } from "./proc.ts";

export type { Consensus };

/** One ready leader named by every TOMA asked, in one term; `index` is the leader's TOMA. */
export interface Agreement {
  leader: string;
  term: number;
  index: number;
  views: Consensus[];
}

export interface TomaPeersOptions {
  /** How many TOMAs get an address (at most the cluster's targets). */
  count: number;
  /** How many of them are started at once (default: all). */
  started?: number;
  /** TOMA i's --name (default `toma<i>`). */
  name?: (i: number) => string;
  /** TOMA i's --peers (default: every address). */
  peers?: (i: number, addrs: readonly string[]) => string[];
}

export class TomaPeers {
  readonly tomas: (Daemon | null)[] = [];
  readonly addrs: string[] = [];

  private constructor(
    private readonly c: Cluster,
    private readonly o: TomaPeersOptions,
  ) {}

  static async start(c: Cluster, o: TomaPeersOptions): Promise<TomaPeers> {
    if (o.count > c.target_addrs.length) throw new Error(`${o.count} TOMAs need as many targets, the cluster has ${c.target_addrs.length}`);
    const p = new TomaPeers(c, o);
    for (let i = 0; i < o.count; i++) p.addrs.push(`127.0.0.1:${await freePort()}`);
    for (let i = 0; i < (o.started ?? o.count); i++) p.start(i);
    return p;
  }

  name(i: number): string {
    return this.o.name?.(i) ?? `toma${i}`;
  }

  start(i: number): Daemon {
    const peers = this.o.peers?.(i, this.addrs) ?? this.addrs;
    const d = new Daemon(
      this.name(i),
      [NVMESH, "toma", "run", "--listen", this.addrs[i]!, "--target", this.c.target_addrs[i]!, "--name", this.name(i), "--peers", peers.join(","), ...this.c.insecure],
      this.c.keyEnv,
    );
    this.tomas[i] = d;
    return d;
  }

  async stopAll(): Promise<void> {
    for (const t of this.tomas) await t?.stop("SIGKILL");
  }

  /** TOMA i's `cluster status -o json`, null while it does not answer. */
  async status(i: number): Promise<ClusterJson | null> {
    const r = await run([NVMESH, "cluster", "status", "-m", this.addrs[i]!, "-o", "json"], { env: this.c.keyEnv });
    if (r.code !== 0) return null;
    return (JSON.parse(r.stdout) as { cluster: ClusterJson }).cluster;
  }

  async consensus(i: number): Promise<Consensus | null> {
    return (await this.status(i))?.consensus ?? null;
  }

  /** Polls the given TOMAs until every one runs, they name one ready leader in one term, and `pred` holds. */
  async agreed(which: number[], pred: (a: Agreement) => boolean, timeout_ms: number): Promise<Agreement> {
    const deadline = performance.now() + timeout_ms;
    let last: unknown = null;
    while (performance.now() < deadline) {
      const views = await Promise.all(which.map((i) => this.consensus(i)));
      last = views.map((v) => v && { toma: v.toma_id, phase: v.phase, role: v.role, term: v.term, leader: v.leader?.address, membership: v.membership, reason: v.reason });
      const found = agreement(this.addrs, views);
      if (found) {
        const a = { leader: found.address, term: found.term, index: found.index, views: found.views };
        if (pred(a)) return a;
      }
      await Bun.sleep(150);
    }
    throw new Error(`no agreement within ${timeout_ms} ms; last: ${JSON.stringify(last)}\n${this.logs()}`);
  }

  /** The tail of every TOMA's output, for a failure message. */
  logs(tail = 2500): string {
    return this.tomas.map((t) => `--- ${t?.name}\n${t?.output.slice(-tail)}`).join("\n");
  }
}
