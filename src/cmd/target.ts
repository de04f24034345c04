/** `nvmesh target serve|show`: serve this server's drives; list the cluster's targets. */
import { hostname } from "node:os";
import { consola } from "consola";
import { realEnv } from "../engine/runtime/real-env.ts";
import { listenAddress, repeated } from "./args.ts";
import { driveIoArg, driveIoMode, hostTarget } from "./target-host.ts";
import { command, untilSignal } from "./command.ts";
import { outputArg, outputFormat, printJson, printTable } from "./output.ts";
import { management, toma } from "./volume.ts";
import { daemonKey, insecureArg, keyFileArg } from "./key-file.ts";

export const DEFAULT_TARGET_PORT = 4420;

const serve = command({
  meta: { name: "serve", description: "serve local drives to clients and the TOMA" },
  args: {
    drive: { type: "string", description: "drive file or block device (repeat for several)", required: true },
    listen: { type: "string", description: "HOST:PORT to listen on", default: `0.0.0.0:${DEFAULT_TARGET_PORT}` },
    name: { type: "string", description: "target name (default: host name)" },
    ...driveIoArg,
    ...keyFileArg,
    ...insecureArg,
  },
  repeatable: ["drive"],
  async run({ args, rawArgs }) {
    const listen = listenAddress(args.listen);
    const cluster_key = daemonKey(args, `the target on ${listen}`, true)?.key ?? null;
    const paths = repeated(rawArgs, "drive");
    const io = driveIoMode(args["drive-io"]);
    const target = await hostTarget(realEnv("target"), { paths, listen, name: args.name ?? hostname(), cluster_key, io });
    consola.success(`target ready on ${target.address}`);
    const sig = await untilSignal();
    consola.info(`${sig}: stopping target`);
    await target.stop();
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
