/**
 * Every command, with wrong and impossible input, as a newcomer types it, against a live cluster
 * of the compiled binary. Each answer must say what is wrong and what to do, in one message, no
 * stack trace; exit 2 for a wrong command line, 1 for an operation that failed; and nothing may
 * change: the same volumes, the same drives, every daemon alive, the first client daemon still
 * answering.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { chmodSync, mkdirSync, readFileSync } from "node:fs";
import { Cluster } from "../support/cluster.ts";
import { Daemon, NVMESH, ok, type RunResult, requireTool, run } from "../support/proc.ts";

let c: Cluster;
/** An HTTP server that is not a TOMA. */
let notToma: ReturnType<typeof Bun.serve>;
let before: Awaited<ReturnType<typeof snapshot>> & { files: Record<string, string> };

/** Paths of files made for the cases (under the cluster's temp folder). */
const f = {
  get blank() {
    return `${c.dir}/blank.img`;
  },
  get small() {
    return `${c.dir}/small.img`;
  },
  get spare() {
    return `${c.dir}/spare.img`;
  },
  get empty_dir() {
    return `${c.dir}/empty`;
  },
};

/** A TCP port nothing listens on right now. */
async function closedPort(): Promise<number> {
  const s = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
  const port = s.port;
  s.stop(true);
  return port;
}

/** The files the cases were refused to touch: the key, the spare drive, the blank file. */
function files(): Record<string, string> {
  const paths = [c.keyEnv.NVMESH_KEY_FILE!, f.spare, f.blank, f.small];
  return Object.fromEntries(paths.map((p) => [p, Bun.hash(readFileSync(p)).toString()]));
}

/** Whatever the volumes and drives look like, minus what moves on its own (free/used stay). */
async function snapshot() {
  const volumes = (await c.cliJson<{ name: string; capacity_bytes: number; columns: unknown }[]>("volume", "show"))
    .map((v) => ({ name: v.name, capacity_bytes: v.capacity_bytes, columns: v.columns }));
  const drives = (await c.cliJson<{ uuid: string; extents_used: number; state: string }[]>("drive", "show"))
    .map((d) => ({ uuid: d.uuid, extents_used: d.extents_used, state: d.state }));
  return { volumes, drives };
}

function expectAnswer(r: RunResult, code: number, ...res: RegExp[]): void {
  const out = r.stdout + r.stderr;
  if (r.code !== code) throw new Error(`exit ${r.code}, expected ${code}; output:\n${out}`);
  for (const re of res) expect(out).toMatch(re);
  // No stack trace, ever: a frame line is "    at fn (file:line:col)".
  expect(out).not.toMatch(/^\s+at .+:\d+/m);
  expect(out).not.toMatch(/TypeError|ReferenceError|undefined is not/);
}

beforeAll(async () => {
  requireTool("setpriv");
  c = await new Cluster({ targets: 3, drive_size: "256M" }).start();
  await c.cli("volume", "create", "--name", "keep", "--capacity", "32M", "--raid-level", "1");
  await c.attach("keep");
  await ok(["truncate", "-s", "64M", f.blank]);
  await ok(["truncate", "-s", "100K", f.small]);
  await ok(["truncate", "-s", "64M", f.spare]);
  await ok([NVMESH, "drive", "format", f.spare]);
  mkdirSync(f.empty_dir);
  notToma = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => new Response("<html>hello</html>", { status: 404 }) });
  before = { ...(await snapshot()), files: files() };
}, 120_000);

afterAll(async () => {
  notToma?.stop(true);
  await c?.destroy();
});

describe("a wrong command line: exit 2, what is wrong, and where to look", () => {
  const cases: [string, () => string[], RegExp[]][] = [
    ["no command", () => ["volume"], [/nvmesh volume needs a command: create, show, delete/]],
    ["an unknown command, close to a known one", () => ["volume", "crate"], [/unknown command 'crate' for nvmesh volume \(did you mean 'create'\?\): use create, show, delete/]],
    ["an unknown top-level command", () => ["volumez"], [/unknown command 'volumez' for nvmesh \(did you mean 'volume'\?\)/]],
    ["an unknown flag, close to a known one", () => ["volume", "show", "--outptu", "json"], [/unknown option '--outptu' \(did you mean '--output'\?\): see 'nvmesh volume show --help'/]],
    ["a required flag missing", () => ["volume", "create", "--capacity", "1G"], [/missing --name \(volume name/, /see 'nvmesh volume create --help'/]],
    ["a required argument missing", () => ["volume", "delete"], [/missing NAME \(volume name\): see 'nvmesh volume delete --help'/]],
    ["a flag without its value, followed by another flag", () => ["volume", "create", "--name", "--capacity", "1M"], [/--name needs a value/]],
    ["a short flag without its value", () => ["volume", "show", "-o"], [/-o needs a value \(output format: table or json\)/]],
    ["a flag given twice", () => ["volume", "create", "--name", "a", "--capacity", "1M", "--capacity", "2M"], [/--capacity is given twice \('1M', then '2M'\): give it once/]],
    ["a boolean given a value", () => ["volume", "create", "--name", "a", "--capacity", "1M", "--debug-format=yes"], [/--debug-format takes no value, got 'yes'/]],
    ["an argument too many", () => ["volume", "show", "keep", "extra"], [/unexpected argument 'extra': nvmesh volume show takes NAME only/]],
    ["a size with an unknown unit", () => ["volume", "create", "--name", "a", "--capacity", "10Q"], [/invalid --capacity '10Q': give a number with an optional unit K, M, G, T or P, e\.g\. 10G/]],
    ["a negative size", () => ["volume", "create", "--name", "a", "--capacity", "-1G"], [/invalid --capacity '-1G': a size cannot be negative/]],
    ["a zero size", () => ["volume", "create", "--name", "a", "--capacity", "0"], [/invalid --capacity '0': a size must be more than 0/]],
    ["a fraction of a byte", () => ["volume", "create", "--name", "a", "--capacity", "1.5"], [/not a whole number/]],
    ["a capacity that is not whole sectors", () => ["volume", "create", "--name", "a", "--capacity", "1000"], [/512-byte sectors, and 1000 bytes is not a multiple of 512/]],
    ["a volume name with a space", () => ["volume", "create", "--name", "a b", "--capacity", "1M"], [/invalid volume name 'a b': use 1 to 64 letters, digits/]],
    ["a raid level that does not exist", () => ["volume", "create", "--name", "a", "--capacity", "1M", "--raid-level", "5"], [/use concatenated, 0, 1 or 10/]],
    ["a stripe unit that is not a power of two", () => ["volume", "create", "--name", "a", "--capacity", "1M", "--raid-level", "0", "--stripe-size", "48"], [/invalid --stripe-size 48: the stripe unit is in KiB, a power of two/]],
    ["four copies", () => ["volume", "create", "--name", "a", "--capacity", "1M", "--raid-level", "1", "--number-of-mirrors", "4"], [/--number-of-mirrors must be 2 or 3, got 4/]],
    ["a delete without -y and no terminal", () => ["volume", "delete", "keep"], [/not deleting volume keep without a confirmation: add -y/]],
    ["an output format that does not exist", () => ["volume", "show", "-o", "yaml"], [/use -o table or -o json/]],
    ["a management port out of range", () => ["cluster", "status", "-m", "127.0.0.1:99999"], [/invalid management address '127\.0\.0\.1:99999': port 99999 is above 65535/]],
    ["a management address without a port", () => ["cluster", "status", "-m", "localhost"], [/expected HOST:PORT, e\.g\. 10\.0\.0\.1:4000/]],
    ["a drive named by something else than its uuid", () => ["drive", "evict", "t0d0"], [/invalid drive 't0d0': give the drive's uuid, as 'nvmesh drive show' lists it/]],
    ["a drive file that does not exist", () => ["drive", "format", `${c.dir}/nope.img`], [/nope\.img does not exist: give a drive file or a block device \(make a file with 'truncate -s 10G/]],
    ["a directory as a drive", () => ["drive", "format", f.empty_dir], [/is a directory: give a drive file or a block device/]],
    ["an extent size that is not a power of two", () => ["drive", "format", f.blank, "--extent-size", "3M"], [/invalid --extent-size '3M': a power of two from 1M to 1G/]],
    ["an extent size below 1M", () => ["drive", "format", f.blank, "--extent-size", "512K"], [/invalid --extent-size '512K'/]],
    ["attach without a volume name", () => ["client", "attach", "--volume"], [/--volume needs a value \(volume name\)/]],
    ["a timeout that is no duration", () => ["client", "serve", "--io-timeout", "5x", "--run-dir", `${c.dir}/run-x`], [/invalid --io-timeout '5x': give a duration such as 30s/]],
    ["the same target twice", () => ["toma", "run", "--target", c.target_addrs[0]!, "--target", c.target_addrs[0]!, "--listen", "127.0.0.1:0"], [/--target 127\.0\.0\.1:\d+ is given twice: give each target once/]],
    ["a cluster uuid that is not one", () => ["toma", "run", "--target", "127.0.0.1:1", "--cluster", "prod"], [/invalid --cluster 'prod': give the cluster's uuid/]],
    ["the management API on a unix socket", () => ["toma", "run", "--target", "127.0.0.1:1", "--listen", "unix:/tmp/x"], [/listens on HOST:PORT \(e\.g\. 0\.0\.0\.0:4000\), not a unix socket/]],
    ["the same drive twice", () => ["target", "serve", "--drive", f.spare, "--drive", f.spare], [/--drive .*spare\.img is given twice: give each drive once/]],
    ["a key written over a directory", () => ["cluster", "genkey", "--out", f.empty_dir], [/is a directory: give the path of the key file to write, e\.g\. .*\/empty\/cluster\.key/]],
    ["a key file that does not exist", () => ["cluster", "status", "--key-file", `${c.dir}/none.key`], [/cannot read the cluster key file .*none\.key \(--key-file\): it does not exist; copy the cluster's key there, or write a new one with 'nvmesh cluster genkey/]],
    ["the demo on drives too small", () => ["demo", "--drive-size", "1K", "--exit"], [/--drive-size 1K is too small: a drive needs at least 21M/]],
    ["the demo's volume larger than its drives", () => ["demo", "--capacity", "99T", "--exit"], [/--capacity 99T does not fit on 3 drives of 1G: at most 3024M; lower --capacity or raise --drive-size/]],
  ];
  for (const [title, args, res] of cases) {
    test(title, async () => expectAnswer(await c.cliRaw(...args()), 2, ...res));
  }
});

describe("a failed operation: exit 1, what is wrong, and what to do", () => {
  test("a mirror larger than the pool says how much is free and the most a mirror can have; that much is then created", async () => {
    const r = await c.cliRaw("volume", "create", "--name", "big", "--capacity", "99T", "--raid-level", "1");
    expectAnswer(r, 1, /not enough free space for a RAID1 volume of 99T \(2 copies\): at most \d+M fits in this layout, \d+M is free on the usable drives\. Ask for less, or add drives \('nvmesh drive show'/);
    expect(r.stderr).not.toMatch(/servers/);
    // The number offered is the truth: exactly that much fits, a megabyte more does not.
    const most = /at most (\d+)M fits/.exec(r.stderr)![1]!;
    expectAnswer(await c.cliRaw("volume", "create", "--name", "big", "--capacity", `${Number(most) + 1}M`, "--raid-level", "1"), 1, /not enough free space/);
    await c.cli("volume", "create", "--name", "big", "--capacity", `${most}M`, "--raid-level", "1");
    await c.cli("volume", "delete", "big", "-y");
  });

  const cases: [string, () => string[] | Promise<string[]>, RegExp[]][] = [
    ["a stripe wider than the cluster", () => ["volume", "create", "--name", "a", "--capacity", "1M", "--raid-level", "0", "--stripe-width", "9"], [/a RAID0 volume of 1M striped over 9 drives needs 9 drives; the cluster has 3 usable drives on 3 servers\. Use --stripe-width 3 or less, or add drives/]],
    ["mirror sets the cluster cannot place", () => ["volume", "create", "--name", "a", "--capacity", "1M", "--raid-level", "10", "--number-of-mirrors", "3"], [/needs 6 drives, each set's 3 copies on different servers; the cluster has 3 usable drives on 3 servers\. Use --stripe-width 1, or add drives/]],
    ["a name taken", () => ["volume", "create", "--name", "keep", "--capacity", "1M"], [/a volume named 'keep' already exists: choose another name/]],
    ["show an unknown volume", () => ["volume", "show", "nope"], [/no volume named 'nope' \('nvmesh volume show' lists them\)/]],
    ["delete an unknown volume", () => ["volume", "delete", "nope", "-y"], [/no volume named 'nope' \('nvmesh volume show' lists them\)/]],
    ["attach an unknown volume", () => ["client", "attach", "--volume", "nope"], [/no volume named 'nope' \('nvmesh volume show' lists them\)/]],
    ["detach a volume that is not attached", () => ["client", "detach", "--volume", "nope"], [/volume nope is not attached here \('nvmesh client show' lists what is\)/]],
    ["evict an unknown drive", () => ["drive", "evict", "00000000-0000-4000-8000-000000000000"], [/no drive 00000000-0000-4000-8000-000000000000 in the cluster: 'nvmesh drive show' lists the drives/]],
    ["a management address where nothing listens", async () => ["cluster", "status", "-m", `127.0.0.1:${await closedPort()}`], [/cannot reach a TOMA at 127\.0\.0\.1:\d+: connection refused \(nothing listens there\)\. Check -m \(or NVMESH_MANAGEMENT\): it must name the --listen address of a running 'nvmesh toma run'/]],
    ["a target's address given as the TOMA's", () => ["cluster", "status", "-m", c.target_addrs[1]!], [/cannot reach a TOMA at .*: the connection was closed without an answer \(is it a target's port rather than a TOMA's\?\)\. Check -m/]],
    ["an HTTP server that is not a TOMA", () => ["drive", "show", "-m", `127.0.0.1:${notToma.port}`], [/127\.0\.0\.1:\d+ is not a TOMA: it answered HTTP 404 without the management API's JSON\. Check -m/]],
    ["no client daemon on the run directory", () => ["client", "show", "--run-dir", f.empty_dir], [/no client daemon at .*\/empty\/client\.sock: start one with 'nvmesh client serve --run-dir .*\/empty'/]],
    ["attach on another export while attached", () => ["client", "attach", "--volume", "keep", "--nbd-tcp", "127.0.0.1:0"], [/volume keep is attached already, exported at nbd\+unix:\/\/\/keep\?socket=.*: detach it first to export it on 127\.0\.0\.1:0/]],
    ["format a drive a target serves", () => ["drive", "format", c.drives[0]![0]!], [/is in use by another process, which holds its lock \(a target serving it\?\): stop that process first/]],
    ["format a drive formatted already", () => ["drive", "format", f.spare], [/already holds nvmesh drive [0-9a-f-]+ \(unclaimed\); --force reformats it, and its data is lost/]],
    ["format a file too small for one extent", () => ["drive", "format", f.small], [/small\.img holds 100K, too little for a drive with 16M extents \(its metadata and one extent take 21M\): enlarge it .* or choose a smaller --extent-size/]],
    ["serve a file that is not a drive", () => ["target", "serve", "--drive", f.blank, "--listen", "127.0.0.1:0"], [/no nvmesh superblock at offset 0 \(blank start\): not an nvmesh drive yet; format it with 'nvmesh drive format .*blank\.img'/, /nothing to serve/]],
    ["serve on an address in use", () => ["target", "serve", "--drive", f.spare, "--listen", c.target_addrs[0]!], [/cannot listen on 127\.0\.0\.1:\d+: the address is in use by another process \(another nvmesh daemon\?\): stop it or choose another port/]],
    ["serve on an address of another host", () => ["target", "serve", "--drive", f.spare, "--listen", "192.0.2.1:4420"], [/cannot listen on 192\.0\.2\.1:4420: that is not an address of this host/]],
    ["a TOMA on the port of a running one", () => ["toma", "run", "--target", "127.0.0.1:1", "--listen", c.toma_addr], [/cannot listen on 127\.0\.0\.1:\d+: the address is in use/]],
    ["a key written where no directory is", () => ["cluster", "genkey", "--out", `${c.dir}/no/such/dir/cluster.key`], [/cannot write .*: its directory .*\/no\/such\/dir does not exist \(mkdir -p .*\)/]],
    ["a second client daemon on the same run directory", () => ["client", "serve", "--run-dir", c.runDir], [/a client daemon runs already with the run directory .*: stop it first, or give this one another --run-dir/]],
    ["verify against an export that is not there", async () => ["verify", "run", "--uri", `nbd://127.0.0.1:${await closedPort()}/x`, "--duration", "1s"], [/is the volume exported there\? \('nvmesh client show' lists this host's exports\)/]],
  ];
  for (const [title, args, res] of cases) {
    test(title, async () => expectAnswer(await c.cliRaw(...(await args())), 1, ...res));
  }

  test("a user who may not write the run directory, read a drive or the key: told so", async () => {
    // The test's folder is private (mkdtemp): open it, so that only what is tested is refused.
    chmodSync(c.dir, 0o755);
    chmodSync(f.blank, 0o644);
    const dir = `${c.dir}/private`;
    mkdirSync(dir);
    chmodSync(dir, 0o700);
    const asNobody = (...args: string[]) =>
      run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", NVMESH, ...args], { env: { ...c.keyEnv, NVMESH_MANAGEMENT: c.toma_addr } });
    expectAnswer(await asNobody("client", "serve", "--run-dir", `${dir}/run`), 1, /cannot create the run directory .*\/private\/run: permission denied; run as root, or choose another --run-dir/);
    expectAnswer(await asNobody("client", "serve", "--run-dir", dir), 1, /cannot use the run directory .*\/private: this user may not write in it/);
    expectAnswer(await asNobody("client", "show", "--run-dir", c.runDir), 1, /cannot reach the client daemon at .*client\.sock: permission denied/);
    expectAnswer(await asNobody("drive", "format", f.blank), 2, /no permission to read and write .*blank\.img: run as root, or give this user access to it/);
    expectAnswer(await asNobody("cluster", "status"), 2, /cannot read the cluster key file .* \(NVMESH_KEY_FILE\): permission denied/);
  });

  test("a client daemon pointed at no TOMA says so when it starts, and attach says whose -m to fix", async () => {
    const runDir = `${c.dir}/run-lost`;
    const lost = new Daemon("client lost", [NVMESH, "client", "serve", "--run-dir", runDir, "-m", `127.0.0.1:${await closedPort()}`, "--name", "lost"], c.keyEnv);
    try {
      await lost.waitFor(/no volume can be attached until this is fixed: cannot reach a TOMA at .*connection refused/);
      const r = await run([NVMESH, "client", "attach", "--volume", "keep", "--run-dir", runDir], { env: c.keyEnv });
      expectAnswer(r, 1, /this client daemon cannot reach a TOMA at .*: restart 'nvmesh client serve' with -m naming a running TOMA/);
      expect(lost.alive).toBe(true);
    } finally {
      await lost.stop();
    }
  });
});

test("help is not an error", async () => {
  const r = await c.cliRaw("volume", "create", "--help");
  expect(r.code).toBe(0);
  expect(r.stdout).toMatch(/--capacity/);
});

test("afterwards: nothing changed, every daemon alive, the first client daemon still answering", async () => {
  const { files: filesBefore, ...state } = before;
  expect(await snapshot()).toEqual(state);
  expect(files()).toEqual(filesBefore);
  for (const d of c.daemons()) expect(d.alive).toBe(true);
  const attached = await c.cliJson<{ volume: string }[]>("client", "show");
  expect(attached.map((a) => a.volume)).toEqual(["keep"]);
});
