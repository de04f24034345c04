/**
 * `nvmesh drive metadata PATH`: what a drive's metadata slot holds, read offline and read-only
 * (the file is opened O_RDONLY, so it may be looked at while its target serves it; a slot being
 * written at that instant shows as the previous one or as torn). It tells which it found: the
 * single TOMA's cluster state, or a TOMA cluster member's hard-state record (whose TOMA, its
 * incarnation, seq, term, commit, configuration, and the cluster state at its commit, computed
 * from the snapshot and the committed entries as every TOMA computes it).
 */
import { consola } from "consola";
import { ReadOnlyFile } from "../debugfmt/runtime/readonly-file.ts";
import { openDrive } from "../engine/drive/formatted-drive.ts";
import type { ClusterState } from "../toma/cluster-state.ts";
import { describeContents, slotContents } from "../toma/slot-contents.ts";
import { formatBytes } from "./args.ts";
import { command } from "./command.ts";
import { checkDrivePath } from "./drive-path.ts";
import { outputArg, outputFormat, printJson, printTable } from "./output.ts";

export const metadataCommand = command({
  meta: { name: "metadata", description: "show what a drive's metadata slot holds: the single-TOMA state or a TOMA's hard-state record (read-only)" },
  args: {
    path: { type: "positional", description: "drive file or block device", required: true },
    ...outputArg,
  },
  async run({ args }) {
    const fmt = outputFormat(args.output);
    checkDrivePath(args.path, "read");
    const file = ReadOnlyFile.open(args.path);
    try {
      const d = await openDrive(file, args.path);
      const slot = await d.metaRead();
      const contents = slotContents({ drive_uuid: d.info.drive_uuid, generation: slot.generation, payload: slot.payload });
      const out = {
        path: args.path,
        drive_uuid: d.info.drive_uuid,
        cluster_uuid: d.info.cluster_uuid,
        slot: { generation: slot.generation, other: slot.other },
        contents,
      };
      if (fmt === "json") return printJson(out);
      const line = (s = "") => process.stdout.write(`${s}\n`);
      line(`${args.path}: drive ${out.drive_uuid}, cluster ${out.cluster_uuid} (superblock)`);
      line(`metadata slot: generation ${slot.generation}, the other slot ${slot.other}`);
      line(`holds ${describeContents(contents)}`);
      if (contents.kind === "hard_state") {
        const r = contents.record;
        line(`  vote ${r.vote ?? "none"}; snapshot at index ${r.snapshot.index} (term ${r.snapshot.term}); ${r.entries} log entries after it, ${r.committed_entries} committed`);
        // The core persists its commit index only with its next change: the cluster may have committed more.
        if (r.entries > r.committed_entries) line(`  (entries after the commit may have been committed since: a TOMA writes its commit index only with its next change)`);
        line(`  written to drives ${r.drives.join(", ")} (anchor seq ${r.anchor_seq})`);
        line("  configuration at the commit:");
        printTable(r.config.members.map((m) => ({ member: m.id, voter: m.voter, address: m.address || null })));
        for (const x of contents.refused) line(`  committed entry ${x.index} refused by the state machine: ${x.error}`);
      }
      if (contents.kind === "single_toma" || contents.kind === "hard_state") {
        if (contents.state) printState(contents.state);
      }
    } catch (e) {
      consola.error(`${args.path}: ${(e as Error).message}`);
      process.exitCode = 1;
    } finally {
      await file.close();
    }
  },
});

function printState(s: ClusterState): void {
  process.stdout.write(`cluster state: generation ${s.generation}, ${s.drives.length} drive(s), ${s.volumes.length} volume(s)${s.retired.length ? `, ${s.retired.length} retired extent set(s)` : ""}\n`);
  if (s.volumes.length === 0) return;
  printTable(
    s.volumes.map((v) => ({
      volume: v.name,
      uuid: v.uuid,
      raid: v.raid_level === "concatenated" ? "concat" : `RAID${v.raid_level}`,
      capacity: formatBytes(v.capacity_bytes),
      legs: v.columns.map((c, i) => `${c.drive_uuid.slice(0, 8)}:${v.legs[i] ?? "?"}`).join(" "),
    })),
  );
}
