/** `nvmesh target serve|show`: serve this server's drives; list the cluster's targets. */
import { hostname } from "node:os";
import { consola } from "consola";
import { FileStore } from "../engine/runtime/file-store.ts";
import type { FormattedDrive } from "../engine/drive/formatted-api.ts";
import { openDrive } from "../engine/drive/formatted-drive.ts";
import { realEnv } from "../engine/runtime/real-env.ts";
import { TargetService } from "../engine/target/service.ts";
import { listenAddress, repeated, UsageError } from "./args.ts";
import { command, untilSignal } from "./command.ts";
import { outputArg, outputFormat, printJson, printTable } from "./output.ts";
import { management, toma } from "./volume.ts";
import { clusterKey, keyFileArg, warnNoKey } from "./key-file.ts";

export const DEFAULT_TARGET_PORT = 4420;

const serve = command({
  meta: { name: "serve", description: "serve local drives to clients and the TOMA" },
  args: {
    drive: { type: "string", description: "drive file or block device (repeat for several)", required: true },
    listen: { type: "string", description: "HOST:PORT to listen on", default: `0.0.0.0:${DEFAULT_TARGET_PORT}` },
    name: { type: "string", description: "target name (default: host name)" },
    ...keyFileArg,
  },
  async run({ args, rawArgs }) {
    const cluster_key = clusterKey(args["key-file"]);
    const paths = repeated(rawArgs, "drive");
    if (paths.length === 0) throw new UsageError("at least one --drive is required");
    if (new Set(paths).size !== paths.length) throw new UsageError("the same --drive was given twice");
    const listen = listenAddress(args.listen);
    const env = realEnv("target");
    const drives: FormattedDrive[] = [];
    for (const path of paths) {
      try {
        const store = await FileStore.open(path, { log: env.log });
        try {
          drives.push(await openDrive(store, path));
        } catch (e) {
          await store.close();
          throw e;
        }
      } catch (e) {
        // One bad drive must not take the others offline: report it loudly and serve the rest.
        consola.error(`drive ${path}: ${(e as Error).message}`);
      }
    }
    if (drives.length === 0) throw new Error("no usable drive: nothing to serve");
    const service = new TargetService(env, { name: args.name ?? hostname(), drives, fencing: true, cluster_key });
    if (cluster_key === null) warnNoKey(`the target on ${listen}`);
    const listener = await env.net.listen(listen, (conn) => service.handle(conn));
    for (const d of drives) consola.info(`serving drive ${d.info.drive_uuid} (${d.info.path}, ${d.info.extent_count} extents)`);
    consola.success(`target ready on ${listener.address}`);
    const sig = await untilSignal();
    consola.info(`${sig}: stopping target`);
    listener.close();
    for (const d of drives) await d.close().catch((e) => consola.warn(`closing ${d.info.path}: ${e}`));
    process.exit(0);
  },
});

const show = command({
  meta: { name: "show", description: "list the targets the TOMA knows" },
  args: {
    ...management,
    ...outputArg,
  },
  async run({ args }) {
    const fmt = outputFormat(args.output);
    const targets = await toma(args).targets();
    if (fmt === "json") return printJson(targets);
    printTable(targets as unknown as Record<string, unknown>[]);
  },
});

export const targetCommand = command({
  meta: { name: "target", description: "serve drives (the data path's server side)" },
  subCommands: { serve, show },
});
