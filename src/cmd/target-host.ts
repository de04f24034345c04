/** Opens drives and serves them on an address: `target serve`, and `client serve --drive`. */
import { consola } from "consola";
import type { FormattedDrive } from "../engine/drive/formatted-api.ts";
import { openDrive } from "../engine/drive/formatted-drive.ts";
import type { Env } from "../engine/env.ts";
import type { FrameLink } from "../engine/net/frame-link.ts";
import { linkPair } from "../engine/net/pipe.ts";
import { FileStore } from "../engine/runtime/file-store.ts";
import { TargetService } from "../engine/target/service.ts";
import { parseRdmaAddress, type RdmaListener, rdmaListen } from "../engine/runtime/rdma-net.ts";
import { UsageError } from "./args.ts";
import { warnNoKey } from "./key-file.ts";

export interface HostedTarget {
  readonly service: TargetService;
  /** The address it listens on, as bound (a port 0 resolved). */
  readonly address: string;
  /** rdma://HOST:PORT it also listens on, as bound, or null. */
  readonly rdma: string | null;
  /** An in-process link to it (client/local-target.ts). */
  connect(): FrameLink;
  stop(): Promise<void>;
}

export async function hostTarget(
  env: Env,
  o: { paths: string[]; listen: string; rdma?: string | null; name: string; cluster_key: Uint8Array | null },
): Promise<HostedTarget> {
  if (o.paths.length === 0) throw new UsageError("at least one --drive is required");
  if (new Set(o.paths).size !== o.paths.length) throw new UsageError("the same --drive was given twice");
  const drives: FormattedDrive[] = [];
  for (const path of o.paths) {
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
  const service = new TargetService(env, { name: o.name, drives, fencing: true, cluster_key: o.cluster_key });
  if (o.cluster_key === null) warnNoKey(`the target on ${o.listen}`);
  const listener = await env.net.listen(o.listen, (conn) => service.handle(conn));
  let rdma: RdmaListener | null = null;
  if (o.rdma) {
    const { host, port } = parseRdmaAddress(o.rdma);
    try {
      rdma = await rdmaListen(host, port, (link) => service.handleLink(link));
    } catch (e) {
      listener.close();
      throw new Error(`cannot listen on ${o.rdma}: ${(e as Error).message}`);
    }
    // On every address (0.0.0.0): requesters use the address they reached us by over TCP.
    service.setRdma({ host: host === "0.0.0.0" ? null : host, port: rdma.port });
  }
  for (const d of drives) consola.info(`serving drive ${d.info.drive_uuid} (${d.info.path}, ${d.info.extent_count} extents)`);
  return {
    service,
    address: listener.address,
    rdma: rdma?.address ?? null,
    connect: () => {
      const [mine, theirs] = linkPair(listener.address, "in-process");
      service.handleLink(theirs);
      return mine;
    },
    stop: async () => {
      listener.close();
      rdma?.close();
      service.closeAll();
      for (const d of drives) await d.close().catch((e) => consola.warn(`closing ${d.info.path}: ${e}`));
    },
  };
}
