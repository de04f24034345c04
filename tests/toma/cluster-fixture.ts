/** Shared by the TOMA cluster tests: own drives as a TOMA reaches them, in the simulator's time. */
import type { Env } from "../../src/engine/env.ts";
import type { FormattedDrive } from "../../src/engine/drive/formatted-api.ts";
import type { Network } from "../../src/engine/net/conn.ts";
import type { SlotIo } from "../../src/toma/cluster/hard-state-io.ts";
import type { DriveReport } from "../../src/toma/cluster/drive-pool.ts";
import { formatDrive } from "../../src/engine/drive/format.ts";
import { openDrive } from "../../src/engine/drive/formatted-drive.ts";
import { MemoryStore } from "../../src/engine/drive/memory-store.ts";
import { parseIdentity } from "../../src/toma/cluster/identity.ts";
import { TomaNode } from "../../src/toma/cluster/node.ts";
import { SimNode } from "../../sim/node.ts";
import { World } from "../../sim/world.ts";

/** The consensus code opens no socket: a network that says so if it ever tried. */
export const NO_NET: Network = {
  connect: () => Promise.reject(new Error("the TOMA cluster code under test opens no connection of its own")),
  listen: () => Promise.reject(new Error("the TOMA cluster code under test listens on nothing")),
};

/**
 * The drives as the TOMA reaches them: each operation takes a little virtual time, as on a target
 * (and so a timeout in virtual time never fires before an operation that has already completed).
 * `refuse` names drives whose writes fail, as a target's REFUSED for an unreadable slot.
 */
export function slotIo(world: World, drives: () => FormattedDrive[], refuse: ReadonlySet<string> = new Set()): SlotIo {
  const on = <T>(u: string, fn: (d: FormattedDrive) => Promise<T>): Promise<T> =>
    new Promise<void>((r) => world.after(0.2, r)).then(() => {
      const d = drives().find((x) => x.info.drive_uuid === u);
      if (!d) throw new Error(`drive ${u} is not served`);
      return fn(d);
    });
  return {
    drives: () => drives().map((d) => d.info.drive_uuid),
    read: (u) => on(u, (d) => d.metaRead()),
    write: (u, g, p) => (refuse.has(u) ? on(u, () => Promise.reject(new Error(`drive ${u}: REFUSED, metadata slot unreadable`))) : on(u, (d) => d.metaWrite(g, p))),
  };
}

export interface Server {
  name: string;
  address: string;
  machine: SimNode;
  drives: FormattedDrive[];
  toma: TomaNode | null;
  /** The Env of its current process (set at each boot). */
  env: Env | null;
}

/**
 * `founders`: the first servers found the cluster; the others' --peers name them and themselves
 * (they join). `drivesOf(i)`: server i's drives, when given (e.g. drives a single TOMA wrote);
 * otherwise two blank ones each.
 */
export async function cluster(seed: number, n = 3, founders = n, drivesOf?: (i: number) => FormattedDrive[]) {
  const world = new World(seed);
  const servers: Server[] = [];
  for (let i = 0; i < n; i++) {
    const drives: FormattedDrive[] = drivesOf ? drivesOf(i) : [];
    for (let k = 0; k < (drivesOf ? 0 : 2); k++) {
      const store = new MemoryStore(8 * 1024 * 1024);
      const uuid = `0000000${i}-0000-4000-8000-00000000000${k}`;
      await formatDrive(store, { drive_uuid: uuid, extent_size_bytes: 1024 * 1024 });
      drives.push(await openDrive(store, `s${i}d${k}`));
    }
    const machine = new SimNode(world, `s${i}`, { forIncarnation: () => NO_NET }, { offset_ms: 1000 * i, rate: 1 + i * 0.01 });
    servers.push({ name: `s${i}`, address: `10.0.0.${i + 1}:4000`, machine, drives, toma: null, env: null });
  }
  const byAddress = new Map(servers.map((s) => [s.address, s]));
  /** "A>B": requests from A to B never arrive (a link cut one way; B's requests to A still do). */
  const cuts = new Set<string>();
  /** "A>B": requests from A to B are refused at once (B's port closed to A). */
  const refused = new Set<string>();
  /** One link delay each way; a dead peer's request fails after it. */
  const reach = <T>(from: string, to: string, fn: (s: Server) => T): Promise<T> =>
    new Promise((resolve, reject) =>
      world.after(1 + world.prng.u32() % 3, () => {
        if (cuts.has(`${from}>${to}`)) return; // never answered: the sender's own timeout decides
        if (refused.has(`${from}>${to}`)) return reject(new Error(`${to}: connection refused`));
        const s = byAddress.get(to);
        if (!s || !s.machine.alive || !s.toma) return reject(new Error(`${to}: connection refused`));
        try {
          resolve(fn(s));
        } catch (e) {
          reject(e);
        }
      }),
    );

  const boot = (s: Server) => {
    const { env } = s.machine.boot();
    s.env = env;
    const io = slotIo(world, () => s.drives);
    s.toma = new TomaNode(env, {
      toma_id: s.name,
      peers: [...servers.slice(0, founders).map((x) => x.address), ...(servers.indexOf(s) >= founders ? [s.address] : [])],
      io,
      post: (address, bytes) =>
        reach(s.address, address, (peer) => {
          const r = peer.toma!.receive(bytes);
          if (!r.ok) throw new Error(`${r.status}: ${r.error}`);
        }),
      // Through JSON and the validator, as over HTTP.
      ask: (address) => reach(s.address, address, (peer) => parseIdentity(JSON.parse(JSON.stringify(peer.toma!.identity())), address)),
      grace_ms: 2000,
    });
    void s.toma.start();
  };
  return { world, servers, boot, cuts, refused };
}

export type Cluster = Awaited<ReturnType<typeof cluster>>;

export function running(c: Cluster): Server[] {
  return c.servers.filter((s) => s.machine.alive && s.toma?.phase === "running");
}

/** The one leader every running TOMA names, with its term; null while they disagree. */
export function agreedLeader(c: Cluster): { toma: string; term: number } | null {
  const views = running(c).map((s) => s.toma!.view());
  const leaders = views.filter((v) => v.role === "leader");
  if (leaders.length !== 1 || !leaders[0]!.leader_ready) return null;
  const l = leaders[0]!;
  if (!views.every((v) => v.term === l.term && v.leader?.node_id === l.node_id)) return null;
  return { toma: l.toma_id, term: l.term! };
}


/** Runs the world until `p` settles (at most `ms` virtual ms), and says how it did. */
export async function settle<T>(c: Cluster, p: Promise<T>, ms: number): Promise<{ ok: true; value: T } | { ok: false; error: unknown }> {
  let out: { ok: true; value: T } | { ok: false; error: unknown } | null = null;
  p.then((value) => (out = { ok: true, value }), (error) => (out = { ok: false, error }));
  await c.world.run(() => out !== null, c.world.now + ms);
  if (out === null) throw new Error(`not settled within ${ms} virtual ms`);
  return out;
}

/** What server `s` reports: its own drives, claimed for the cluster. */
export function driveReport(s: Server, cluster_uuid: string): DriveReport {
  return {
    server: s.name,
    drives: s.drives.map((d) => ({
      drive_uuid: d.info.drive_uuid,
      target: `${s.name}:4420`,
      path: `/dev/${d.info.drive_uuid.slice(0, 8)}`,
      size_bytes: d.info.size_bytes,
      cluster_uuid,
      extent_size_bytes: d.info.extent_size_bytes,
      extent_count: d.info.extent_count,
      state: "ok" as const,
      error: null,
    })),
  };
}

