/** Opens drives and serves them on an address: `target serve`, and `client serve --drive`. */
import { consola } from "consola";
import type { FormattedDrive } from "../engine/drive/formatted-api.ts";
import { openDrive } from "../engine/drive/formatted-drive.ts";
import type { Env } from "../engine/env.ts";
import type { Conn } from "../engine/net/conn.ts";
import { connPair } from "../engine/net/pipe.ts";
import { DRIVE_IO_MODES, type DriveIo, openDriveStore } from "../engine/runtime/open-drive-store.ts";
import { TargetService } from "../engine/target/service.ts";
import { UsageError } from "./args.ts";
import { warnNoKey } from "./key-file.ts";

export interface HostedTarget {
  readonly service: TargetService;
  /** The address it listens on, as bound (a port 0 resolved). */
  readonly address: string;
  /** An in-process connection to it (client/local-target.ts). */
  connect(): Conn;
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

export async function hostTarget(
  env: Env,
  o: { paths: string[]; listen: string; name: string; cluster_key: Uint8Array | null; io?: DriveIo },
): Promise<HostedTarget> {
  if (o.paths.length === 0) throw new UsageError("at least one --drive is required");
  if (new Set(o.paths).size !== o.paths.length) throw new UsageError("the same --drive was given twice");
  const drives: FormattedDrive[] = [];
  for (const path of o.paths) {
    try {
      const store = await openDriveStore(path, { log: env.log, io: o.io });
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
  for (const d of drives) consola.info(`serving drive ${d.info.drive_uuid} (${d.info.path}, ${d.info.extent_count} extents, ${d.data.io_path ?? "?"})`);
  return {
    service,
    address: listener.address,
    connect: () => {
      const [mine, theirs] = connPair(listener.address, "in-process");
      service.handle(theirs);
      return mine;
    },
    stop: async () => {
      listener.close();
      service.closeAll();
      for (const d of drives) await d.close().catch((e) => consola.warn(`closing ${d.info.path}: ${e}`));
    },
  };
}
