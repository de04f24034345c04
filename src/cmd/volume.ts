/** `nvmesh volume create|show|delete`. */
import { consola } from "consola";
import { type TomaClient, tomaClient } from "../toma/api-client.ts";
import type { VolumeJson } from "../toma/api-types.ts";
import { isValidStripeSize, VOLUME_NAME_RE } from "../toma/cluster-state.ts";
import { formatBytes, managementAddress, parsePositiveInt, parseSize, UsageError } from "./args.ts";
import { atLeader } from "./at-leader.ts";
import { command } from "./command.ts";
import { clusterKey, keyFileArg } from "./key-file.ts";
import { outputArg, outputFormat, printJson, printKeyValues, printTable } from "./output.ts";
import { runsLength } from "../engine/layout/extent-runs.ts";

export const management = {
  management: { type: "string" as const, alias: ["m"], description: "any TOMA, HOST:PORT (or NVMESH_MANAGEMENT)" },
  ...keyFileArg,
};

/** The management API of the TOMA the arguments name; requests signed with the key found, if any. */
export function toma(args: { management?: string; "key-file"?: string }): TomaClient {
  return tomaClient(managementAddress(args.management), { key: clusterKey(args["key-file"]) });
}

function raidName(level: string): string {
  return level === "concatenated" ? "concatenated" : `RAID${level}`;
}

const LEVELS = ["concatenated", "0", "1", "10"] as const;

/** Refuses a volume name the TOMA would refuse, before asking it (a usage error, exit 2). */
export function volumeName(name: string): string {
  if (!VOLUME_NAME_RE.test(name)) {
    throw new UsageError(`invalid volume name '${name}': use 1 to 64 letters, digits, '.', '_' or '-'`);
  }
  return name;
}

const create = command({
  meta: { name: "create", description: "create a volume from the pool" },
  args: {
    name: { type: "string", description: "volume name ([A-Za-z0-9._-], up to 64)", required: true },
    capacity: { type: "string", description: "size with K/M/G/T suffix, e.g. 2G", required: true },
    "raid-level": { type: "string", description: "concatenated, 0 (striped), 1 (mirrored) or 10 (striped mirrors)", default: "concatenated" },
    "stripe-width": { type: "string", description: "RAID0: drives to stripe across (default: all); RAID10: mirror sets (default 2)" },
    "stripe-size": { type: "string", description: "RAID0/RAID10: stripe unit in KiB (default 64)" },
    "number-of-mirrors": { type: "string", description: "RAID1/RAID10: copies of each block, 2 (default) or 3" },
    "allow-same-server": { type: "boolean", description: "RAID1/RAID10: let two legs of a mirror share a server" },
    "debug-format": { type: "boolean", description: "store each 512-byte sector in a 2048-byte debug sector (writer, history; needs 4x the capacity)" },
    ...management,
    ...outputArg,
  },
  async run({ args }) {
    const fmt = outputFormat(args.output);
    volumeName(args.name);
    const level = LEVELS.find((l) => l === args["raid-level"]);
    if (!level) throw new UsageError(`unsupported --raid-level '${args["raid-level"]}': use concatenated, 0, 1 or 10`);
    const width = parsePositiveInt(args["stripe-width"], "--stripe-width");
    const stripeKiB = parsePositiveInt(args["stripe-size"], "--stripe-size");
    const mirrors = parsePositiveInt(args["number-of-mirrors"], "--number-of-mirrors");
    if ((level === "concatenated" || level === "1") && (width !== undefined || stripeKiB !== undefined)) {
      throw new UsageError("--stripe-width and --stripe-size apply to --raid-level 0 and 10 only");
    }
    const mirrored = level === "1" || level === "10";
    if (!mirrored && (mirrors !== undefined || args["allow-same-server"])) {
      throw new UsageError("--number-of-mirrors and --allow-same-server apply to --raid-level 1 and 10 only");
    }
    if (mirrors !== undefined && (mirrors < 2 || mirrors > 3)) throw new UsageError(`--number-of-mirrors must be 2 or 3, got ${mirrors}`);
    if (stripeKiB !== undefined && !isValidStripeSize(stripeKiB * 1024)) {
      throw new UsageError(`invalid --stripe-size ${stripeKiB}: the stripe unit is in KiB, a power of two from 4 to 1048576 (e.g. 64)`);
    }
    const capacity_bytes = parseSize(args.capacity, "--capacity");
    if (capacity_bytes % 512 !== 0) {
      throw new UsageError(`invalid --capacity '${args.capacity}': a volume is made of 512-byte sectors, and ${capacity_bytes} bytes is not a multiple of 512 (e.g. 1M)`);
    }
    // A TOMA cluster: created by the leader (a follower answers 421 naming it).
    const vol = await atLeader(args, (t) => t.createVolume({
      name: args.name,
      capacity_bytes,
      raid_level: level,
      ...(width !== undefined ? { stripe_width: width } : {}),
      ...(stripeKiB !== undefined ? { stripe_size_bytes: stripeKiB * 1024 } : {}),
      ...(mirrors !== undefined ? { mirrors } : {}),
      ...(args["allow-same-server"] ? { allow_same_server: true } : {}),
      ...(args["debug-format"] ? { debug_format: true } : {}),
    }));
    if (fmt === "json") return printJson(vol);
    const debug = vol.debug_format ? " in debug format" : "";
    consola.success(`volume ${vol.name} created: ${formatBytes(vol.capacity_bytes)} ${raidName(vol.raid_level)}${debug} over ${vol.columns.length} drive(s)`);
  },
});

function row(v: VolumeJson) {
  return {
    name: v.name,
    state: v.state[0]!.toUpperCase() + v.state.slice(1),
    capacity: formatBytes(v.capacity_bytes),
    raid: raidName(v.raid_level),
    width: v.raid_level === "0" || v.raid_level === "10" ? v.stripe_width : "-",
    stripe: v.stripe_size_bytes > 0 ? `${v.stripe_size_bytes / 1024}K` : "-",
    mirrors: v.mirrors > 1 ? v.mirrors : "-",
    format: v.debug_format ? "debug" : "plain",
    generation: v.topology_seq,
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
    const t = toma(args);
    if (args.name) {
      volumeName(args.name);
      const v = await t.volume(args.name);
      if (fmt === "json") return printJson(v);
      printKeyValues(row(v));
      process.stdout.write("\n");
      printTable(
        v.columns.map((c, i) => {
          const leg = v.leg_views[i];
          const r = leg?.rebuild;
          return {
            column: i,
            ...(leg ? { set: leg.set, leg: legLabel(leg.state), reachable: leg.reachable ? "yes" : "no" } : {}),
            ...(leg ? { rebuild: r && r.total_bytes > 0 ? progressBar(r.done_bytes, r.total_bytes) : "-" } : {}),
            drive: c.drive_uuid,
            extents: runsLength(c.runs),
            first_extent: c.runs[0],
          };
        }),
      );
      return;
    }
    const vols = await t.volumes();
    if (fmt === "json") return printJson(vols);
    printTable(vols.map(row));
  },
});

function legLabel(state: string): string {
  return { ok: "Normal", dead: "Dead", syncing: "Rebuilding", synced: "Rebuilt (dual lock)" }[state] ?? state;
}

/** `[#####.....] 52%` */
export function progressBar(done: number, total: number): string {
  const f = Math.min(1, done / total);
  const n = Math.round(f * 20);
  return `[${"#".repeat(n)}${".".repeat(20 - n)}] ${Math.floor(f * 100)}%`;
}

const remove = command({
  meta: { name: "delete", description: "delete a volume and free its extents" },
  args: {
    name: { type: "positional", description: "volume name", required: true },
    yes: { type: "boolean", alias: ["y"], description: "do not ask for confirmation" },
    force: { type: "boolean", description: "even while clients have it attached: they are fenced out of it and their exports removed first" },
    ...management,
  },
  async run({ args }) {
    volumeName(args.name);
    if (!args.yes) {
      if (!process.stdin.isTTY) throw new UsageError(`not deleting volume ${args.name} without a confirmation: add -y (there is no terminal to ask on)`);
      const sure = await consola.prompt(`Delete volume ${args.name} and all its data?`, { type: "confirm" });
      if (sure !== true) throw new UsageError(`volume ${args.name} not deleted`);
    }
    await atLeader(args, (t) => t.deleteVolume(args.name, { force: args.force === true }));
    consola.success(`volume ${args.name} deleted`);
  },
});

export const volumeCommand = command({
  meta: { name: "volume", description: "create, show and delete volumes" },
  subCommands: { create, show, delete: remove },
});
