/** `nvmesh volume create|show|delete`. */
import { consola } from "consola";
import { type TomaClient, tomaClient } from "../toma/api-client.ts";
import type { VolumeJson } from "../toma/api-types.ts";
import { formatBytes, managementAddress, parsePositiveInt, parseSize, UsageError } from "./args.ts";
import { command } from "./command.ts";
import { outputArg, outputFormat, printJson, printKeyValues, printTable } from "./output.ts";

export const management = {
  management: { type: "string" as const, alias: ["m"], description: "any TOMA, HOST:PORT (or NVMESH_MANAGEMENT)" },
};

export function toma(flag: string | undefined): TomaClient {
  return tomaClient(managementAddress(flag));
}

function raidName(level: string): string {
  return level === "0" ? "RAID0" : "concatenated";
}

const create = command({
  meta: { name: "create", description: "create a volume from the pool" },
  args: {
    name: { type: "string", description: "volume name ([A-Za-z0-9._-], up to 64)", required: true },
    capacity: { type: "string", description: "size with K/M/G/T suffix, e.g. 2G", required: true },
    "raid-level": { type: "string", description: "concatenated or 0 (striped)", default: "concatenated" },
    "stripe-width": { type: "string", description: "RAID0: drives to stripe across (default: all)" },
    "stripe-size": { type: "string", description: "RAID0: stripe unit in KiB (default 64)" },
    ...management,
    ...outputArg,
  },
  async run({ args }) {
    const fmt = outputFormat(args.output);
    const level = args["raid-level"];
    if (level !== "concatenated" && level !== "0") {
      throw new UsageError(`unsupported --raid-level '${level}': use concatenated or 0 (mirroring comes later)`);
    }
    const width = parsePositiveInt(args["stripe-width"], "--stripe-width");
    const stripeKiB = parsePositiveInt(args["stripe-size"], "--stripe-size");
    if (level === "concatenated" && (width !== undefined || stripeKiB !== undefined)) {
      throw new UsageError("--stripe-width and --stripe-size apply to --raid-level 0 only");
    }
    const capacity_bytes = parseSize(args.capacity, "capacity");
    if (capacity_bytes % 512 !== 0) throw new UsageError("--capacity must be a multiple of 512 bytes");
    const vol = await toma(args.management).createVolume({
      name: args.name,
      capacity_bytes,
      raid_level: level,
      ...(width !== undefined ? { stripe_width: width } : {}),
      ...(stripeKiB !== undefined ? { stripe_size_bytes: stripeKiB * 1024 } : {}),
    });
    if (fmt === "json") return printJson(vol);
    consola.success(`volume ${vol.name} created: ${formatBytes(vol.capacity_bytes)} ${raidName(vol.raid_level)} over ${vol.columns.length} drive(s)`);
  },
});

function row(v: VolumeJson) {
  return {
    name: v.name,
    state: v.state[0]!.toUpperCase() + v.state.slice(1),
    capacity: formatBytes(v.capacity_bytes),
    raid: raidName(v.raid_level),
    width: v.raid_level === "0" ? v.stripe_width : "-",
    stripe: v.raid_level === "0" ? `${v.stripe_size_bytes / 1024}K` : "-",
    drives: v.columns.length,
    uuid: v.uuid,
  };
}

const show = command({
  meta: { name: "show", description: "show volumes (all, or one by name)" },
  args: {
    name: { type: "positional", description: "volume name", required: false },
    ...management,
    ...outputArg,
  },
  async run({ args }) {
    const fmt = outputFormat(args.output);
    const t = toma(args.management);
    if (args.name) {
      const v = await t.volume(args.name);
      if (fmt === "json") return printJson(v);
      printKeyValues(row(v));
      process.stdout.write("\n");
      printTable(
        v.columns.map((c, i) => ({ column: i, drive: c.drive_uuid, extents: c.extents.length, first_extent: c.extents[0] })),
      );
      return;
    }
    const vols = await t.volumes();
    if (fmt === "json") return printJson(vols);
    printTable(vols.map(row));
  },
});

const remove = command({
  meta: { name: "delete", description: "delete a volume and free its extents" },
  args: {
    name: { type: "positional", description: "volume name", required: true },
    yes: { type: "boolean", alias: ["y"], description: "do not ask for confirmation" },
    ...management,
  },
  async run({ args }) {
    if (!args.yes) {
      if (!process.stdin.isTTY) throw new UsageError("refusing to delete without -y when not interactive");
      const sure = await consola.prompt(`Delete volume ${args.name} and all its data?`, { type: "confirm" });
      if (sure !== true) throw new UsageError("not deleted");
    }
    await toma(args.management).deleteVolume(args.name);
    consola.success(`volume ${args.name} deleted`);
  },
});

export const volumeCommand = command({
  meta: { name: "volume", description: "create, show and delete volumes" },
  subCommands: { create, show, delete: remove },
});
