/** `nvmesh target serve|show`: serve this server's drives; list the cluster's targets. */
import { hostname } from "node:os";
import { consola } from "consola";
import { realEnv } from "../engine/runtime/real-env.ts";
import { listenAddress, repeated, UsageError } from "./args.ts";
import { parseRdmaAddress } from "../engine/runtime/rdma-net.ts";
import { driveIoArg, driveIoMode, hostTarget } from "./target-host.ts";
import { command, untilSignal } from "./command.ts";
import { outputArg, outputFormat, printJson, printTable } from "./output.ts";
import { management, toma } from "./volume.ts";
import { daemonKey, insecureArg, keyFileArg } from "./key-file.ts";
import { payloadBudget, payloadBudgetArg, preauthArgs, preauthLimits } from "./limit-args.ts";
import { DEFAULT_TARGET_PREAUTH } from "../engine/target/service.ts";

export const DEFAULT_TARGET_PORT = 4420;

const serve = command({
  meta: { name: "serve", description: "serve local drives to clients and the TOMA" },
  args: {
    drive: { type: "string", description: "drive file or block device (repeat for several)", required: true },
    listen: {
      type: "string",
      description: "HOST:PORT to listen on; repeat with rdma://HOST:PORT to listen on RDMA too (needs an RDMA device)",
      default: `0.0.0.0:${DEFAULT_TARGET_PORT}`,
    },
    name: { type: "string", description: "target name (default: host name)" },
    ...driveIoArg,
    ...keyFileArg,
    ...insecureArg,
    ...preauthArgs,
    ...payloadBudgetArg,
  },
  repeatable: ["drive", "listen"],
  async run({ args, rawArgs }) {
    const paths = repeated(rawArgs, "drive");
    const given = repeated(rawArgs, "listen");
    const rdma = given.filter((a) => a.startsWith("rdma://"));
    const tcp = given.filter((a) => !a.startsWith("rdma://"));
    if (rdma.length > 1 || tcp.length > 1) throw new UsageError("--listen: at most one HOST:PORT and one rdma://HOST:PORT");
    const listen = listenAddress(tcp[0] ?? `0.0.0.0:${DEFAULT_TARGET_PORT}`);
    if (rdma[0] !== undefined) {
      try {
        parseRdmaAddress(rdma[0]);
      } catch (e) {
        throw new UsageError((e as Error).message);
      }
    }
    const io = driveIoMode(args["drive-io"]);
    const budget = payloadBudget(args);
    const limits = { preauth: preauthLimits(args, DEFAULT_TARGET_PREAUTH), ...(budget === undefined ? {} : { payload_budget_bytes: budget }) };
    const cluster_key = daemonKey(args, `the target on ${listen}`, true)?.key ?? null;
    const target = await hostTarget(realEnv("target"), { paths, listen, rdma: rdma[0] ?? null, name: args.name ?? hostname(), cluster_key, io, limits });
    consola.success(`target ready on ${target.address}${target.rdma ? ` and ${target.rdma}` : ""}`);
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
