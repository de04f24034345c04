/**
 * The set-up of an end-to-end test file on a TOMA cluster of real processes: three servers on
 * 127.0.0.1, each a target with two file drives and a `toma run --peers` TOMA named s0, s1, s2
 * (TomaPeers), started before the file's tests and killed and removed after them; and what those
 * tests ask of it (the CLI's JSON through one TOMA, waiting for a condition).
 */
import { afterAll, beforeAll } from "bun:test";
import type { VolumeJson } from "../../src/toma/api-types.ts";
import { Cluster, type ClusterOptions } from "./cluster.ts";
import { NVMESH, run } from "./proc.ts";
import { TomaPeers } from "./toma-peers.ts";

export interface TomaClusterFixture {
  /** The targets and their drives (set once the file's beforeAll ran). */
  readonly c: Cluster;
  /** The TOMAs, TOMA i on target i. */
  readonly p: TomaPeers;
  /** `nvmesh ARGS -o json`, parsed; null when the command failed (a TOMA not answering). */
  json<T>(args: string[]): Promise<T | null>;
  /** `volume show` through TOMA i. */
  volumes(i: number): Promise<VolumeJson[] | null>;
  /** Polls fn every 200 ms until it answers something; fails with the TOMAs' logs after timeout_ms. */
  until<T>(what: string, fn: () => Promise<T | null | undefined | false>, timeout_ms: number): Promise<T>;
}

/**
 * Registers the file's beforeAll and afterAll for a three-server TOMA cluster; call at the top of
 * a test file. `drives` sets the drives' size and extent size.
 */
export function tomaClusterFixture(drives: Pick<ClusterOptions, "drive_size" | "extent_size">): TomaClusterFixture {
  let c: Cluster | undefined;
  let p: TomaPeers | undefined;
  beforeAll(async () => {
    c = new Cluster({ targets: 3, drives_per_target: 2, ...drives });
    await c.formatDrives();
    for (let t = 0; t < 3; t++) await c.startTarget(t);
    p = await TomaPeers.start(c, { count: 3, name: (i) => `s${i}` });
  }, 60_000);
  afterAll(async () => {
    await p?.stopAll();
    await c?.destroy();
  });
  const started = <T>(x: T | undefined): T => {
    if (x === undefined) throw new Error("the TOMA cluster fixture is used before its beforeAll ran");
    return x;
  };
  const f: TomaClusterFixture = {
    get c() {
      return started(c);
    },
    get p() {
      return started(p);
    },
    async json<T>(args: string[]): Promise<T | null> {
      const r = await run([NVMESH, ...args, "-o", "json"], { env: f.c.keyEnv });
      return r.code === 0 ? (JSON.parse(r.stdout) as T) : null;
    },
    volumes: (i) => f.json<VolumeJson[]>(["volume", "show", "-m", f.p.addrs[i]!]),
    async until<T>(what: string, fn: () => Promise<T | null | undefined | false>, timeout_ms: number): Promise<T> {
      const deadline = performance.now() + timeout_ms;
      for (;;) {
        const v = await fn();
        if (v) return v;
        if (performance.now() > deadline) throw new Error(`${what}: not within ${timeout_ms} ms\n${f.p.logs()}`);
        await Bun.sleep(200);
      }
    },
  };
  return f;
}
