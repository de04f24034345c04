/**
 * What a user sees of the transport choice on a host without RDMA (this machine, and CI's): every
 * session says it runs on TCP and why, in `client show` and `target show`; and a target asked to
 * listen on RDMA refuses to start with the reason, instead of serving TCP alone as if nothing were
 * wrong. The RDMA path itself runs in
 * tests/vm/rdma.test.ts.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { Cluster } from "../support/cluster.ts";
import { NVMESH, run } from "../support/proc.ts";

let c: Cluster;

beforeAll(async () => {
  c = await new Cluster({ targets: 2, drive_size: "64M" }).start();
  await c.cli("volume", "create", "--name", "v1", "--capacity", "32M", "--raid-level", "1");
  await c.attach("v1");
}, 120_000);

afterAll(async () => {
  await c?.destroy();
});

describe("transport choice, shown", () => {
  test("client show: each target session is TCP, because the targets do not listen on RDMA", async () => {
    const shown = await c.cliJson<{ volume: string; sessions: { target: string; transport: string }[] }[]>("client", "show");
    expect(shown[0]!.sessions).toEqual(
      [...c.target_addrs].sort().map((target) => ({ target, transport: "tcp: the target does not listen on RDMA" })),
    );
    const table = await c.cli("client", "show");
    expect(table).toContain("TRANSPORT");
    expect(table).toContain("tcp: the target does not listen on RDMA");
  });

  test("target show: the TOMA's sessions, the same way", async () => {
    const targets = await c.cliJson<{ address: string; transport: string; rdma: string | null }[]>("target", "show");
    expect(targets.map((t) => [t.transport, t.rdma])).toEqual([
      ["tcp: the target does not listen on RDMA", null],
      ["tcp: the target does not listen on RDMA", null],
    ]);
  });

  test("target serve --listen rdma:// on a host without an RDMA device refuses to start, and says why", async () => {
    const drive = (await c.formatDrive(`${c.dir}/spare.img`)).path;
    const r = await run([NVMESH, "target", "serve", "--drive", drive, "--listen", "127.0.0.1:0", "--listen", "rdma://127.0.0.1:0"], {
      env: c.keyEnv,
      timeout_ms: 30_000,
    });
    expect(r.code).not.toBe(0);
    expect(r.stdout + r.stderr).toMatch(/cannot listen on rdma:\/\/127\.0\.0\.1:0: (no RDMA device on this host|libibverbs cannot be loaded)/);
  });

  test("bad --listen values are usage errors", async () => {
    const drive = c.drives[0]![0]!;
    for (const [listen, want] of [
      [["--listen", "rdma://nohost"], "expected rdma://HOST:PORT"],
      [["--listen", "rdma://a:1", "--listen", "rdma://b:2"], "at most one HOST:PORT and one rdma://HOST:PORT"],
    ] as const) {
      const r = await run([NVMESH, "target", "serve", "--drive", drive, ...listen], { env: c.keyEnv, timeout_ms: 30_000 });
      expect(r.code).not.toBe(0);
      expect(r.stdout + r.stderr).toContain(want);
    }
  });
});
