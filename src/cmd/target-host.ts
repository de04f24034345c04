/** Opens drives and serves them on an address: `target serve`, and `client serve --drive`. */
import { consola } from "consola";
import type { FormattedDrive } from "../engine/drive/formatted-api.ts";
import { openDrive } from "../engine/drive/formatted-drive.ts";
import type { Env } from "../engine/env.ts";
import type { FrameLink } from "../engine/net/frame-link.ts";
import { linkPair } from "../engine/net/pipe.ts";
import { DRIVE_IO_MODES, type DriveIo, openDriveStore } from "../engine/runtime/open-drive-store.ts";
import { TargetService, type TargetServiceOptions } from "../engine/target/service.ts";
import { parseRdmaAddress, type RdmaListener, rdmaListen } from "../engine/runtime/rdma-net.ts";
import { UsageError } from "./args.ts";
import { checkDrivePath } from "./drive-path.ts";
import { locateSuperblock } from "../engine/drive/locate-superblock.ts";

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

/** `--drive-io`: how drive I/O reaches the kernel (open-drive-store.ts); default NVMESH_DRIVE_IO or auto. */
export const driveIoArg = {
  "drive-io": {
    type: "string",
    description: `drive I/O path: ${DRIVE_IO_MODES.join(" | ")} (default: $NVMESH_DRIVE_IO or auto = io_uring where the kernel allows it, else the thread pool)`,
  },
} as const;

export function driveIoMode(flag: string | undefined): DriveIo {
  const v = flag ?? (process.env.NVMESH_DRIVE_IO || "auto");
  if (!(DRIVE_IO_MODES as readonly string[]).includes(v)) {
    throw new UsageError(`--drive-io must be one of ${DRIVE_IO_MODES.join(", ")}, got '${v}'`);
  }
  return v as DriveIo;
}

/** `cluster_key`: the server key (null: --insecure, already announced by the caller). */
export async function hostTarget(
  env: Env,
  o: {
    paths: string[];
    listen: string;
    rdma?: string | null;
    name: string;
    cluster_key: Uint8Array | null;
    io?: DriveIo;
    limits?: Pick<TargetServiceOptions, "preauth" | "payload_budget_bytes">;
  },
): Promise<HostedTarget> {
  if (o.paths.length === 0) throw new UsageError("at least one --drive is required");
  const twice = o.paths.find((p, i) => o.paths.indexOf(p) !== i);
  if (twice !== undefined) throw new UsageError(`--drive ${twice} is given twice: give each drive once`);
  const drives: FormattedDrive[] = [];
  for (const path of o.paths) {
    try {
      checkDrivePath(path, "read and write");
      const store = await openDriveStore(path, { log: env.log, io: o.io });
      try {
        const found = await locateSuperblock(store);
        if (found.kind === "not-nvmesh") {
          throw new Error(found.foreign === null
            ? `${found.reason}: not an nvmesh drive yet; format it with 'nvmesh drive format ${path}'`
            : `${found.reason}: not an nvmesh drive; give another one, or erase it with 'nvmesh drive format --force ${path}'`);
        }
        if (found.kind === "damaged") {
          throw new Error(`${found.reason}: 'nvmesh forensics scan ${path}' shows what it holds; 'nvmesh drive format --force ${path}' erases it`);
        }
        drives.push(await openDrive(store, path));
      } catch (e) {
        await store.close();
        throw e;
      }
    } catch (e) {
      // One bad drive must not take the others offline: report it loudly and serve the rest.
      const msg = (e as Error).message;
      consola.error(msg.startsWith(path) ? msg : `drive ${path}: ${msg}`);
    }
  }
  if (drives.length === 0) {
    throw new Error(o.paths.length === 1 ? "the drive cannot be served (see above): nothing to serve" : `none of the ${o.paths.length} drives can be served (see above): nothing to serve`);
  }
  const service = new TargetService(env, { name: o.name, drives, fencing: true, cluster_key: o.cluster_key, ...o.limits });
  let listener: Awaited<ReturnType<Env["net"]["listen"]>>;
  try {
    listener = await env.net.listen(o.listen, (conn) => service.handle(conn));
  } catch (e) {
    for (const d of drives) await d.close().catch(() => {});
    throw e;
  }
  let rdma: RdmaListener | null = null;
  if (o.rdma) {
    const { host, port } = parseRdmaAddress(o.rdma);
    try {
      rdma = await rdmaListen(host, port, (link) => service.handleLink(link));
    } catch (e) {
      listener.close();
      for (const d of drives) await d.close().catch(() => {});
      throw new Error(`cannot listen on ${o.rdma}: ${(e as Error).message}`);
    }
    // On every address (0.0.0.0): requesters use the address they reached us by over TCP.
    service.setRdma({ host: host === "0.0.0.0" ? null : host, port: rdma.port });
  }
  for (const d of drives) consola.info(`serving drive ${d.info.drive_uuid} (${d.info.path}, ${d.info.extent_count} extents, ${d.data.io_path ?? "?"})`);
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
