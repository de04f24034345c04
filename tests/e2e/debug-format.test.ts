/**
 * The debug format end to end with real processes of the compiled binary: `volume create
 * --debug-format`, several client daemons exporting the volume, `verify run` over their NBD
 * exports, then `forensics scan` of the drive files. A clean multi-client run on every layout
 * shows no problem, in the run and on the drives; each test-only evil switch of a client daemon
 * is found by forensics, which names that client and the reason.
 */
import { EVIL_CLASS } from "../debugfmt/fixtures.ts";
import type { EvilKind } from "../../src/engine/client/debug-evil.ts";
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { Cluster, type ExtraClient } from "../support/cluster.ts";
import { NVMESH, ok, requireTool, run } from "../support/proc.ts";

interface VolumeJson {
  uuid: string;
  name: string;
  capacity_bytes: number;
  debug_format: boolean;
  mirrors: number;
  columns: { drive_uuid: string; runs: number[] }[];
}

interface ScanJson {
  problems_total: number;
  problems: { class: string; culprit: { client_id: number; client_name: string } | null; reason: string; lba: number | null }[];
  files: { file: string; counts: Record<string, number>; stale_generation: number }[];
  peer: { compared: number; same: number } | null;
  clients: { client_id: number; client_name: string }[];
  placement: { exact: boolean };
}

interface VerifyJson {
  problems: number;
  workers: { worker: number; result: { writes: number; reads: number; mismatch: unknown; error: string | null } | null; crash: string | null }[];
}

const MiB = 1024 * 1024;

async function scanJson(files: string[], volume: string): Promise<{ code: number; json: ScanJson }> {
  const args = [NVMESH, "forensics", "scan", files[0]!, "--volume", volume, "--json"];
  if (files[1]) args.push("--peer", files[1]);
  const r = await run(args, { timeout_ms: 60_000 });
  if (r.code === 2) throw new Error(`forensics scan failed: ${r.stderr}`);
  return { code: r.code, json: JSON.parse(r.stdout) as ScanJson };
}

async function verify(c: Cluster, uris: string[], opts: { clients: number; seed: number; duration: string }): Promise<{ code: number; json: VerifyJson }> {
  const args = ["verify", "run", "--clients", String(opts.clients), "--seed", String(opts.seed), "--duration", opts.duration, "--json"];
  for (const u of uris) args.push("--uri", u);
  const r = await c.cliRaw(...args);
  if (r.code === 2) throw new Error(`verify run: usage error: ${r.stderr}`);
  return { code: r.code, json: JSON.parse(r.stdout) as VerifyJson };
}

describe("debug-format volumes on every layout, several clients", () => {
  let c: Cluster;
  let second: ExtraClient;

  beforeAll(async () => {
    requireTool("nbdinfo");
    c = await new Cluster({ targets: 3, drives_per_target: 2, drive_size: "256M", extent_size: "4M" }).start();
    second = await c.startExtraClient("second");
  }, 120_000);

  afterAll(async () => {
    await c?.destroy();
  });

  test("volume create --debug-format: the flag shows, 4 × the capacity is allocated, the export is 512-byte aligned", async () => {
    const before = (await c.cliJson<{ cluster: { capacity: { used_bytes: number } } }>("cluster", "status")).cluster.capacity.used_bytes;
    const v = await c.cliJson<VolumeJson>("volume", "create", "--name", "fmt", "--capacity", "16M", "--raid-level", "1", "--debug-format");
    expect(v).toMatchObject({ name: "fmt", capacity_bytes: 16 * MiB, debug_format: true, mirrors: 2 });
    const after = (await c.cliJson<{ cluster: { capacity: { used_bytes: number } } }>("cluster", "status")).cluster.capacity.used_bytes;
    expect(after - before).toBe(2 * 4 * 16 * MiB); // two legs of 4 × 16M
    expect(await c.cli("volume", "show")).toMatch(/fmt .*debug/);
    expect((await c.cliJson<VolumeJson>("volume", "show", "fmt")).debug_format).toBe(true);
    const uri = await c.attach("fmt");
    const info = JSON.parse(await ok(["nbdinfo", "--json", uri])) as { exports: { "export-size": number; block_size_minimum: number }[] };
    expect(info.exports[0]).toMatchObject({ "export-size": 16 * MiB, block_size_minimum: 512 });
    await c.cli("client", "detach", "--volume", "fmt");
    await c.cli("volume", "delete", "fmt", "-y");
  }, 60_000);

  test("verify run --volume uses this host's export; the summary table says no problems", async () => {
    await c.cli("volume", "create", "--name", "byname", "--capacity", "8M", "--raid-level", "1", "--debug-format");
    await c.attach("byname");
    const r = await c.cliRaw("verify", "run", "--volume", "byname", "--clients", "2", "--seed", "3", "--duration", "2s");
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/WORKER\s+EXPORT\s+WRITES\s+READS\s+SECTORS CHECKED\s+RESULT/);
    expect(r.stdout).toMatch(/^1\s+byname\.sock\s+\d+\s+\d+\s+\d+\s+ok$/m);
    expect(r.stdout).toMatch(/checked reads in [\d.]+ s: no problems/);
    const missing = await c.cliRaw("verify", "run", "--volume", "nosuch", "--duration", "1s");
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/volume nosuch is not attached on this host/);
    await c.cli("client", "detach", "--volume", "byname");
    await c.cli("volume", "delete", "byname", "-y");
  }, 60_000);

  const layouts: [string, string[]][] = [
    ["RAID1", ["--raid-level", "1"]],
    ["RAID10", ["--raid-level", "10", "--stripe-width", "2"]],
    ["RAID0", ["--raid-level", "0", "--stripe-width", "3"]],
    ["concatenated", ["--raid-level", "concatenated"]],
  ];
  for (const [name, flags] of layouts) {
    test(`${name}: a clean 4-worker verify run over two client daemons reports zero problems, and so does forensics on its drives`, async () => {
      const vol = `clean-${name.toLowerCase()}`;
      const v = await c.cliJson<VolumeJson>("volume", "create", "--name", vol, "--capacity", "16M", "--debug-format", ...flags);
      const uris = [await c.attach(vol), await c.attachOn(second, vol)];
      const r = await verify(c, uris, { clients: 4, seed: 7, duration: "3s" });
      expect(r.json.problems).toBe(0);
      expect(r.code).toBe(0);
      for (const w of r.json.workers) {
        expect(w.crash).toBeNull();
        expect(w.result).toMatchObject({ mismatch: null, error: null });
        expect(w.result!.writes).toBeGreaterThan(10);
      }
      // Flushed and closed before the drive files are read.
      await c.cli("client", "detach", "--volume", vol);
      await c.detachOn(second, vol);
      const paths = await c.drivePaths();
      const files = v.columns.map((col) => paths.get(col.drive_uuid)!);
      const seen = new Set<string>();
      for (const f of files) {
        const s = await scanJson([f], v.uuid);
        expect(s.json.problems).toEqual([]);
        expect(s.code).toBe(0);
        expect(s.json.placement.exact).toBe(true);
        expect(s.json.files[0]!.counts.ok).toBeGreaterThan(0);
        for (const cl of s.json.clients) seen.add(cl.client_name);
      }
      // Both daemons wrote, and each sector names its writer.
      expect(seen.size).toBe(2);
      if (v.mirrors > 1) {
        for (let set = 0; set < files.length / 2; set++) {
          const s = await scanJson([files[2 * set]!, files[2 * set + 1]!], v.uuid);
          expect(s.json.problems).toEqual([]);
          expect(s.json.peer!.same).toBeGreaterThan(100);
        }
      }
    }, 120_000);
  }
});

describe("evil clients: forensics finds each planted corruption and names the client and the reason", () => {
  let c: Cluster;
  let good: ExtraClient;
  const cases: [string, string][] = Object.entries(EVIL_CLASS) as [EvilKind, string][];
  const evil: ExtraClient[] = [];
  const volumes: VolumeJson[] = [];
  const uris: string[][] = [];

  beforeAll(async () => {
    // Two servers with one drive each: every RAID1 volume has one leg on each. Every volume and
    // client is set up first: a later commit (a volume created or deleted) would hold every mirror
    // write's completion until the clients that detached are expired (docs/mirroring.md).
    c = await new Cluster({ targets: 2, drives_per_target: 1, drive_size: "256M", extent_size: "4M" }).start();
    good = await c.startExtraClient("good");
    for (const [i, [kind]] of cases.entries()) {
      volumes.push(await c.cliJson<VolumeJson>("volume", "create", "--name", `v-${kind}`, "--capacity", "8M", "--raid-level", "1", "--debug-format"));
      evil.push(await c.startExtraClient(`evil${i}`, { NVMESH_TEST_EVIL: "1", NVMESH_EVIL: `${kind}:every=2` }));
    }
    for (const [i, [kind]] of cases.entries()) uris.push([await c.attachOn(good, `v-${kind}`), await c.attachOn(evil[i]!, `v-${kind}`)]);
  }, 180_000);

  afterAll(async () => {
    await c?.destroy();
  });

  for (const [i, [kind, cls]] of cases.entries()) {
    test(`${kind}: scan --peer reports ${cls} and names the evil client`, async () => {
      const name = `evil${i}`;
      expect(evil[i]!.daemon.output).toMatch(new RegExp(`TEST-ONLY evil switch ${kind}`));
      const vol = `v-${kind}`;
      const v = volumes[i]!;
      // Worker 0 on the good client, worker 1 on the evil one. Readers may notice the damage and
      // stop early: what matters here is what forensics finds on the drives afterwards.
      await verify(c, uris[i]!, { clients: 2, seed: 11 + i, duration: "2s" });
      await c.detachOn(good, vol);
      await c.detachOn(evil[i]!, vol);
      const paths = await c.drivePaths();
      const legs = v.columns.map((col) => paths.get(col.drive_uuid)!);
      const s = await scanJson(legs, v.uuid);
      expect(s.code).toBe(1);
      const found = s.json.problems.filter((p) => p.class === cls);
      expect(found.length).toBeGreaterThan(0);
      const evilId = s.json.clients.find((x) => x.client_name === name)?.client_id;
      expect(evilId).toBeDefined();
      for (const p of found) expect(p.culprit).toEqual({ client_id: evilId!, client_name: name });
      // Nobody else is ever accused.
      for (const p of s.json.problems) if (p.culprit !== null) expect(p.culprit.client_name).toBe(name);
      // The history of one such block, from both legs, shows the evil client's write.
      const lba = found.find((p) => p.lba !== null)!.lba!;
      const h = await run([NVMESH, "forensics", "history", legs[0]!, "--peer", legs[1]!, "--lba", String(lba), "--volume", v.uuid]);
      expect(h.stdout).toContain(`(${name})`);
      // Except a stale generation (seen only across a client's writes), the block alone shows it.
      expect(h.code).toBe(cls === "stale_generation" ? 0 : 1);
    }, 90_000);
  }

  test("the evil switch is refused without the test guard", async () => {
    const r = await run([NVMESH, "client", "serve", "--run-dir", `${c.dir}/run-refused`, "-m", c.toma_addr], { env: { NVMESH_EVIL: "torn" }, timeout_ms: 20_000 });
    expect(r.code).toBe(2);
    expect(r.stderr + r.stdout).toMatch(/test-only switch .*refused without NVMESH_TEST_EVIL=1/);
  });
});
