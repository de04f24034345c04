/**
 * A deposed TOMA, with real processes of the compiled binary on loopback (docs/toma.md, "Fenced
 * at the drives"): TOMA A is frozen (SIGSTOP) with its connections to the targets open; TOMA B
 * starts on the same targets (another host's name), recovers the state and takes a newer term,
 * and its fence updates raise the drives' control-plane version. A resumed (SIGCONT) finds its
 * next fence update refused STALE, stands down, and says so; B goes on managing the cluster.
 */
import { afterEach, expect, test } from "bun:test";
import type { ClusterJson } from "../../src/toma/api-types.ts";
import { Cluster } from "../support/cluster.ts";
import { Daemon, NVMESH, run } from "../support/proc.ts";

let cluster: Cluster | null = null;
let b: Daemon | null = null;
afterEach(async () => {
  await b?.stop();
  b = null;
  await cluster?.destroy();
  cluster = null;
});

test("a frozen TOMA replaced by another is refused by the targets when it resumes, and stands down", async () => {
  const c = await new Cluster({ targets: 3, drive_size: "256M" }).start();
  cluster = c;
  await c.cli("volume", "create", "--name", "m1", "--capacity", "64M", "--raid-level", "1");
  const a = c.toma!;
  const aAddr = c.toma_addr;
  const statusOf = async (addr: string) => {
    const r = await run([NVMESH, "cluster", "status", "-o", "json"], { env: { ...c.keyEnv, NVMESH_MANAGEMENT: addr } });
    expect(r.code).toBe(0);
    return (JSON.parse(r.stdout) as { cluster: ClusterJson }).cluster;
  };
  const before = await statusOf(aAddr);
  expect(before.ready).toBe(true);

  process.kill(a.proc.pid, "SIGSTOP");
  try {
    const args = [NVMESH, "toma", "run", "--listen", "127.0.0.1:0", "--name", "toma-b", ...c.insecure];
    for (const t of c.target_addrs) args.push("--target", t);
    b = new Daemon("toma b", args, c.keyEnv);
    const bAddr = (await b.waitFor(/toma ready on (\S+)/, 30_000))[1]!;
    const afterB = await statusOf(bAddr);
    expect(afterB.term).toBe(before.term! + 1);
    expect(afterB.version).toBeGreaterThan(before.version);
    // B's next maintenance pass pushes the fence tables of m1's drives with its version.
    await Bun.sleep(2500);
  } finally {
    process.kill(a.proc.pid, "SIGCONT");
  }
  await a.waitFor(/deposed: another TOMA acts on this cluster's drives/, 20_000);
  const deposed = await statusOf(aAddr);
  expect(deposed.ready).toBe(false);
  expect(deposed.readiness).toMatch(/deposed: another TOMA acts on this cluster's drives with control-plane version \d+/);
  const refused = await run([NVMESH, "volume", "create", "--name", "late", "--capacity", "16M", "--raid-level", "1"], {
    env: { ...c.keyEnv, NVMESH_MANAGEMENT: aAddr },
  });
  expect(refused.code).not.toBe(0);
  expect(refused.stderr + refused.stdout).toMatch(/deposed/);
  // B manages the cluster.
  const bAddr = b!.output.match(/toma ready on (\S+)/)![1]!;
  const made = await run([NVMESH, "volume", "create", "--name", "later", "--capacity", "16M", "--raid-level", "1"], {
    env: { ...c.keyEnv, NVMESH_MANAGEMENT: bAddr },
  });
  expect(made.code).toBe(0);
  expect(b!.output).not.toMatch(/deposed/);
}, 120_000);
