/**
 * `nvmesh demo`: a whole cluster on this machine, on files in a temp folder: three servers, each a
 * target and a TOMA of a TOMA cluster (`toma run --peers`), and a client daemon given every TOMA,
 * as real child processes; a striped volume attached as an NBD export, a check pattern written and
 * verified through NBD; then a mirrored volume that survives the leader's server killed while it
 * is written (a new leader takes over), and rebuilds when the server returns (demo-mirror.ts);
 * then the cluster's state, live, until Ctrl-C (or, with --exit, the cluster is stopped at once).
 */
import { clusterKey, generateKeyFile, writeClientKeyFile } from "./key-file.ts";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { consola } from "consola";
import { connectNbd } from "../engine/nbd/client.ts";
import { realEnv } from "../engine/runtime/real-env.ts";
import { exactSize } from "../toma/allocator.ts";
import { formatBytes, parsePositiveInt, parseSize, UsageError } from "./args.ts";
import { computeGeometry, DEFAULT_EXTENT_SIZE_BYTES, isInvalid, minDriveBytes } from "../engine/drive/superblock.ts";
import { command, untilSignal } from "./command.ts";
import { type DemoServer, mirrorAct } from "./demo-mirror.ts";
import { type Child, pattern, runNvmesh as run, spawnChild as spawn, waitForOutput as waitFor } from "./demo-procs.ts";
import { selfCommand } from "./self.ts";
import { atLeader } from "./at-leader.ts";
import { DemoTomas } from "./demo-toma.ts";

/**
 * Refuses sizes the demo's cluster cannot hold before anything starts: drives of --drive-size
 * (16M extents), the striped volume over all of them, then a mirror's two legs in what is left.
 */
function checkDemoSizes(targets: number, drive_bytes: number, capacity: number, mirror_capacity: number): void {
  const E = DEFAULT_EXTENT_SIZE_BYTES;
  const g = computeGeometry(drive_bytes, E);
  if (isInvalid(g)) throw new UsageError(`--drive-size ${formatBytes(drive_bytes)} is too small: a drive needs at least ${formatBytes(Math.ceil(minDriveBytes(E) / 2 ** 20) * 2 ** 20)}`);
  const per_drive = g.extent_count;
  if (capacity > targets * per_drive * E) {
    throw new UsageError(`--capacity ${formatBytes(capacity)} does not fit on ${targets} drives of ${formatBytes(drive_bytes)}: at most ${exactSize(targets * per_drive * E)}; lower --capacity or raise --drive-size`);
  }
  const left = per_drive - Math.ceil(capacity / targets / E);
  // With fewer than 3 targets the mirror act is skipped (see below).
  if (targets >= 3 && mirror_capacity > left * E) {
    throw new UsageError(`--mirror-capacity ${formatBytes(mirror_capacity)} does not fit in what the striped volume leaves on each drive (${exactSize(left * E)}): lower --mirror-capacity or --capacity, or raise --drive-size`);
  }
}

export const demoCommand = command({
  meta: { name: "demo", description: "a local cluster on files: a striped volume, a mirror surviving the leader's server killed, live" },
  args: {
    dir: { type: "string", description: "folder for drive files and sockets (default: a new temp folder)" },
    targets: { type: "string", description: "number of servers (a target with one drive and a TOMA each)", default: "3" },
    "drive-size": { type: "string", description: "size of each drive file", default: "1G" },
    capacity: { type: "string", description: "striped volume capacity", default: "2G" },
    "check-size": { type: "string", description: "bytes of check pattern written and verified", default: "64M" },
    "mirror-capacity": { type: "string", description: "mirrored volume capacity (0: no mirror act)", default: "256M" },
    exit: { type: "boolean", description: "stop the cluster and clean up when the script is done, instead of staying live" },
  },
  async run({ args }) {
    const nTargets = parsePositiveInt(args.targets, "--targets")!;
    const driveSize = parseSize(args["drive-size"], "--drive-size");
    const capacity = parseSize(args.capacity, "--capacity");
    const checkBytes = Math.min(parseSize(args["check-size"], "--check-size"), capacity);
    const mirrorCapacity = args["mirror-capacity"] === "0" ? 0 : parseSize(args["mirror-capacity"], "--mirror-capacity");
    checkDemoSizes(nTargets, driveSize, capacity, mirrorCapacity);
    if (args.dir !== undefined) {
      try {
        mkdirSync(args.dir, { recursive: true });
      } catch (e) {
        throw new UsageError(`cannot create --dir ${args.dir}: ${(e as Error).message}`);
      }
    }
    const dir = args.dir ?? mkdtempSync(`${tmpdir()}/nvmesh-demo-`);
    const ownDir = args.dir === undefined;
    // The demo's cluster has its own keys: the server key, which every daemon and command below
    // inherits through NVMESH_KEY_FILE, and the client key derived from it for the client daemon.
    const keyFile = `${dir}/cluster.key`;
    const clientKeyFile = `${dir}/client.key`;
    generateKeyFile(keyFile, true);
    process.env.NVMESH_KEY_FILE = keyFile;
    const serverKey = clusterKey(keyFile)!;
    writeClientKeyFile(serverKey, clientKeyFile, true);
    const log: string[] = [];
    const children: Child[] = [];
    const cleanup = async () => {
      for (const c of [...children].reverse()) {
        c.proc.kill("SIGTERM");
        await Promise.race([c.proc.exited, Bun.sleep(5000)]);
        c.proc.kill("SIGKILL");
      }
      if (ownDir) rmSync(dir, { recursive: true, force: true });
    };
    // Ctrl-C at any moment stops the cluster and removes the temp folder.
    const signal = untilSignal();
    const servers: DemoServer[] = [];
    const targetChildren: Child[] = [];
    const startTarget = async (i: number, listen: string) => {
      const s = servers[i]!;
      const child = spawn(`target${i + 1}`, ["target", "serve", "--drive", s.drive_path, "--listen", listen, "--name", s.name], log);
      children.push(child);
      targetChildren[i] = child;
      s.address = (await waitFor(child, /target ready on (\S+)/))[1]!;
    };
    const tomas = await DemoTomas.plan(
      Array.from({ length: nTargets }, (_, i) => `server${i + 1}`),
      () => servers.map((s) => s.address),
      (i) => targetChildren[i]?.proc.exitCode === null && targetChildren[i]?.proc.signalCode === null,
      serverKey,
      log,
      (c) => children.push(c),
    );
    let client: Child | null = null;
    // The last status lines printed (the live view prints them again only when they change).
    let [lastTomas, last] = ["", ""];
    let runDir = "";
    let demoUri = "";
    let mirrorUri = "";
    const script = async () => {
      consola.start(`a ${nTargets}-server cluster on files in ${dir}`);
      for (let t = 1; t <= nTargets; t++) {
        const path = `${dir}/server${t}-drive1.img`;
        await Bun.write(path, "");
        await Bun.$`truncate -s ${driveSize} ${path}`.quiet();
        const out = await run(["drive", "format", path, "-o", "json"]);
        const sb = JSON.parse(out) as { drive_uuid: string; data_offset: number };
        servers.push({ name: `server${t}`, drive_path: path, drive_uuid: sb.drive_uuid, data_offset: sb.data_offset, address: "" });
        await startTarget(t - 1, "127.0.0.1:0");
        consola.success(`server${t}: target on ${servers[t - 1]!.address} serving drive ${sb.drive_uuid} (${formatBytes(driveSize)})`);
      }
      // A TOMA on every server, each given its own target and every TOMA's address: they found
      // the cluster together, elect a leader, and keep their state on their own drives.
      for (let i = 0; i < nTargets; i++) await tomas.start(i);
      const first = await tomas.agreed();
      consola.success(
        `TOMA cluster of ${nTargets}: ${tomas.names.map((n, i) => `${n} on ${tomas.addresses[i]}`).join(", ")}; ` +
          `cluster ${first.views[0]!.cluster_uuid} founded on the drives themselves, leader ${tomas.names[first.index]} in term ${first.term}`,
      );
      // Each TOMA reports its own drives to the leader, which takes them into the pool.
      const deadline = performance.now() + 60_000;
      while ((await (await tomas.leaderApi()).drives().catch(() => [])).filter((d) => d.member).length < nTargets) {
        if (performance.now() > deadline) throw new Error(`the leader did not take every drive into the pool within 60 s`);
        await Bun.sleep(200);
      }
      runDir = `${dir}/run`;
      client = spawn("client", ["client", "serve", "-m", tomas.addresses.join(","), "--run-dir", runDir, "--key-file", clientKeyFile], log);
      children.push(client);
      await waitFor(client, /client ready/);
      consola.success("client daemon ready, given every TOMA: it is served by the leader, whichever that is");

      const attach = async (volume: string) => (await run(["client", "attach", "--volume", volume, "--run-dir", runDir])).trim().split("\n").pop()!;
      // Created by the leader; a TOMA that is not (leadership may move) names it, and we go there.
      const vol = await atLeader({ management: first.address }, (t) => t.createVolume({ name: "demo", capacity_bytes: capacity, raid_level: "0", stripe_width: nTargets }));
      consola.success(`volume demo: ${formatBytes(vol.capacity_bytes)} RAID0 striped over ${vol.columns.length} drives, ${vol.stripe_size_bytes / 1024}K stripe unit`);
      demoUri = await attach("demo");
      consola.success(`attached: ${demoUri}`);

      const socket = demoUri.replace(/^.*socket=/, "");
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

      if (mirrorCapacity > 0 && nTargets < 3) {
        consola.info("the mirror act needs 3 servers (the TOMA cluster needs a majority of its TOMAs up while a server is dead): skipped");
      } else if (mirrorCapacity > 0) {
        mirrorUri = await mirrorAct({
          tomas,
          servers,
          killTarget: async (i) => {
            targetChildren[i]!.proc.kill("SIGKILL");
            await targetChildren[i]!.proc.exited;
          },
          startTarget: (i) => startTarget(i, servers[i]!.address),
          clientOutput: () => client!.output,
          attach,
          capacity_bytes: mirrorCapacity,
        });
      }
      lastTomas = await tomas.statusLine();
      consola.info(lastTomas);
      last = await volumesLine();
      consola.info(last);
    };
    /** The drives and volumes as the leader sees them. */
    const volumesLine = async () => {
      const api = await tomas.leaderNow();
      if (api === null) throw new Error("no TOMA says it leads now (an election may be under way)");
      const [c, vs] = await Promise.all([api.cluster(), api.volumes()]);
      return `drives ${c.drives.ok} ok, ${c.drives.missing} missing · ${vs.map((v) => `${v.name} ${v.state}`).join(", ")} · ${formatBytes(c.capacity.used_bytes)} of ${formatBytes(c.capacity.total_bytes)} used`;
    };
    try {
      const stopped = await Promise.race([script().then(() => null), signal]);
      if (stopped !== null || args.exit) {
        consola.start(`${stopped ?? "done"}: stopping the client, the TOMAs and the targets`);
        await cleanup();
        consola.success("cluster stopped and cleaned up");
        // Stopped in the middle, the script's loops are still pending: they must not keep us.
        process.exit(0);
      }
    } catch (e) {
      if (log.length) consola.log(`last daemon output:\n${log.slice(-20).join("\n")}`);
      await cleanup();
      throw e;
    }

    const self = selfCommand().join(" ");
    const uris = [`  ${demoUri}   (striped)`, ...(mirrorUri ? [`  ${mirrorUri}   (mirrored)`] : [])];
    consola.box(
      [
        "The volumes are NBD exports:",
        ...uris,
        "",
        `  nbdinfo '${demoUri}'`,
        `  qemu-io -f raw -c 'read -v 0 512' '${demoUri}'`,
        `  mkdir -p ${dir}/fuse && nbdfuse ${dir}/fuse '${demoUri}' &`,
        `  losetup -f --show ${dir}/fuse/nbd   # then mkfs.ext4 and mount the loop device`,
        "",
        `  export NVMESH_MANAGEMENT=${tomas.addresses[0]} NVMESH_KEY_FILE=${keyFile}`,
        `  ${self} cluster status   # any TOMA answers: ${tomas.addresses.join(", ")}`,
        `  ${self} volume show ${mirrorUri ? "mirror" : "demo"}`,
        "",
        "Ctrl-C stops the cluster and removes the temp folder.",
      ].join("\n"),
    );

    // Live: print the TOMA cluster and the cluster's state whenever they change.
    let busy = false;
    const watch = setInterval(async () => {
      if (busy) return;
      busy = true;
      const t = await tomas.statusLine();
      if (t !== lastTomas) consola.info(t);
      lastTomas = t;
      try {
        const line = await volumesLine();
        if (line !== last) consola.info(line);
        last = line;
      } catch (e) {
        const line = `cannot read the volumes from the leader: ${(e as Error).message}`;
        if (line !== last) consola.warn(line);
        last = line;
      }
      busy = false;
    }, 1000);
    await signal;
    clearInterval(watch);
    // Ctrl-C reached every child too; each stops cleanly on its own (the client flushes first).
    consola.start("stopping the client, the TOMAs and the targets");
    await cleanup();
    consola.success("cluster stopped and cleaned up");
    // Leftover timers (the cleanup's own, the HTTP client's) must not hold the shell prompt back.
    process.exit(0);
  },
});
