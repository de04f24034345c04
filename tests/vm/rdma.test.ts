/**
 * The RDMA transport for real: two guest VMs with stock Debian kernels (tests/support/vmlab.ts),
 * joined by a private link (eth1, 192.168.77.0/24) with a soft-RoCE device (rdma_rxe) on it.
 * This host has no RDMA; the guests run the very binary `npm run build` made (9p share), with
 * rdma-core's libibverbs and librdmacm from Debian.
 *
 *   guest A (192.168.77.1): target ta (one drive) on TCP :4420 and rdma://0.0.0.0:4421, the TOMA
 *   guest B (192.168.77.2): target tb (two drives), the same listens; the client daemon
 *
 * (tb has two drives so that, with ta gone, a majority of the cluster's drives still holds the
 * cluster state and the TOMA can commit the Degraded topology.)
 *
 * A mirrored volume over both drives is served over RDMA to the client (its session to ta
 * crosses the link, the one to tb is rxe's loopback) and to the TOMA; fio writes and verifies
 * through it; target ta is killed (-9) and restarted; the volume rebuilds, fio's data reads
 * back, and every session is RDMA again. Emulated guests (TCG) are 5–20× slower than this host:
 * this is a test of function, never of speed.
 *
 * On failure every step shows both guests' daemon logs (each line stamped with the guest's time)
 * and kernel messages, the emulated link's included: the link between the guests (QEMU's socket
 * netdev) has been seen to stop carrying one guest's frames for good under load ("NETDEV WATCHDOG:
 * eth1: transmit queue 0 timed out" in that guest's kernel, for over 80 s; B's mostly, once A's).
 * With the TOMA on A and the client on B, nothing may then move the volume Degraded (the client
 * cannot reach the TOMA), so fio's writes to ta's leg fail after --io-timeout: that is the lab's
 * link down, not the product.
 * So the steps run as one scenario (tests/support/vm-link.ts): a step that fails while the link
 * is wedged *now* (B's watchdog in the last 30 s, or no ping answer over eth1 while ssh over eth0
 * works) is reported loudly with that evidence, and the scenario runs once more from the start on
 * fresh guests; any other failure, and any failure of that second run, fails the test at once.
 * soft-RoCE retries an RC queue pair's unacknowledged sends for ever with retry_count 7 (rxe reads
 * 7 as "infinite"), so a paused peer kills no queue pair; the sessions' own deadlines decide.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { copyFileSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { formatKeyFile } from "../../src/engine/wire/cluster-key.ts";
import { NVMESH } from "../support/proc.ts";
import { LinkScenario } from "../support/vm-link.ts";
import { buildVmlab, Guest } from "../support/vmlab.ts";

const A_IP = "192.168.77.1";
const B_IP = "192.168.77.2";
const TOMA = `${A_IP}:4000`;
/** In the guests: the nvmesh binary, with NO_COLOR so messages read plainly, and the cluster key. */
const N = "env NO_COLOR=1 NVMESH_KEY_FILE=/mnt/host/cluster.key /mnt/host/nvmesh";

let dir = "";
let a: Guest | null = null;
let b: Guest | null = null;

/** A free TCP port on 127.0.0.1 (the guests' link rides on it). */
function freePort(): number {
  const s = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
  const p = s.port;
  s.stop(true);
  return p;
}

/**
 * The daemons' last log lines and the kernel's, from every guest: a failure in one guest is often
 * explained by the other (fio on B fails because ta or the TOMA on A stopped answering).
 */
async function guestLogs(): Promise<string> {
  const out: string[] = [];
  for (const g of [a, b]) {
    if (g === null) continue;
    const r = await g
      .sh("date +'now %T'; for f in /tmp/*.log; do echo \"--- $f\"; tail -n 60 $f; done; echo '--- dmesg (link watchdog, then the last lines)'; dmesg | grep -E 'NETDEV WATCHDOG|TX timeout' | tail -n 3; dmesg | grep -v 'speed is unknown' | tail -n 60", 30_000)
      .catch(() => null);
    out.push(`=== ${g.name}:\n${r?.stdout ?? "(unavailable)"}`);
  }
  return out.join("\n");
}

/** Runs a snippet in a guest; when it fails, the error carries both guests' daemon logs. */
async function on(g: Guest, snippet: string, timeout_ms = 120_000): Promise<string> {
  try {
    return await g.ok(snippet, timeout_ms);
  } catch (e) {
    throw new Error(`${(e as Error).message}\n${await guestLogs()}`);
  }
}

/** Starts `cmd` detached in the guest, its output in /tmp/NAME.log, its pid in /tmp/NAME.pid. */
async function daemon(g: Guest, name: string, cmd: string, ready: string): Promise<void> {
  // Each line stamped with the guest's time (bash's printf builtin: no process per line).
  // `exec` so the stamping shell keeps no copy of the ssh session's output open (ssh waits for it).
  const stamp = `exec >/tmp/${name}.log 2>&1; while IFS= read -r l; do printf '%(%T)T %s\\n' -1 "$l"; done`;
  await on(g, `{ setsid ${cmd} > >(${stamp}) 2>&1 </dev/null & echo $! >/tmp/${name}.pid; }`);
  await on(g, `for i in $(seq 1200); do grep -q '${ready}' /tmp/${name}.log && exit 0; kill -0 $(cat /tmp/${name}.pid) || break; sleep 0.1; done; cat /tmp/${name}.log; exit 1`, 180_000);
}

function target(g: Guest, name: string, ip: string, drives: string[]): Promise<void> {
  const d = drives.map((x) => `--drive /var/tmp/${x}.img`).join(" ");
  return daemon(g, name, `${N} target serve ${d} --name ${name} --listen ${ip}:4420 --listen rdma://0.0.0.0:4421`, "target ready");
}

interface Shown {
  volume: string;
  uri: string;
  sessions: { target: string; transport: string | null }[];
}

async function clientShow(): Promise<Shown[]> {
  return JSON.parse(await on(b!, `${N} client show -o json`)) as Shown[];
}

/** Waits until the client's sessions to both targets are RDMA (I/O reopens a lost one). */
async function expectRdmaSessions(): Promise<void> {
  let shown: Shown[] = [];
  for (let i = 0; i < 60; i++) {
    shown = await clientShow();
    const s = shown[0]?.sessions ?? [];
    if (s.length === 2 && s.every((x) => x.transport?.startsWith("rdma:"))) break;
    await Bun.sleep(1000);
  }
  expect(shown[0]!.sessions).toEqual([
    { target: `${A_IP}:4420`, transport: `rdma: the target listens on rdma://${A_IP}:4421` },
    { target: `${B_IP}:4420`, transport: `rdma: the target listens on rdma://${B_IP}:4421` },
  ]);
}

async function volumeState(): Promise<string> {
  const v = JSON.parse(await on(b!, `${N} volume show m1 -m ${TOMA} -o json`)) as { state: string } | { state: string }[];
  return Array.isArray(v) ? v[0]!.state : v.state;
}

/** Waits (up to 5 min) for the volume to be online again; returns the state last seen. */
async function waitOnline(): Promise<string> {
  let state = "";
  for (let i = 0; i < 300 && state !== "online"; i++) {
    state = await volumeState();
    if (state !== "online") await Bun.sleep(1000);
  }
  return state;
}

/** The two write phases; `--verify_only` replays one (same seed and sizes) as reads that verify. */
const PHASE1 = "--rw=randwrite --bsrange=4k-256k --iodepth=8 --size=48M --verify=crc32c --verify_fatal=1 --randseed=11";
const PHASE2 = "--rw=randwrite --bs=64k --iodepth=4 --size=16M --offset=48M --verify=crc32c --verify_fatal=1 --randseed=12";

async function fio(args: string, timeout_ms = 600_000): Promise<string> {
  const uri = (await clientShow())[0]!.uri;
  return await on(b!, `fio --name=v --ioengine=nbd --uri='${uri}' --output-format=terse --minimal ${args}`, timeout_ms);
}

let share = "";
let link_port = 0;
/** How many labs were booted (the guests' names carry it: a repeated scenario boots fresh ones). */
let labs = 0;

/** Boots two fresh guests (stopping any from before) and sets the cluster up on them. */
async function setUp(): Promise<void> {
  await a?.down();
  await b?.down();
  a = b = null;
  labs++;
  link_port = freePort();
  const tag = `${process.pid}-${labs}`;
  a = await Guest.up(`rdma-a-${tag}`, { mem_mib: 1024, share, link: { mode: "listen", port: link_port, ip1: `${A_IP}/24` } });
  b = await Guest.up(`rdma-b-${tag}`, { mem_mib: 1024, share, link: { mode: "connect", port: link_port, ip1: `${B_IP}/24` } });
  for (const [g, name, ip, drives] of [
    [a, "ta", A_IP, ["ta"]],
    [b, "tb", B_IP, ["tb1", "tb2"]],
  ] as const) {
    // Soft-RoCE on the link: the RDMA device the targets, the TOMA and the client use.
    await on(g, "modprobe -a rdma_rxe ib_uverbs rdma_ucm && rdma link add rxe0 type rxe netdev eth1 && ibv_devinfo -d rxe0 | grep -q PORT_ACTIVE");
    for (const d of drives) await on(g, `truncate -s 256M /var/tmp/${d}.img && ${N} drive format /var/tmp/${d}.img`, 180_000);
    await target(g, name, ip, [...drives]);
  }
  await on(b, `ping -c1 -W5 ${A_IP}`);
  await daemon(a, "toma", `${N} toma run --listen 0.0.0.0:4000 --target ${A_IP}:4420 --target ${B_IP}:4420`, "toma ready");
  await on(b, `${N} volume create --name m1 --capacity 64M --raid-level 1 -m ${TOMA}`);
  await on(b, "mkdir -p /run/nvmesh");
  await daemon(b, "client", `${N} client serve -m ${TOMA}`, "client ready");
  await on(b, `${N} client attach --volume m1`, 180_000);
}

async function checkSessions(): Promise<void> {
  await expectRdmaSessions();
  const table = await on(b!, `${N} client show`);
  expect(table).toContain(`rdma: the target listens on rdma://${A_IP}:4421`);
  const targets = JSON.parse(await on(b!, `${N} target show -m ${TOMA} -o json`)) as { address: string; transport: string; rdma: string }[];
  expect(targets.map((t) => [t.address, t.transport, t.rdma])).toEqual([
    [`${A_IP}:4420`, `rdma: the target listens on rdma://${A_IP}:4421`, "rdma://*:4421"],
    [`${B_IP}:4420`, `rdma: the target listens on rdma://${B_IP}:4421`, "rdma://*:4421"],
  ]);
  // The targets hold the connections as RDMA too (the kernel's rdma_cm ids, one per session).
  expect(await on(a!, "rdma res show cm_id | grep -c 'state CONNECT.*comm nvmesh' || true")).not.toBe("0\n");
}

async function fioOnline(): Promise<void> {
  await fio(`${PHASE1} --do_verify=1`, 900_000);
  expect(await volumeState()).toBe("online");
}

async function killAndRebuild(): Promise<void> {
  await on(a!, "kill -9 $(cat /tmp/ta.pid)");
  // Written while a leg is gone: lands on tb alone, then must come back to ta by the rebuild.
  await fio(`${PHASE2} --do_verify=1`, 900_000);
  expect(["degraded", "rebuilding"]).toContain(await volumeState());
  await target(a!, "ta", A_IP, ["ta"]);
  expect(await waitOnline()).toBe("online");
  // Everything fio wrote reads back and verifies, both phases (reads alternate between the legs).
  await fio(`${PHASE1} --verify_only`, 900_000);
  await fio(`${PHASE2} --verify_only`, 900_000);
  await expectRdmaSessions();
}

/** The steps in order; a wedged emulated link repeats them once on fresh guests (vm-link.ts). */
const scenario = new LinkScenario(
  [
    { name: "set-up", run: setUp },
    { name: "sessions are RDMA", run: checkSessions },
    { name: "fio over RDMA", run: fioOnline },
    { name: "ta killed and restarted", run: killAndRebuild },
  ],
  () => (a && b ? { a, a_ip: A_IP, b, b_ip: B_IP, port: link_port } : null),
);

// Timeouts: room for a repeat, which runs the set-up and every step before the failed one again.
beforeAll(async () => {
  await buildVmlab();
  dir = mkdtempSync(`${tmpdir()}/nvmesh-rdma-`);
  share = `${dir}/share`;
  mkdirSync(share);
  copyFileSync(NVMESH, `${share}/nvmesh`);
  writeFileSync(`${share}/cluster.key`, formatKeyFile({ kind: "server", key: crypto.getRandomValues(new Uint8Array(32)) }), { mode: 0o600 });
  await scenario.step(0);
}, 3_000_000);

afterAll(async () => {
  await a?.down();
  await b?.down();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe("RDMA in VMs (soft-RoCE): a mirrored volume over rdma://", () => {
  test("the client's and the TOMA's sessions to both targets are RDMA, and say so", async () => {
    await scenario.step(1);
  }, 1_800_000);

  test("fio writes and verifies through the mirror over RDMA (4k to 256k, QD 8)", async () => {
    await scenario.step(2);
  }, 2_400_000);

  test("target ta killed: the volume goes on degraded over RDMA; ta restarted: rebuilt, data verified, sessions RDMA again", async () => {
    await scenario.step(3);
  }, 3_600_000);
});
