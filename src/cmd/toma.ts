/** `nvmesh toma run`: the topology manager and the management API of this server. */
import { TOMA_ID_RE } from "../toma/consensus/hard-state-record.ts";
import { hostname } from "node:os";
import { consola } from "consola";
import { parseAddress } from "../engine/net/conn.ts";
import { realEnv } from "../engine/runtime/real-env.ts";
import { listenFailure } from "../engine/runtime/real-net.ts";
import { managementApi } from "../toma/api.ts";
import { serveTomaApi, type TomaHttpServer } from "../toma/runtime/http-server.ts";
import { Toma } from "../toma/toma.ts";
import { viaRdma } from "../engine/client/rdma-upgrade.ts";
import { realRdma } from "../engine/runtime/rdma-net.ts";
import { openSession, sessionOver } from "../engine/wire/session.ts";
import { listenAddress, repeated, UsageError } from "./args.ts";
import { command, untilSignal } from "./command.ts";
import { daemonKey, insecureArg, keyFileArg } from "./key-file.ts";
import { DEFAULT_HTTP_LIMITS, type HttpLimits } from "../toma/http-conn.ts";
import { type TomaClient, tomaClient } from "../toma/api-client.ts";
import { clusterMemberApi, DRIVE_REPORT_PATH, IDENTITY_PATH, RAFT_PATH } from "../toma/cluster/cluster-api.ts";
import { parseIdentity } from "../toma/cluster/identity.ts";
import { ClusterMember } from "../toma/cluster/member.ts";
import type { Connect } from "../toma/target-link.ts";
import type { RebuildConnect } from "../toma/cluster/rebuild-runner.ts";
import { preauthArgs, preauthLimits } from "./limit-args.ts";

export const DEFAULT_TOMA_PORT = 4000;

const run = command({
  meta: { name: "run", description: "run the topology manager and its management API" },
  args: {
    listen: { type: "string", description: "management API HOST:PORT", default: `0.0.0.0:${DEFAULT_TOMA_PORT}` },
    target: { type: "string", description: "a target HOST:PORT to manage (repeat for several)", required: true },
    name: { type: "string", description: "TOMA name (default: host name)" },
    cluster: { type: "string", description: "cluster UUID to adopt when drives of several clusters are found" },
    peers: {
      type: "string",
      description:
        "every TOMA's management HOST:PORT, this one's included, comma-separated, the same list on every founding server: run as a member of a TOMA cluster (so far: leader election, the replicated log and membership changes only). " +
        "A server joining an existing cluster names itself and at least one member, and waits for 'nvmesh cluster server add'",
    },
    ...keyFileArg,
    ...insecureArg,
    ...preauthArgs,
  },
  repeatable: ["target"],
  async run({ args, rawArgs }) {
    const cluster_key = daemonKey(args, `the TOMA and its management API on ${args.listen}`, true)?.key ?? null;
    const targets = repeated(rawArgs, "target").map((t) => listenAddress(t, "--target"));
    if (targets.length === 0) throw new UsageError("at least one --target is required");
    const twice = targets.find((t, i) => targets.indexOf(t) !== i);
    if (twice !== undefined) throw new UsageError(`--target ${twice} is given twice: give each target once`);
    if (args.cluster !== undefined && !/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/.test(args.cluster)) {
      throw new UsageError(`invalid --cluster '${args.cluster}': give the cluster's uuid, as 'nvmesh cluster status' shows it`);
    }
    const listen = parseAddress(listenAddress(args.listen));
    if ("unix" in listen) throw new UsageError(`invalid --listen '${args.listen}': the management API listens on HOST:PORT (e.g. 0.0.0.0:${DEFAULT_TOMA_PORT}), not a unix socket`);
    const env = realEnv("toma");
    const name = args.name ?? hostname();
    const hello = { version: 1 as const, role: "toma" as const, name };
    const keyed = { cluster_key: cluster_key === null ? null : { kind: "server" as const, key: cluster_key } };
    // Over RDMA where a target offers it, as the clients do (target show says which and why).
    const open = viaRdma(
      (e, address, h) => openSession(e, address, h, keyed),
      realRdma,
      (e, link, address, h) => sessionOver(e, link, address, h, keyed),
    );
    if (args.peers !== undefined) {
      if (args.cluster !== undefined) throw new UsageError("--cluster chooses among single-TOMA cluster states on the drives; a TOMA cluster (--peers) founds or finds its own");
      // The leader's own sessions to every server's target go under another name: they must not
      // supersede this TOMA's sessions to its own target, which write its hard state.
      const leaderHello = { ...hello, name: `${name}/leader` };
      return await runMember({
        name,
        targets,
        peers: args.peers,
        listen,
        listenText: args.listen,
        cluster_key,
        connect: (address) => open(env, address, hello),
        control_connect: (address) => open(env, address, leaderHello),
        // Each rebuild copy the leader hands to this TOMA under a name of its own (rebuild-runner.ts).
        rebuild_connect: (address, tag) => open(env, address, { ...hello, name: `${name}/rebuild/${tag}` }),
        limits: preauthLimits(args, DEFAULT_HTTP_LIMITS),
      });
    }
    const toma = new Toma(env, { name, targets, cluster_uuid: args.cluster, cluster_key, connect: (address) => open(env, address, hello) });
    const limits = preauthLimits(args, DEFAULT_HTTP_LIMITS);
    let http: TomaHttpServer;
    try {
      http = await serveTomaApi(managementApi(env, toma, cluster_key), { hostname: listen.host, port: listen.port, env: realEnv("toma-api"), limits });
    } catch (e) {
      throw new Error(listenFailure(args.listen, e));
    }
    // Started only once its API could listen: a TOMA that cannot serve must not touch the targets.
    toma.start();
    const addr = `${listen.host === "0.0.0.0" ? "127.0.0.1" : listen.host}:${http.port}`;
    consola.info(`management API on ${addr}; waiting for the cluster state`);
    let stopped = false;
    const stop = untilSignal().then(async (sig) => {
      stopped = true;
      consola.info(`${sig}: stopping TOMA`);
      await http.stop();
      await toma.stop();
      process.exit(0);
    });
    // Report progress until the state is recovered from a majority of drives.
    while (!stopped) {
      try {
        await toma.whenReady(5000);
        break;
      } catch {
        consola.warn(`TOMA not ready yet: ${toma.readiness()}${unreachableTargets(toma)}`);
      }
    }
    if (!stopped) consola.success(`toma ready on ${addr} (cluster ${toma.cluster_uuid})`);
    await stop;
  },
});

/**
 * `toma run --peers`: this TOMA as a member of a TOMA cluster (src/toma/cluster/). It founds the
 * cluster with its peers, takes part in elections, keeps its hard state on its own target's drives;
 * it claims and reports its own drives; when it leads, it creates and deletes volumes, runs the
 * mirror control and serves the client daemons.
 */
async function runMember(o: {
  name: string;
  targets: string[];
  peers: string;
  listen: { host: string; port: number };
  listenText: string;
  cluster_key: Uint8Array | null;
  connect: Connect;
  control_connect: Connect;
  rebuild_connect: RebuildConnect;
  limits: Partial<HttpLimits>;
}): Promise<void> {
  if (!TOMA_ID_RE.test(o.name)) {
    throw new UsageError(`TOMA name '${o.name}' is not usable in a TOMA cluster: give --name with 1 to 64 of [A-Za-z0-9._-]`);
  }
  const peers = o.peers.split(",").map((p) => p.trim()).filter((p) => p !== "").map((p) => listenAddress(p, "--peers"));
  if (peers.length === 0) throw new UsageError("--peers needs at least this TOMA's own HOST:PORT");
  const twice = peers.find((p, i) => peers.indexOf(p) !== i);
  if (twice !== undefined) throw new UsageError(`--peers lists ${twice} twice: give each TOMA once`);
  if (peers.length < 3) {
    consola.warn(
      peers.length === 1
        ? "if this founds a TOMA cluster, a cluster of one cannot survive the loss of its server (joining an existing cluster: ignore this)"
        : "if this founds a TOMA cluster, a cluster of two needs both TOMAs up to elect a leader: it survives the loss of no server; 3 or more survive one (joining an existing cluster: ignore this)",
    );
  }
  const key = o.cluster_key === null ? null : { kind: "server" as const, key: o.cluster_key };
  const clients = new Map<string, TomaClient>();
  const client = (address: string) => {
    let c = clients.get(address);
    if (!c) clients.set(address, (c = tomaClient(address, { key, timeout_ms: 3000 })));
    return c;
  };
  const relays = new Map<string, TomaClient>();
  const relayClient = (address: string) => {
    let c = relays.get(address);
    if (!c) relays.set(address, (c = tomaClient(address, { key, timeout_ms: 8000 })));
    return c;
  };
  const env = realEnv("toma");
  const member = new ClusterMember(env, {
    name: o.name,
    targets: o.targets,
    peers,
    connect: o.connect,
    control_connect: o.control_connect,
    rebuild_connect: o.rebuild_connect,
    post: async (address, bytes) => {
      await client(address).call("POST", RAFT_PATH, { envelope: Buffer.from(bytes).toString("base64") });
    },
    ask: async (address) => parseIdentity(await client(address).call("GET", IDENTITY_PATH), address),
    report: (address, report) => client(address).call("POST", DRIVE_REPORT_PATH, report),
    server_key: o.cluster_key,
    // Shorter than a client daemon's own call (10 s), longer than a held watch (3 s).
    relay: (address, method, path, body) => relayClient(address).call(method, path, body),
  });
  let http: TomaHttpServer;
  try {
    http = await serveTomaApi(clusterMemberApi(env, member, o.cluster_key), { hostname: o.listen.host, port: o.listen.port, env: realEnv("toma-api"), limits: o.limits });
  } catch (e) {
    throw new Error(listenFailure(o.listenText, e));
  }
  member.start();
  const addr = `${o.listen.host === "0.0.0.0" ? "127.0.0.1" : o.listen.host}:${http.port}`;
  consola.info(`management API on ${addr}; TOMA cluster member '${o.name}' with peers ${peers.join(", ")}`);
  let last = "";
  const progress = env.timers.every(1000, () => {
    const v = member.node.view();
    const now = v.phase === "running" ? `${v.role} in term ${v.term}, leader ${v.leader?.address || "(none)"}` : `${v.phase}: ${v.reason ?? ""}`;
    if (now !== last) consola.info(`TOMA cluster: ${now}`);
    last = now;
  });
  const sig = await untilSignal();
  consola.info(`${sig}: stopping TOMA`);
  progress.cancel();
  await http.stop();
  member.stop();
  process.exit(0);
}

/** "; 1 of 3 targets does not answer: 10.0.0.3:4420 (connection refused)", and what to do. */
function unreachableTargets(toma: Toma): string {
  const all = toma.targetViews();
  const down = all.filter((t) => t.state !== "up");
  if (down.length === 0) return "";
  const list = down.map((t) => `${t.address} (${t.last_error ?? "no answer"})`).join(", ");
  const fix = "is 'nvmesh target serve' running there, with the same cluster key?";
  return down.length === all.length
    ? `; no target answers: ${list}: ${fix}`
    : `; ${down.length} of ${all.length} targets do not answer: ${list}: ${fix}`;
}

export const tomaCommand = command({
  meta: { name: "toma", description: "the topology manager" },
  subCommands: { run },
});
