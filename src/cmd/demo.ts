/**
 * `nvmesh demo`: a whole cluster on this machine, on files in a temp folder: three targets, a
 * TOMA and a client daemon as real child processes, a striped volume attached as an NBD export, a
 * check pattern written and verified through NBD, then the cluster's state, live, until Ctrl-C.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import type { Subprocess } from "bun";
import { consola } from "consola";
import { connectNbd } from "../engine/nbd/client.ts";
import { realEnv } from "../engine/runtime/real-env.ts";
import { tomaClient } from "../toma/api-client.ts";
import { formatBytes, parsePositiveInt, parseSize } from "./args.ts";
import { command, untilSignal } from "./command.ts";
import { selfCommand } from "./self.ts";

interface Child {
  name: string;
  proc: Subprocess<"ignore", "pipe", "pipe">;
  output: string;
}

function spawn(name: string, args: string[], log: string[]): Child {
  const proc = Bun.spawn([...selfCommand(), ...args], {
    stdin: "ignore",
    stdout: "pipe",
    stderr: "pipe",
    env: { ...process.env, NO_COLOR: "1" },
  });
  const child: Child = { name, proc, output: "" };
  const pump = async (s: ReadableStream<Uint8Array>) => {
    const dec = new TextDecoder();
    for await (const chunk of s) {
      const text = dec.decode(chunk, { stream: true });
      child.output += text;
      for (const line of text.split("\n")) if (line.trim()) log.push(`[${name}] ${line.trim()}`);
      if (log.length > 1000) log.splice(0, log.length - 1000);
    }
  };
  void pump(proc.stdout);
  void pump(proc.stderr);
  return child;
}

async function waitFor(child: Child, re: RegExp, timeout_ms = 30_000): Promise<RegExpMatchArray> {
  const deadline = performance.now() + timeout_ms;
  for (;;) {
    const m = child.output.match(re);
    if (m) return m;
    if (child.proc.exitCode !== null) throw new Error(`${child.name} exited:\n${child.output}`);
    if (performance.now() > deadline) throw new Error(`${child.name} did not start in time:\n${child.output}`);
    await Bun.sleep(50);
  }
}

async function run(cmd: string[]): Promise<string> {
  const p = Bun.spawn([...selfCommand(), ...cmd], { stdout: "pipe", stderr: "pipe", env: { ...process.env, NO_COLOR: "1" } });
  const [out, err, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
  if (code !== 0) throw new Error(`nvmesh ${cmd.join(" ")} failed: ${err || out}`);
  return out;
}

/** A deterministic pattern: every 512-byte sector names its own offset, so misplacement shows. */
function pattern(offset: number, length: number, seed: number): Uint8Array {
  const b = new Uint8Array(length);
  const dv = new DataView(b.buffer);
  for (let i = 0; i < length; i += 8) {
    const pos = offset + i;
    dv.setUint32(i, Math.floor(pos / 512), true);
    dv.setUint32(i + 4, (pos * 2654435761 + seed) >>> 0, true);
  }
  return b;
}

export const demoCommand = command({
  meta: { name: "demo", description: "a local cluster on files, a striped volume over NBD, live" },
  args: {
    dir: { type: "string", description: "folder for drive files and sockets (default: a new temp folder)" },
    targets: { type: "string", description: "number of targets, one drive each", default: "3" },
    "drive-size": { type: "string", description: "size of each drive file", default: "1G" },
    capacity: { type: "string", description: "volume capacity", default: "2G" },
    "check-size": { type: "string", description: "bytes of check pattern written and verified", default: "64M" },
  },
  async run({ args }) {
    const nTargets = parsePositiveInt(args.targets, "--targets")!;
    const driveSize = parseSize(args["drive-size"], "--drive-size");
    const capacity = parseSize(args.capacity, "--capacity");
    const checkBytes = Math.min(parseSize(args["check-size"], "--check-size"), capacity);
    const dir = args.dir ?? mkdtempSync(`${tmpdir()}/nvmesh-demo-`);
    const ownDir = args.dir === undefined;
    const log: string[] = [];
    const children: Child[] = [];
    const cleanup = async () => {
      for (const c of children.reverse()) {
        c.proc.kill("SIGTERM");
        await Promise.race([c.proc.exited, Bun.sleep(5000)]);
        c.proc.kill("SIGKILL");
      }
      if (ownDir) rmSync(dir, { recursive: true, force: true });
    };
    try {
      consola.start(`a ${nTargets}-target cluster on files in ${dir}`);
      const targetAddrs: string[] = [];
      for (let t = 1; t <= nTargets; t++) {
        const path = `${dir}/server${t}-drive1.img`;
        await Bun.write(path, "");
        await Bun.$`truncate -s ${driveSize} ${path}`.quiet();
        const out = await run(["drive", "format", path, "-o", "json"]);
        const sb = JSON.parse(out) as { drive_uuid: string; extent_count: number };
        const child = spawn(`target${t}`, ["target", "serve", "--drive", path, "--listen", "127.0.0.1:0", "--name", `server${t}`], log);
        children.push(child);
        const m = await waitFor(child, /target ready on (\S+)/);
        targetAddrs.push(m[1]!);
        consola.success(`server${t}: target on ${m[1]} serving drive ${sb.drive_uuid} (${formatBytes(driveSize)})`);
      }
      const toma = spawn("toma", ["toma", "run", "--listen", "127.0.0.1:0", ...targetAddrs.flatMap((a) => ["--target", a])], log);
      children.push(toma);
      const tm = await waitFor(toma, /toma ready on (\S+) \(cluster (\S+)\)/);
      const mgmt = tm[1]!;
      consola.success(`TOMA on ${mgmt}: cluster ${tm[2]} created on the drives themselves`);
      const runDir = `${dir}/run`;
      const client = spawn("client", ["client", "serve", "-m", mgmt, "--run-dir", runDir], log);
      children.push(client);
      await waitFor(client, /client ready/);
      consola.success("client daemon ready");

      const api = tomaClient(mgmt);
      const vol = await api.createVolume({ name: "demo", capacity_bytes: capacity, raid_level: "0", stripe_width: nTargets });
      consola.success(`volume demo: ${formatBytes(vol.capacity_bytes)} RAID0 striped over ${vol.columns.length} drives, ${vol.stripe_size_bytes / 1024}K stripe unit`);
      const uri = (await run(["client", "attach", "--volume", "demo", "--run-dir", runDir])).trim().split("\n").pop()!;
      consola.success(`attached: ${uri}`);

      const socket = uri.replace(/^.*socket=/, "");
      const nbd = await connectNbd(realEnv("demo"), `unix:${socket}`, "demo");
      const chunk = 1 << 20;
      consola.start(`writing a ${formatBytes(checkBytes)} check pattern through NBD`);
      let t0 = performance.now();
      const inflight: Promise<void>[] = [];
      for (let off = 0; off < checkBytes; off += chunk) {
        inflight.push(nbd.write(off, pattern(off, Math.min(chunk, checkBytes - off), 7)));
        if (inflight.length >= 8) await inflight.shift();
      }
      await Promise.all(inflight);
      await nbd.flush();
      const wMiBs = checkBytes / 2 ** 20 / ((performance.now() - t0) / 1000);
      t0 = performance.now();
      for (let off = 0; off < checkBytes; off += chunk) {
        const n = Math.min(chunk, checkBytes - off);
        const got = await nbd.read(off, n);
        const want = pattern(off, n, 7);
        if (!Buffer.from(got).equals(Buffer.from(want))) throw new Error(`check pattern mismatch at offset ${off}`);
      }
      const rMiBs = checkBytes / 2 ** 20 / ((performance.now() - t0) / 1000);
      await nbd.close();
      consola.success(`wrote ${formatBytes(checkBytes)} (${wMiBs.toFixed(0)} MiB/s, flushed), read it back and verified every byte (${rMiBs.toFixed(0)} MiB/s)`);

      const self = selfCommand().join(" ");
      consola.box(
        [
          `The volume is an NBD export: ${uri}`,
          "",
          `  nbdinfo '${uri}'`,
          `  qemu-io -f raw -c 'read -v 0 512' '${uri}'`,
          `  mkdir -p ${dir}/fuse && nbdfuse ${dir}/fuse '${uri}' &`,
          `  losetup -f --show ${dir}/fuse/nbd   # then mkfs.ext4 and mount the loop device`,
          "",
          `  NVMESH_MANAGEMENT=${mgmt} ${self} cluster status`,
          `  NVMESH_MANAGEMENT=${mgmt} ${self} volume show demo`,
          "",
          "Ctrl-C stops the cluster and removes the temp folder.",
        ].join("\n"),
      );

      // Live: print the cluster's state whenever it changes.
      let last = "";
      const watch = setInterval(async () => {
        try {
          const [c, vs] = await Promise.all([api.cluster(), api.volumes()]);
          const line = `targets ${c.targets.up} up / ${c.targets.down} down · drives ${c.drives.ok} ok, ${c.drives.missing} missing · ${vs.map((v) => `${v.name} ${v.state}`).join(", ")} · ${formatBytes(c.capacity.used_bytes)} of ${formatBytes(c.capacity.total_bytes)} used`;
          if (line !== last) consola.info(line);
          last = line;
        } catch (e) {
          const line = `TOMA unreachable: ${(e as Error).message}`;
          if (line !== last) consola.warn(line);
          last = line;
        }
      }, 1000);
      await untilSignal();
      clearInterval(watch);
      // Ctrl-C reached every child too; each stops cleanly on its own (the client flushes first).
      consola.start("stopping the client, the TOMA and the targets");
      await cleanup();
      consola.success("cluster stopped and cleaned up");
    } catch (e) {
      consola.error((e as Error).message);
      if (log.length) consola.log(`last daemon output:\n${log.slice(-20).join("\n")}`);
      await cleanup();
      throw e;
    }
  },
});
