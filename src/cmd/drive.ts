/** `nvmesh drive format|show`. */
import { consola } from "consola";
import { FileStore } from "../engine/runtime/file-store.ts";
import { blankMetaSlots, formatDrive } from "../engine/drive/format.ts";
import { openDrive } from "../engine/drive/formatted-drive.ts";
import { openDriveStore } from "../engine/runtime/open-drive-store.ts";
import { minDriveBytes } from "../engine/drive/superblock.ts";
import { checkDrivePath } from "./drive-path.ts";
import { realEnv } from "../engine/runtime/real-env.ts";
import { uuidToString } from "../engine/uuid.ts";
import { randomUuid } from "../engine/env.ts";
import { formatBytes, parseSize, UsageError } from "./args.ts";
import { command, hinted } from "./command.ts";
import { outputArg, outputFormat, printJson, printTable } from "./output.ts";
import { management, toma } from "./volume.ts";
import { metadataCommand } from "./drive-metadata.ts";

const format = command({
  meta: { name: "format", description: "format a drive file or block device for nvmesh" },
  args: {
    path: { type: "positional", description: "drive file or block device", required: true },
    force: { type: "boolean", description: "overwrite an existing nvmesh drive, filesystem or damaged metadata" },
    "extent-size": { type: "string", description: "allocation unit, power of two from 1M to 1G", default: "16M" },
    ...outputArg,
  },
  async run({ args }) {
    const fmt = outputFormat(args.output);
    const extent_size_bytes = parseSize(args["extent-size"], "--extent-size");
    if (extent_size_bytes < 2 ** 20 || extent_size_bytes > 2 ** 30 || !Number.isInteger(Math.log2(extent_size_bytes))) {
      throw new UsageError(`invalid --extent-size '${args["extent-size"]}': a power of two from 1M to 1G (e.g. 16M, the default)`);
    }
    checkDrivePath(args.path, "read and write");
    const env = realEnv("drive");
    const store = await openDriveStore(args.path, { log: env.log });
    const min = Math.ceil(minDriveBytes(extent_size_bytes) / 2 ** 20) * 2 ** 20;
    if (store.size_bytes < min) {
      await store.close();
      throw new Error(
        `${args.path} holds ${formatBytes(store.size_bytes)}, too little for a drive with ${formatBytes(extent_size_bytes)} extents (its metadata and one extent take ${formatBytes(min)}): enlarge it (truncate -s 10G ${args.path}) or choose a smaller --extent-size`,
      );
    }
    try {
      const sb = await formatDrive(store, {
        drive_uuid: uuidToString(randomUuid(env)),
        extent_size_bytes,
        force: args.force === true,
      });
      if (fmt === "json") return printJson(sb);
      consola.success(
        `formatted ${args.path}: drive ${sb.drive_uuid}, ${sb.extent_count} extents of ${formatBytes(sb.extent_size_bytes)}`,
      );
    } finally {
      await store.close();
    }
  },
});

const repairMetadata = command({
  meta: {
    name: "repair-metadata",
    description: "blank both metadata slots of a drive whose slot is unreadable or damaged (its target stopped)",
  },
  args: {
    path: { type: "positional", description: "drive file or block device", required: true },
    force: { type: "boolean", description: "blank the slots even though both read back fine" },
  },
  async run({ args }) {
    checkDrivePath(args.path, "read and write");
    const env = realEnv("drive");
    // flock: a target serving the drive holds it, and this open fails saying so.
    const store = await FileStore.open(args.path, { log: env.log });
    try {
      let why: string | null = null;
      try {
        const d = await openDrive(store, args.path, { log: env.log });
        const m = await d.metaRead();
        if (m.other !== "older") why = `its non-current metadata slot is ${m.other}`;
      } catch (e) {
        why = (e as Error).message;
      }
      if (why === null && args.force !== true) {
        throw new UsageError(`${args.path}: both metadata slots read back fine, nothing to repair (--force blanks them anyway, losing what they hold)`);
      }
      const sb = await blankMetaSlots(store);
      consola.success(
        `blanked both metadata slots of drive ${sb.drive_uuid} (${why ?? "asked with --force"}); what they held is gone: ` +
          "a TOMA takes the drive as one that never held its records",
      );
    } finally {
      await store.close();
    }
  },
});

const show = command({
  meta: { name: "show", description: "list the drives of the cluster" },
  args: { ...management, ...outputArg },
  async run({ args }) {
    const fmt = outputFormat(args.output);
    const drives = await toma(args).drives();
    if (fmt === "json") return printJson(drives);
    printTable(
      drives.map((d) => ({
        drive: d.uuid,
        state: d.state,
        // A TOMA cluster: the server whose TOMA reports the drive (its target's address is as that server reaches it).
        ...(drives.some((x) => x.server !== undefined) ? { server: d.server ?? null } : {}),
        target: d.target,
        path: d.path,
        size: d.size_bytes === null ? null : formatBytes(d.size_bytes),
        extents: `${d.extents_used}/${d.extents_total} used`,
        error: d.error,
      })),
    );
  },
});

const evict = command({
  meta: { name: "evict", description: "take a drive out: its mirror legs are rebuilt on other drives" },
  args: {
    drive: { type: "positional", description: "drive uuid", required: true },
    ...management,
  },
  async run({ args }) {
    if (!/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i.test(args.drive)) {
      throw new UsageError(`invalid drive '${args.drive}': give the drive's uuid, as 'nvmesh drive show' lists it`);
    }
    await hinted(toma(args).call("POST", `/v1/drives/${encodeURIComponent(args.drive)}/evict`, {}), 404, "'nvmesh drive show' lists the drives");
    consola.success(`drive ${args.drive} evicted: its mirror legs are being rebuilt elsewhere`);
  },
});

export const driveCommand = command({
  meta: { name: "drive", description: "format and list drives" },
  subCommands: { format, show, evict, metadata: metadataCommand, "repair-metadata": repairMetadata },
});
