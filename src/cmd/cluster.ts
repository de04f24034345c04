/** `nvmesh cluster status`, and the cluster's keys: `cluster genkey`, `cluster client-key`. */
import { TOMA_ID_RE } from "../toma/consensus/hard-state-record.ts";
import { TomaApiError } from "../toma/api-client.ts";
import type { ServerChangeJson } from "../toma/api-types.ts";
import { UsageError, formatBytes, managementAddress } from "./args.ts";
import { command } from "./command.ts";
import { type OutputFormat, outputArg, outputFormat, printJson, printKeyValues, printTable } from "./output.ts";
import { management, toma } from "./volume.ts";
import { DEFAULT_KEY_FILE, clusterKey, generateKeyFile, keyFileArg, writeClientKeyFile } from "./key-file.ts";
import { consola } from "consola";
import { atLeader } from "./at-leader.ts";

const status = command({
  meta: { name: "status", description: "the cluster at a glance" },
  args: {
    ...management,
    ...outputArg,
  },
  async run({ args }) {
    const fmt = outputFormat(args.output);
    const t = toma(args);
    // A TOMA that is not ready knows no volumes yet, and this is the command that says why.
    const notReady = (e: unknown) => (e instanceof TomaApiError && e.status === 503 ? null : Promise.reject(e));
    const [cluster, targets, volumes] = await Promise.all([t.cluster(), t.targets(), t.volumes().catch(notReady)]);
    if (fmt === "json") return printJson({ cluster, targets, volumes });
    printKeyValues({
      cluster: cluster.cluster_uuid ?? "(none yet)",
      state: cluster.ready ? "ready" : `not ready: ${cluster.readiness}`,
      generation: cluster.generation ?? "-",
      term: cluster.term ?? "-",
      targets: `${cluster.targets.up} up, ${cluster.targets.down} down`,
      drives: `${cluster.drives.ok} ok, ${cluster.drives.missing} missing, ${cluster.drives.foreign} foreign, ${cluster.drives.error} error`,
      capacity: `${formatBytes(cluster.capacity.used_bytes)} used of ${formatBytes(cluster.capacity.total_bytes)}`,
      volumes: cluster.volumes,
    });
    const c = cluster.consensus;
    if (c) {
      process.stdout.write("\n");
      printKeyValues({
        toma: `${c.toma_id} (${c.node_id ?? "no node id yet"}) at ${c.address ?? "?"}`,
        "toma cluster": c.phase === "running" ? `${c.role}, term ${c.term}${c.reason ? ` (${c.reason})` : ""}` : `${c.phase}: ${c.reason ?? ""}`,
        leader: c.leader ? `${c.leader.address || c.leader.node_id}${c.role === "leader" && !c.leader_ready ? " (its first entry not applied yet)" : ""}` : "(none known)",
        log: c.commit === null ? "-" : `commit ${c.commit}, applied ${c.applied}, last ${c.last_index}`,
        "hard state": c.hard_state ? `record ${c.hard_state.seq} on ${c.hard_state.drives.length} drive(s)` : "-",
        membership: c.membership ?? "-",
      });
      for (const w of c.warnings ?? []) consola.warn(w);
      process.stdout.write("\n");
      // Followers exchange Raft messages with the leader only; every TOMA asks every peer about
      // itself each second, which is what "says" shows.
      const byId = new Map(c.peers.map((p) => [p.node_id, p.address]));
      printTable(
        c.peers.map((p) => ({
          peer: p.address,
          node: p.node_id,
          voter: p.voter ? "yes" : "learner",
          says: p.says
            ? `${p.says.role}, term ${p.says.term}, leader ${p.says.leader === null ? "(none)" : p.says.leader === c.node_id ? c.address : (byId.get(p.says.leader) ?? p.says.leader)}`
            : `no answer${p.error ? `: ${p.error}` : ""}`,
          "raft msgs": p.heard_ms_ago === null ? "never" : `${(p.heard_ms_ago / 1000).toFixed(1)} s ago`,
          match: p.match ?? "-",
        })),
      );
    }
    process.stdout.write("\n");
    printTable(targets.map((x) => ({ target: x.address, name: x.target_name, state: x.state, drives: x.drives, error: x.last_error })));
    process.stdout.write("\n");
    if (volumes === null) consola.log("volumes: not known until the TOMA is ready");
    else printTable(volumes.map((v) => ({ volume: v.name, state: v.state, capacity: formatBytes(v.capacity_bytes), generation: v.created_seq })));
  },
});

const genkey = command({
  meta: { name: "genkey", description: "write a new cluster server key (for targets, TOMAs and administrators)" },
  args: {
    out: { type: "string", description: "file to write (mode 600), e.g. /etc/nvmesh/cluster.key", required: true },
    force: { type: "boolean", description: "replace an existing file", default: false },
  },
  run({ args }) {
    generateKeyFile(args.out, args.force);
    consola.success(
      `server key written to ${args.out}: copy it to every target, TOMA and administrator host (same path, or --key-file / NVMESH_KEY_FILE); ` +
        "client hosts get the client key instead: nvmesh cluster client-key",
    );
  },
});

const clientKey = command({
  meta: { name: "client-key", description: "derive the client key (for client hosts) from the server key" },
  args: {
    out: { type: "string", description: "file to write (mode 600), e.g. client.key, to copy to /etc/nvmesh/client.key on client hosts", required: true },
    force: { type: "boolean", description: "replace an existing file", default: false },
    ...keyFileArg,
  },
  run({ args }) {
    const server = clusterKey(args["key-file"]);
    if (server === null) throw new UsageError(`the client key is derived from the server key: --key-file FILE, NVMESH_KEY_FILE or ${DEFAULT_KEY_FILE}`);
    writeClientKeyFile(server, args.out, args.force);
    consola.success(
      `client key written to ${args.out}: copy it to every client host (/etc/nvmesh/client.key, or --key-file / NVMESH_KEY_FILE); ` +
        "it lets a host attach and use volumes, and nothing more",
    );
  },
});

function serverName(name: string): string {
  if (!TOMA_ID_RE.test(name)) throw new UsageError(`invalid server name '${name}': the TOMA's --name, 1 to 64 of [A-Za-z0-9._-]`);
  return name;
}

/** Adding waits for the new TOMA to catch up (up to 30 s) and for each change to commit. */
const MEMBERSHIP_TIMEOUT_MS = 90_000;

function printChange(r: ServerChangeJson, what: string, fmt: OutputFormat): void {
  if (fmt === "json") {
    printJson(r);
    return;
  }
  if (r.changes.length === 0) consola.info(`${what}: nothing to change`);
  for (const c of r.changes) consola.success(c);
  consola.log(`configuration: ${r.describe}`);
  if (r.leader_removed) consola.info("the leader removed itself: the remaining TOMAs elect a new leader");
  for (const w of r.warnings) consola.warn(w);
}

const serverAdd = command({
  meta: { name: "add", description: "add a server's TOMA to the TOMA cluster (a learner until it caught up, then a voter)" },
  args: {
    address: { type: "positional", description: "the new TOMA's management HOST:PORT", required: true },
    name: { type: "string", description: "the new TOMA's --name", required: true },
    ...management,
    ...outputArg,
  },
  async run({ args }) {
    const fmt = outputFormat(args.output);
    const address = managementAddress(args.address);
    const name = serverName(args.name);
    printChange(await atLeader(args, (t) => t.addServer(name, address), MEMBERSHIP_TIMEOUT_MS), `add ${name}`, fmt);
  },
});

const serverRemove = command({
  meta: { name: "remove", description: "remove a server's TOMA from the TOMA cluster (never the last voter)" },
  args: {
    name: { type: "positional", description: "the TOMA's --name", required: true },
    ...management,
    ...outputArg,
  },
  async run({ args }) {
    const fmt = outputFormat(args.output);
    const name = serverName(args.name);
    printChange(await atLeader(args, (t) => t.removeServer(name), MEMBERSHIP_TIMEOUT_MS), `remove ${name}`, fmt);
  },
});

const server = command({
  meta: { name: "server", description: "membership of the TOMA cluster (toma run --peers)" },
  subCommands: { add: serverAdd, remove: serverRemove },
});

export const clusterCommand = command({
  meta: { name: "cluster", description: "cluster-wide status, membership, the cluster's keys" },
  subCommands: { status, server, genkey, "client-key": clientKey },
});
