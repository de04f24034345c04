/**
 * `nvmesh forensics scan|history`: offline, read-only inspection of debug-format drives.
 * Exit codes: 0 nothing wrong found, 1 problems found, 2 bad usage or a file that cannot be read.
 */
import { basename } from "node:path";
import { consola } from "consola";
import { locateDataArea, type LocatedArea } from "../debugfmt/drive-area.ts";
import { ReadOnlyFile } from "../debugfmt/runtime/readonly-file.ts";
import { blockHistory, type BlockHistory, FILE_CLASSES, PEER_CLASSES, scan, type ScanResult, type ScanSource } from "../debugfmt/scan.ts";
import { legsText } from "../debugfmt/sector.ts";
import { headerRecord, writeText } from "../debugfmt/timeline.ts";
import { uuidFromString, uuidToString } from "../engine/uuid.ts";
import { formatBytes, parsePositiveInt, UsageError } from "./args.ts";
import { checkDrivePath } from "./drive-path.ts";
import { command } from "./command.ts";
import { type Layouts, layoutsFromDrives } from "./forensics-layouts.ts";
import { printJson, printTable } from "./output.ts";

/** A file that cannot be opened or is not what it must be: exit 2, like bad usage. */
class InputError extends Error {}

const common = {
  peer: { type: "string" as const, description: "the other leg of the mirror (a drive file or device)" },
  volume: { type: "string" as const, description: "only this volume's sectors (uuid)" },
  raw: { type: "boolean" as const, description: "no nvmesh superblock: treat the whole file as a data area" },
  json: { type: "boolean" as const, description: "print the full result as JSON" },
};

interface Opened {
  source: ScanSource;
  located: LocatedArea;
  file: ReadOnlyFile;
}

async function openSource(path: string, raw: boolean): Promise<Opened> {
  checkDrivePath(path, "read");
  let file: ReadOnlyFile;
  try {
    file = ReadOnlyFile.open(path);
  } catch (e) {
    throw new InputError((e as Error).message);
  }
  const located = await locateDataArea(file, { raw });
  if ("error" in located) {
    await file.close();
    throw new InputError(located.error);
  }
  return { source: { name: path, drive: file, area: located.area }, located, file };
}

function volumeArg(v: string | undefined): string | undefined {
  if (v === undefined) return undefined;
  try {
    return uuidToString(uuidFromString(v));
  } catch {
    throw new UsageError(`invalid --volume '${v}': expected a uuid`);
  }
}

function fileArg(v: unknown, what: string): string {
  if (typeof v !== "string" || v === "") throw new UsageError(`missing ${what} (see --help)`);
  return v;
}

/** Runs the body; usage and input errors exit 2, anything else propagates (exit 1). */
async function guarded(body: () => Promise<number>): Promise<void> {
  let code: number;
  try {
    code = await body();
  } catch (e) {
    if (e instanceof InputError || e instanceof UsageError) {
      consola.error(e.message);
      process.exit(2);
    }
    throw e;
  }
  process.exit(code);
}

function describeFile(o: Opened): string {
  const a = o.located.area;
  const where = o.located.drive_uuid
    ? `nvmesh drive ${o.located.drive_uuid} (${o.located.superblock} superblock)`
    : "raw (no superblock)";
  return `${o.source.name}: ${where}, data area ${formatBytes(a.bytes)} at offset ${a.offset_bytes}, ${a.bytes / 2048} sectors, extents of ${formatBytes(a.extent_bytes)}`;
}

const scanCommand = command({
  meta: { name: "scan", description: "decode and check every debug sector of a drive (read-only)" },
  args: {
    file: { type: "positional", description: "drive file or block device", required: false },
    ...common,
    limit: { type: "string", description: "problems listed in the table (default 20; --json lists up to 10000)" },
  },
  async run({ args }) {
    await guarded(async () => {
      const path = fileArg(args.file, "FILE");
      const volume_uuid = volumeArg(args.volume);
      const limit = parsePositiveInt(args.limit, "--limit") ?? 20;
      const raw = args.raw === true;
      const opened: Opened[] = [await openSource(path, raw)];
      try {
        if (args.peer !== undefined) opened.push(await openSource(fileArg(args.peer, "--peer FILE"), raw));
        const layouts = raw ? { why: "--raw: no superblock, so no cluster state" } : await layoutsFromDrives(opened.map((o) => ({ name: o.source.name, store: o.file, located: o.located })));
        const t0 = performance.now();
        const result = await scan(opened[0]!.source, { volume_uuid, peer: opened[1]?.source, ...("placement" in layouts ? { placement: layouts.placement, known_volumes: layouts.known_volumes, peer_position: layouts.peer_position } : {}) });
        const elapsed_ms = performance.now() - t0;
        const warnings = opened.flatMap((o) => o.located.warnings.map((w) => `${o.source.name}: ${w}`));
        if (args.json) {
          await printJson({
            ...result,
            files: result.files.map((f, i) => ({ ...f, drive_uuid: opened[i]!.located.drive_uuid, cluster_uuid: opened[i]!.located.cluster_uuid, superblock: opened[i]!.located.superblock })),
            volume_filter: volume_uuid ?? null,
            placement: "placement" in layouts ? { exact: true, source: layouts.source, found: layouts.found, volumes: layouts.volumes } : { exact: false, why: layouts.why },
            elapsed_ms: Math.round(elapsed_ms),
            warnings,
          });
        } else {
          for (const w of warnings) consola.warn(w);
          printScan(result, opened, { elapsed_ms, limit, volume_uuid, layouts });
        }
        return result.problems_total > 0 ? 1 : 0;
      } finally {
        for (const o of opened) await o.file.close();
      }
    });
  },
});

function printScan(r: ScanResult, opened: Opened[], o: { elapsed_ms: number; limit: number; volume_uuid: string | undefined; layouts: Layouts | { why: string } }): void {
  const out = (s = "") => process.stdout.write(`${s}\n`);
  for (const f of opened) out(describeFile(f));
  const bytes = r.files.reduce((s, f) => s + f.area.bytes, 0);
  const secs = o.elapsed_ms / 1000;
  const l = o.layouts;
  out("placement" in l
    ? `placement: exact, from the layouts of ${l.volumes.map((v) => `${v.name} (${v.raid_level === "concatenated" ? "concatenated" : `RAID${v.raid_level}`})`).join(", ")} in the ${l.source}`
    : `placement: judged from the neighbours (${l.why})`);
  out(`scanned ${formatBytes(bytes)} in ${secs.toFixed(2)} s (${(bytes / 1e6 / Math.max(secs, 1e-6)).toFixed(0)} MB/s)${o.volume_uuid ? `, volume ${o.volume_uuid} only` : ""}`);
  out();
  const names = r.files.map((f) => basename(f.file));
  const rows = FILE_CLASSES.filter((c) => r.files.some((f) => f.counts[c] > 0)).map((c) => {
    const row: Record<string, unknown> = { class: c };
    r.files.forEach((f, i) => (row[names[i]!] = f.counts[c]));
    return row;
  });
  printTable(rows, ["class", ...names]);
  for (const f of r.files.filter((x) => x.stale_generation > 0)) {
    out(`${f.stale_generation} sectors of ${basename(f.file)} were written with a topology generation their writer had already left (stale_generation)`);
  }
  const unverified = r.files.filter((f) => f.placement_unverified > 0);
  for (const f of unverified) out(`(${f.placement_unverified} sectors of ${f.file} had no consistent neighbours to check their place against)`);
  if (r.peer) {
    const p = r.peer;
    const diffs = PEER_CLASSES.filter((c) => p.counts[c] > 0).map((c) => `${p.counts[c]} ${c}`);
    out();
    out(
      `legs compared at ${p.compared} positions: ${p.same} same${diffs.length ? `, ${diffs.join(", ")}` : ""}; ` +
        `${p.one_side_damaged} with one side damaged, ${p.unaligned} holding different blocks${p.unpaired ? `, ${p.unpaired} on one file only` : ""}`,
    );
  }
  if (r.clients.length > 0) {
    out();
    printTable(
      r.clients.map((c) => ({
        client: c.client_id,
        name: c.client_name || "-",
        sectors: c.sectors,
        generations: c.generation_min === c.generation_max ? `${c.generation_min}` : `${c.generation_min}..${c.generation_max}`,
        "last seq": c.seq_max,
      })),
    );
  }
  out();
  if (r.problems_total === 0) {
    out("no problems found");
    return;
  }
  const shown = r.problems.slice(0, o.limit);
  out(`${r.problems_total} problems${r.problems_total > shown.length ? ` (first ${shown.length} below; --json lists ${r.problems_truncated ? `the first ${r.problems.length}` : "all"})` : ""}:`);
  printTable(
    shown.map((p) => ({
      file: basename(p.file) + (p.peer_file ? ` ↔ ${basename(p.peer_file)}` : ""),
      position: p.position,
      lba: p.lba,
      class: p.class,
      culprit: p.culprit ? `client ${p.culprit.client_id}${p.culprit.client_name ? ` (${p.culprit.client_name})` : ""}` : null,
      reason: p.reason,
    })),
  );
}

const historyCommand = command({
  meta: { name: "history", description: "the recorded writes of one block, from every copy found (read-only)" },
  args: {
    file: { type: "positional", description: "drive file or block device", required: false },
    lba: { type: "string", description: "logical 512-byte sector of the volume" },
    ...common,
  },
  async run({ args }) {
    await guarded(async () => {
      const path = fileArg(args.file, "FILE");
      if (args.lba === undefined) throw new UsageError("missing --lba N");
      if (!/^\d+$/.test(args.lba) || !Number.isSafeInteger(Number(args.lba))) throw new UsageError(`--lba must be a non-negative integer, got '${args.lba}'`);
      const lba = Number(args.lba);
      const volume_uuid = volumeArg(args.volume);
      const raw = args.raw === true;
      const opened: Opened[] = [await openSource(path, raw)];
      try {
        if (args.peer !== undefined) opened.push(await openSource(fileArg(args.peer, "--peer FILE"), raw));
        const h = await blockHistory(opened.map((o) => o.source), { lba, volume_uuid });
        const layouts = raw ? null : await layoutsFromDrives(opened.map((o) => ({ name: o.source.name, store: o.file, located: o.located })));
        if (layouts !== null && "placement" in layouts) {
          for (const c of h.volumes.flatMap((v) => v.copies)) {
            const want = layouts.placement!(c.file, c.position);
            if (want !== null && (want.volume_uuid !== c.sector.volume_uuid || want.lba !== c.sector.lba)) {
              c.placement_problem = `misplaced: the layout puts LBA ${want.lba}${want.volume_uuid === c.sector.volume_uuid ? "" : ` of volume ${want.volume_uuid}`} at ${basename(c.file)}@${c.position}`;
            }
          }
        }
        if (args.json) {
          await printJson({ ...h, volumes: h.volumes.map((v) => ({ ...v, copies: v.copies.map((c) => ({ ...c, sector: { ...c.sector, data: undefined } })) })) });
        } else printHistory(h, opened);
        return historyHasProblems(h, opened) ? 1 : 0;
      } finally {
        for (const o of opened) await o.file.close();
      }
    });
  },
});

/** Damaged or misplaced copies, pattern disagreements, copies that hold different writes, or a
 * mirrored block with no copy on one of the two legs given. */
function historyHasProblems(h: BlockHistory, opened: Opened[]): boolean {
  return h.volumes.some(
    (v) =>
      v.copies.some((c) => c.class !== "ok" || c.pattern_problems.length > 0 || unlocked(c.sector) || c.placement_problem !== undefined) ||
      v.timeline.filter((e) => e.current_on.length > 0).length > 1 ||
      missingLegs(v, opened).length > 0,
  );
}

function unlocked(s: { leg_count: number; locked: boolean }): boolean {
  return s.leg_count >= 2 && !s.locked;
}

/** With two legs given: the files holding no copy of a mirrored block. */
function missingLegs(v: BlockHistory["volumes"][number], opened: Opened[]): string[] {
  if (opened.length < 2 || !v.copies.some((c) => c.sector.leg_count >= 2)) return [];
  return opened.map((o) => o.source.name).filter((n) => !v.copies.some((c) => c.file === n));
}

function printHistory(h: BlockHistory, opened: Opened[]): void {
  const out = (s = "") => process.stdout.write(`${s}\n`);
  for (const f of opened) out(describeFile(f));
  if (h.volumes.length === 0) {
    out();
    out(`no sector records LBA ${h.lba}${h.volume_filter ? ` of volume ${h.volume_filter}` : ""}: never written in debug format, or its copies are unreadable`);
    return;
  }
  for (const v of h.volumes) {
    out();
    out(`LBA ${h.lba} of volume ${v.volume_uuid}: ${v.copies.length} ${v.copies.length === 1 ? "copy" : "copies"}`);
    for (const m of missingLegs(v, opened)) out(`no copy on ${m}: that leg never received a write of this block (or lost them)`);
    printTable(
      v.copies.map((c) => ({
        copy: `${basename(c.file)}@${c.position}`,
        class: c.class,
        leg: c.sector.leg_index,
        writer: writeText(headerRecord(c.sector)),
        state: c.sector.topo_state,
        legs: legsText(c.sector.legs_mask),
        lock: c.sector.leg_count < 2 ? "-" : c.sector.locked ? "held" : "NOT HELD",
        io: `${c.sector.op}${c.sector.fua ? "+fua" : ""} ${c.sector.io_first_lba}+${c.sector.io_sectors}`,
        problems: [c.reason, c.placement_problem, ...c.pattern_problems].filter((x) => x).join("; ") || null,
      })),
    );
    out();
    out("writes of this block, oldest first:");
    printTable(
      v.timeline.map((e, i) => ({
        "#": i + 1,
        write: writeText(e.write),
        state: e.write.topo_state,
        legs: e.write.legs_mask ? legsText(e.write.legs_mask) : null,
        "current on": e.current_on.map((n) => basename(n)).join(", ") || null,
        "known by": e.known_by.map((n) => basename(n)).join(", "),
      })),
    );
  }
}

export const forensicsCommand = command({
  meta: { name: "forensics", description: "offline, read-only inspection of debug-format drives" },
  subCommands: { scan: scanCommand, history: historyCommand },
});
