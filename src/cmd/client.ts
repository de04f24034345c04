/** `nvmesh client serve|attach|detach|show`: the per-host client daemon and its control. */
import { accessSync, constants, mkdirSync } from "node:fs";
import { hostname } from "node:os";
import { consola } from "consola";
import { tomaLinkOver } from "../engine/client/toma-link.ts";
import { homedCall } from "../toma/homing.ts";
import { ManagementSigner } from "../toma/api-auth.ts";
import { ClientDaemon } from "../engine/client/daemon.ts";
import { type EvilSwitch, parseEvil } from "../engine/client/debug-evil.ts";
import { ExportRegistry } from "../engine/nbd/exports.ts";
import { NbdServer } from "../engine/nbd/server.ts";
import { realEnv } from "../engine/runtime/real-env.ts";
import { openSession, sessionOver } from "../engine/wire/session.ts";
import { viaLocalTarget } from "../engine/client/local-target.ts";
import { viaRdma } from "../engine/client/rdma-upgrade.ts";
import { realRdma } from "../engine/runtime/rdma-net.ts";
import type { OpenSession } from "../engine/client/target-pool.ts";
import type { FrameLink } from "../engine/net/frame-link.ts";
import type { HelloRequest } from "../engine/wire/control.ts";
import { type TomaClient, tomaClient } from "../toma/api-client.ts";
import { formatBytes, listenAddress, managementAddress, parseDuration, parsePositiveInt, repeated, UsageError } from "./args.ts";
import { payloadBudget, payloadBudgetArg, preauthArgs, preauthLimits } from "./limit-args.ts";
import { DEFAULT_NBD_LIMITS } from "../engine/nbd/server.ts";
import { DEFAULT_TARGET_PREAUTH } from "../engine/target/service.ts";
import { driveIoArg, driveIoMode, hostTarget } from "./target-host.ts";
import { DEFAULT_TARGET_PORT } from "./target.ts";
import { KernelNbdBindings, NBD_DEVICE, prepareKernelNbd } from "./kernel-nbd.ts";
import { type Attachment, control, daemonAnswers, runDir, serveControl } from "./client-control.ts";
import { command, untilSignal } from "./command.ts";
import { outputArg, outputFormat, printJson, printTable } from "./output.ts";
import { management, volumeName } from "./volume.ts";
import { daemonKey, insecureArg, serverKeyBytes } from "./key-file.ts";
import { asClientKey } from "../engine/wire/cluster-key.ts";

const runDirArg = {
  "run-dir": { type: "string" as const, description: "sockets directory (default /run/nvmesh, or NVMESH_RUN_DIR)" },
};

/**
 * TEST-ONLY: NVMESH_EVIL=kind[:every=N] makes this daemon corrupt its writes to debug-format
 * volumes (src/engine/client/debug-evil.ts), refused unless NVMESH_TEST_EVIL=1 says that this is a
 * test. Not a flag on purpose: it never shows in --help.
 */
function evilFromEnv(): EvilSwitch | null {
  const spec = process.env.NVMESH_EVIL;
  if (spec === undefined || spec === "") return null;
  if (process.env.NVMESH_TEST_EVIL !== "1") {
    throw new UsageError("NVMESH_EVIL is a test-only switch that corrupts data: refused without NVMESH_TEST_EVIL=1");
  }
  const sw = parseEvil(spec);
  if (typeof sw === "string") throw new UsageError(`NVMESH_EVIL: ${sw}`);
  return sw;
}

/** Creates the run directory, or says why it cannot be and what to do. */
function makeRunDir(dir: string): void {
  try {
    mkdirSync(dir, { recursive: true });
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const why =
      code === "EACCES" || code === "EROFS" || code === "EPERM" ? "permission denied"
      : code === "ENOTDIR" ? "a part of its path is a file"
      : code === "ENOENT" ? "its parent cannot hold directories"
      : (e as Error).message;
    throw new Error(`cannot create the run directory ${dir}: ${why}; run as root, or choose another --run-dir (or NVMESH_RUN_DIR)`);
  }
  try {
    accessSync(dir, constants.W_OK);
  } catch {
    throw new Error(`cannot use the run directory ${dir}: this user may not write in it; run as root, or choose another --run-dir (or NVMESH_RUN_DIR)`);
  }
}

const serve = command({
  meta: { name: "serve", description: "run the client daemon of this host" },
  args: {
    ...management,
    management: { ...management.management, description: "the TOMA(s), HOST:PORT; several comma-separated, to re-home when one dies (or NVMESH_MANAGEMENT)" },
    ...insecureArg,
    ...runDirArg,
    "io-timeout": { type: "string", description: "how long I/O waits for an unreachable drive before EIO", default: "30s" },
    name: { type: "string", description: "client name (default: host name)" },
    drive: {
      type: "string",
      description: "also serve this drive as this host's target, in this process: its I/O then skips the network (repeat for several)",
    },
    "target-listen": { type: "string", description: "with --drive: HOST:PORT the target listens on", default: `0.0.0.0:${DEFAULT_TARGET_PORT}` },
    "target-name": { type: "string", description: "with --drive: target name (default: host name)" },
    ...driveIoArg,
    ...payloadBudgetArg,
    "handshake-timeout": { type: "string", description: "close an NBD client that has not finished its handshake after this long", default: "10s" },
    "max-handshakes": { type: "string", description: "NBD connections in their handshake at once; more are refused (logged)" },
    ...preauthArgs,
  },
  repeatable: ["drive"],
  async run({ args, rawArgs }) {
    // One TOMA or several (comma-separated): the daemon homes on the one that serves clients.
    const mgmts = (args.management ?? process.env.NVMESH_MANAGEMENT ?? "").split(",").map((a) => a.trim()).filter((a) => a !== "");
    const homes = (mgmts.length === 0 ? [undefined] : mgmts).map((a) => managementAddress(a));
    const mgmt = homes.join(",");
    const dir = runDir(args["run-dir"]);
    const io_timeout_ms = parseDuration(args["io-timeout"], "--io-timeout");
    const evil = evilFromEnv();
    if (evil) consola.warn(`TEST-ONLY evil switch ${evil.kind} (every ${evil.every}): this client corrupts its debug-format writes`);
    const paths = repeated(rawArgs, "drive");
    if (paths.length === 0 && rawArgs.some((a) => a.startsWith("--target-"))) {
      throw new UsageError("--target-listen and --target-name go with --drive: add the drives this host serves, or drop them");
    }
    if (await daemonAnswers(dir)) {
      throw new Error(`a client daemon runs already with the run directory ${dir}: stop it first, or give this one another --run-dir`);
    }
    makeRunDir(dir);
    const what = paths.length === 0 ? "the client daemon" : "the client daemon with its host's target (--drive)";
    const key = daemonKey(args, what, false);
    // Serving drives takes the server key; the daemon's own requests use the client key below.
    const target_key = paths.length === 0 ? null : serverKeyBytes(key, "serving drives (--drive)");
    const env = realEnv("client");
    const exports = new ExportRegistry();
    const nbd = new NbdServer(env, exports, {
      payload_budget_bytes: payloadBudget(args) ?? DEFAULT_NBD_LIMITS.payload_budget_bytes,
      handshake_timeout_ms: parseDuration(args["handshake-timeout"], "--handshake-timeout"),
      max_handshakes: parsePositiveInt(args["max-handshakes"], "--max-handshakes") ?? DEFAULT_NBD_LIMITS.max_handshakes,
    });
    const target = paths.length === 0 ? null : await hostTarget(realEnv("target"), {
      paths,
      listen: listenAddress(args["target-listen"], "--target-listen"),
      name: args["target-name"] ?? hostname(),
      cluster_key: target_key,
      io: driveIoMode(args["drive-io"]),
      limits: { preauth: preauthLimits(args, DEFAULT_TARGET_PREAUTH) },
    });
    // A client is a client even on a server: it proves the client key, and is fenced like any.
    const cluster_key = key === null ? null : asClientKey(key);
    // A call held by the TOMA (a watch, 3 s) answers well within this; a paused or dead TOMA does
    // not, and the daemon moves on to the next TOMA only once it gives up: what a leader pause costs.
    const signer = new ManagementSigner(cluster_key);
    const clients = new Map<string, TomaClient>();
    const clientOf = (a: string) => clients.get(a) ?? clients.set(a, tomaClient(a, { signer, timeout_ms: 10_000 })).get(a)!;
    const homing = homedCall(env, homes, (a, method, path, body) => clientOf(a).call(method, path, body));
    if (target) consola.success(`target ready on ${target.address}`);
    const open: OpenSession = (e, address, hello) => openSession(e, address, hello, { cluster_key });
    const over = (e: typeof env, link: FrameLink, address: string, hello: HelloRequest) => sessionOver(e, link, address, hello, { cluster_key });
    // The target in this process first (no wire at all), then RDMA where the target offers it.
    const local = target ? viaLocalTarget(open, { serving: target.service.serving, connect: target.connect }, over) : open;
    const daemon = new ClientDaemon(env, {
      toma: tomaLinkOver(homing.call),
      openSession: viaRdma(local, realRdma, over),
      nbd,
      exports,
      socket_dir: dir,
      client_name: args.name ?? hostname(),
      io_timeout_ms,
      evil,
    });
    const kernel = new KernelNbdBindings();
    const ctl = serveControl(dir, daemon, kernel);
    consola.success(`client ready: control socket ${ctl.path}, TOMA ${mgmt}`);
    // A wrong -m or key shows at once, not at the first attach (the TOMA may also just be late).
    clientOf(homes[0]!).cluster().catch((e: Error) => consola.warn(`no volume can be attached until this is fixed: ${e.message}`));
    const sig = await untilSignal();
    consola.info(`${sig}: detaching volumes`);
    ctl.stop();
    // Nothing serves a bound /dev/nbdN once we are gone: disconnect it rather than leave it dangling.
    await kernel.unbindAll((msg) => consola.warn(msg));
    homing.stop();
    await daemon.close();
    await nbd.close();
    await target?.stop();
    process.exit(0);
  },
});

const attach = command({
  meta: { name: "attach", description: "attach a volume; prints its NBD URI once I/O is enabled" },
  args: {
    volume: { type: "string", description: "volume name", required: true },
    "nbd-tcp": { type: "string", description: "export on TCP HOST:PORT instead of a unix socket" },
    "nbd-device": { type: "string", description: "bind to a kernel /dev/nbdN (where the kernel has nbd)" },
    "export-list": { type: "string", description: "other attached volumes this listener offers too (comma-separated); by default it serves this volume only" },
    "socket-mode": { type: "string", description: "permissions of the unix socket (octal, default 0600: its owner only)" },
    "socket-group": { type: "string", description: "group of the unix socket (a name or a number)" },
    ...runDirArg,
    ...outputArg,
  },
  async run({ args }) {
    const mode = args["socket-mode"];
    if (mode !== undefined && !/^0?[0-7]{3}$/.test(mode)) throw new UsageError(`--socket-mode '${mode}' is not an octal mode such as 0600 or 0660`);
    if ((mode !== undefined || args["socket-group"] !== undefined) && args["nbd-tcp"] !== undefined) {
      throw new UsageError("--socket-mode and --socket-group apply to the unix socket export; drop --nbd-tcp");
    }
    const exportList = args["export-list"]?.split(",").map((n) => n.trim()).filter((n) => n !== "");
    const fmt = outputFormat(args.output);
    volumeName(args.volume);
    const device = args["nbd-device"];
    if (device !== undefined) {
      if (!NBD_DEVICE.test(device)) throw new UsageError(`--nbd-device '${device}' is not an nbd device path (expected /dev/nbdN)`);
      if (args["nbd-tcp"] !== undefined) throw new UsageError("--nbd-device uses the unix socket export; drop --nbd-tcp");
      // The driver is loaded if need be, and what this host lacks is said here, daemon or not.
      const problem = await prepareKernelNbd(device);
      if (problem) throw new Error(`cannot bind ${device}: ${problem}`);
    }
    const nbd_tcp = args["nbd-tcp"] === undefined ? undefined : listenAddress(args["nbd-tcp"], "--nbd-tcp");
    // The client daemon binds the device (and unbinds it on detach and at its shutdown).
    const a = await control<Attachment>(runDir(args["run-dir"]), "POST", "/v1/attach", {
      volume: args.volume,
      ...(nbd_tcp ? { nbd_tcp } : {}),
      ...(device !== undefined ? { nbd_device: device } : {}),
      ...(exportList !== undefined ? { export_list: exportList } : {}),
      ...(mode !== undefined ? { socket_mode: Number.parseInt(mode, 8) } : {}),
      ...(args["socket-group"] !== undefined ? { socket_group: args["socket-group"] } : {}),
    });
    if (fmt === "json") return printJson(a);
    if (a.nbd_device) consola.success(`volume ${a.volume} bound to ${a.nbd_device}`);
    consola.success(`volume ${a.volume} attached (${formatBytes(a.capacity_bytes)})`);
    process.stdout.write(`${a.uri}\n`);
  },
});

const detach = command({
  meta: { name: "detach", description: "detach a volume: disconnects its /dev/nbdN if bound, flushes, then closes its export" },
  args: {
    volume: { type: "string", description: "volume name", required: true },
    "nbd-device": { type: "string", description: "the /dev/nbdN the volume must be bound to (checked)" },
    ...runDirArg,
  },
  async run({ args }) {
    volumeName(args.volume);
    const device = args["nbd-device"];
    if (device !== undefined && !NBD_DEVICE.test(device)) throw new UsageError(`--nbd-device '${device}' is not an nbd device path (expected /dev/nbdN)`);
    await control(runDir(args["run-dir"]), "POST", "/v1/detach", { volume: args.volume, ...(device !== undefined ? { nbd_device: device } : {}) });
    consola.success(`volume ${args.volume} detached`);
  },
});

const show = command({
  meta: { name: "show", description: "volumes attached on this host" },
  args: { ...runDirArg, ...outputArg },
  async run({ args }) {
    const fmt = outputFormat(args.output);
    const list = await control<Attachment[]>(runDir(args["run-dir"]), "GET", "/v1/attachments");
    if (fmt === "json") return printJson(list);
    printTable(list.map((a) => ({ volume: a.volume, capacity: formatBytes(a.capacity_bytes), raid: a.raid_level, drives: a.drives, uri: a.uri, device: a.nbd_device ?? "-" })));
    // Each target session, with the transport it uses and why.
    const sessions = list.flatMap((a) => (a.sessions ?? []).map((s) => ({ volume: a.volume, target: s.target, transport: s.transport ?? "not connected" })));
    if (sessions.length > 0) printTable(sessions);
  },
});

export const clientCommand = command({
  meta: { name: "client", description: "the client daemon: volumes as NBD exports on this host" },
  subCommands: { serve, attach, detach, show },
});

