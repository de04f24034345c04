/** `nvmesh toma run`: the topology manager and the management API of this server. */
import { hostname } from "node:os";
import { consola } from "consola";
import { parseAddress } from "../engine/net/conn.ts";
import { realEnv } from "../engine/runtime/real-env.ts";
import { makeApiHandler } from "../toma/api.ts";
import { serveTomaApi } from "../toma/runtime/http-server.ts";
import { Toma } from "../toma/toma.ts";
import { listenAddress, repeated, UsageError } from "./args.ts";
import { command, untilSignal } from "./command.ts";
import { clusterKey, keyFileArg, warnNoKey } from "./key-file.ts";
import { managementToken } from "../engine/wire/cluster-key.ts";
import { DEFAULT_HTTP_LIMITS } from "../toma/http-conn.ts";
import { preauthArgs, preauthLimits } from "./limit-args.ts";

export const DEFAULT_TOMA_PORT = 4000;

const run = command({
  meta: { name: "run", description: "run the topology manager and its management API" },
  args: {
    listen: { type: "string", description: "management API HOST:PORT", default: `0.0.0.0:${DEFAULT_TOMA_PORT}` },
    target: { type: "string", description: "a target HOST:PORT to manage (repeat for several)", required: true },
    name: { type: "string", description: "TOMA name (default: host name)" },
    cluster: { type: "string", description: "cluster UUID to adopt when drives of several clusters are found" },
    ...keyFileArg,
    ...preauthArgs,
  },
  async run({ args, rawArgs }) {
    const cluster_key = clusterKey(args["key-file"]);
    const targets = repeated(rawArgs, "target").map((t) => listenAddress(t, "--target"));
    if (targets.length === 0) throw new UsageError("at least one --target is required");
    const listen = parseAddress(listenAddress(args.listen));
    if ("unix" in listen) throw new UsageError("--listen for the management API must be HOST:PORT");
    const env = realEnv("toma");
    const toma = new Toma(env, { name: args.name ?? hostname(), targets, cluster_uuid: args.cluster, cluster_key });
    toma.start();
    const token = cluster_key === null ? null : managementToken(cluster_key);
    const limits = preauthLimits(args, DEFAULT_HTTP_LIMITS);
    const http = await serveTomaApi(makeApiHandler(toma), { hostname: listen.host, port: listen.port, token, env: realEnv("toma-api"), limits });
    if (cluster_key === null) warnNoKey(`the management API on ${args.listen}`);
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
        consola.warn(`TOMA not ready yet: ${toma.readiness()}`);
      }
    }
    if (!stopped) consola.success(`toma ready on ${addr} (cluster ${toma.cluster_uuid})`);
    await stop;
  },
});

export const tomaCommand = command({
  meta: { name: "toma", description: "the topology manager" },
  subCommands: { run },
});
