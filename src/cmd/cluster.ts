/** `nvmesh cluster status`. */
import { TomaApiError } from "../toma/api-client.ts";
import { formatBytes } from "./args.ts";
import { command } from "./command.ts";
import { outputArg, outputFormat, printJson, printKeyValues, printTable } from "./output.ts";
import { management, toma } from "./volume.ts";
import { generateKeyFile } from "./key-file.ts";
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
  meta: { name: "genkey", description: "write a new cluster key (give the file to every target, TOMA, client and admin)" },
  args: {
    out: { type: "string", description: "file to write (mode 600), e.g. /etc/nvmesh/cluster.key", required: true },
    force: { type: "boolean", description: "replace an existing file", default: false },
  },
  run({ args }) {
    generateKeyFile(args.out, args.force);
    consola.success(`cluster key written to ${args.out}: copy it to every server and client (same path, or --key-file / NVMESH_KEY_FILE)`);
  },
});

export const clusterCommand = command({
  meta: { name: "cluster", description: "cluster-wide status, the cluster key" },
  subCommands: { status, genkey },
});
