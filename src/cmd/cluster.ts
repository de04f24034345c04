/** `nvmesh cluster status`, and the cluster's keys: `cluster genkey`, `cluster client-key`. */
import { TomaApiError } from "../toma/api-client.ts";
import { UsageError, formatBytes } from "./args.ts";
import { command } from "./command.ts";
import { outputArg, outputFormat, printJson, printKeyValues, printTable } from "./output.ts";
import { management, toma } from "./volume.ts";
import { DEFAULT_KEY_FILE, clusterKey, generateKeyFile, keyFileArg, writeClientKeyFile } from "./key-file.ts";
import { consola } from "consola";

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
      targets: `${cluster.targets.up} up, ${cluster.targets.down} down`,
      drives: `${cluster.drives.ok} ok, ${cluster.drives.missing} missing, ${cluster.drives.foreign} foreign, ${cluster.drives.error} error`,
      capacity: `${formatBytes(cluster.capacity.used_bytes)} used of ${formatBytes(cluster.capacity.total_bytes)}`,
      volumes: cluster.volumes,
    });
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

export const clusterCommand = command({
  meta: { name: "cluster", description: "cluster-wide status, the cluster's keys" },
  subCommands: { status, genkey, "client-key": clientKey },
});
