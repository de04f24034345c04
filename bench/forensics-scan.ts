/**
 * How fast `nvmesh forensics scan` reads a drive, against the raw sequential read of the same
 * file in the same run (`cat FILE > /dev/null` and `dd bs=4M`).
 *
 * Builds a formatted drive file (default 1 GiB, 16 MiB extents) whose extents hold valid debug
 * sectors of a verify run (each with a predicted history), except every fourth extent, which is
 * left sparse (never written: holes that read as zero). Then, page cache warm for every reader:
 *   - the scan in this process (the library, as the CLI runs it),
 *   - the compiled binary `dist/nvmesh forensics scan FILE --json` (process start included),
 *   - cat and dd of the same file.
 *
 *   npm run build && node_modules/.bin/bun bench/forensics-scan.ts [--dir /path] [--size-mib 1024] [--runs 3]
 */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { locateDataArea } from "../src/debugfmt/drive-area.ts";
import { dataFor, passPermutation, unpermute } from "../src/debugfmt/pattern.ts";
import { ReadOnlyFile } from "../src/debugfmt/runtime/readonly-file.ts";
import { scan } from "../src/debugfmt/scan.ts";
import { SECTOR_BYTES } from "../src/debugfmt/sector.ts";
import { encodeIoForLeg, ioSectorFields } from "../src/debugfmt/write.ts";
import { formatDrive } from "../src/engine/drive/format.ts";
import { FileStore } from "../src/engine/runtime/file-store.ts";

const args = process.argv.slice(2);
const argOf = (name: string, dflt: string) => {
  const i = args.indexOf(name);
  return i >= 0 && args[i + 1] ? args[i + 1]! : dflt;
};
const dir = argOf("--dir", os.tmpdir());
const size_bytes = Number(argOf("--size-mib", "1024")) * 2 ** 20;
const runs = Number(argOf("--runs", "3"));
const file = path.join(dir, `nvmesh-forensics-bench-${process.pid}.img`);
const ROOT = new URL("..", import.meta.url).pathname;
const BIN = path.join(ROOT, "dist/nvmesh");

async function build(): Promise<{ written: number; sparse: number; area_bytes: number }> {
  const store = await FileStore.open(file, { create_size_bytes: size_bytes });
  const sb = await formatDrive(store, { drive_uuid: "b3c4d5e6-0000-4000-8000-000000000001" });
  await store.close();
  const perExtent = sb.extent_size_bytes / SECTOR_BYTES;
  const volume_uuid = "c4d5e6f7-0000-4000-8000-000000000002";
  // The volume: LBA n at position n; a verify run of 4 workers over all of it, 4 KiB blocks.
  const positions = sb.extent_count * perExtent;
  const spec = { seed_id: 42, workers: 4, blocks: positions / 8, block_sectors: 8, base_lba: 0 };
  const fd = fs.openSync(file, "r+");
  const batch = new Uint8Array(4 << 20);
  const data = new Uint8Array(8 * 512);
  let written = 0;
  let sparse = 0;
  try {
    for (let e = 0; e < sb.extent_count; e++) {
      if (e % 4 === 3) {
        sparse++;
        continue;
      }
      for (let off = 0; off < sb.extent_size_bytes; off += batch.length) {
        for (let o = 0; o < batch.length; o += 8 * SECTOR_BYTES) {
          const lba = (e * sb.extent_size_bytes + off + o) / SECTOR_BYTES;
          const block = lba / 8;
          const worker = block % spec.workers;
          // The block as the owner's pass 1 writes it: one earlier write in its history.
          const M = Math.floor((spec.blocks - 1 - worker) / spec.workers) + 1;
          const step = stepWriting(spec, worker, (block - worker) / spec.workers, M);
          for (let i = 0; i < 8; i++) data.set(dataFor({ ...spec, worker, step }, lba + i), i * 512);
          const fields = ioSectorFields({ volume_uuid, client_id: 100 + worker, client_name: `bench${worker}` }, {
            op: "write", fua: false, first_lba: lba, sectors: 8, seq: step + 1, generation: 1, topo_state: "normal", leg_count: 1, legs_mask: 1, locked: false, history_depth: 1,
          }, data);
          encodeIoForLeg(fields, data, 0, batch.subarray(o, o + 8 * SECTOR_BYTES));
        }
        fs.writeSync(fd, batch, 0, batch.length, sb.data_offset + e * sb.extent_size_bytes + off);
        written += batch.length;
      }
    }
  } finally {
    fs.closeSync(fd);
  }
  return { written, sparse, area_bytes: positions * SECTOR_BYTES };
}

/** The step of pass 1 at which the owner writes its x-th block. */
function stepWriting(spec: { seed_id: number; workers: number; blocks: number; block_sectors: number; base_lba: number }, worker: number, x: number, M: number): number {
  return M + unpermute(passPermutation(spec, worker, 1), x);
}

async function timeScan(): Promise<{ seconds: number; problems: number; ok: number }> {
  const drive = ReadOnlyFile.open(file);
  try {
    const loc = await locateDataArea(drive, { raw: false });
    if ("error" in loc) throw new Error(loc.error);
    const t0 = performance.now();
    const r = await scan({ name: file, drive, area: loc.area });
    return { seconds: (performance.now() - t0) / 1000, problems: r.problems_total, ok: r.files[0]!.counts.ok };
  } finally {
    await drive.close();
  }
}

async function timeCmd(cmd: string[]): Promise<{ seconds: number; code: number; stdout: string }> {
  const t0 = performance.now();
  const p = Bun.spawn(cmd, { stdout: "pipe", stderr: "inherit" });
  const stdout = await new Response(p.stdout).text();
  const code = await p.exited;
  return { seconds: (performance.now() - t0) / 1000, code, stdout };
}

const best = (xs: number[]) => Math.min(...xs);
const mbs = (bytes: number, s: number) => (bytes / 1e6 / s).toFixed(0);

try {
  console.log(`building ${size_bytes / 2 ** 20} MiB drive file ${file} ...`);
  const t0 = performance.now();
  const b = await build();
  console.log(`  ${b.written / 2 ** 20} MiB of debug sectors written, ${b.sparse} extents sparse, in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  await timeCmd(["sh", "-c", `cat '${file}' > /dev/null`]); // warm the page cache for everyone

  const lib: number[] = [];
  const bin: number[] = [];
  const cat: number[] = [];
  const dd: number[] = [];
  for (let i = 0; i < runs; i++) {
    const s = await timeScan();
    if (s.problems !== 0) throw new Error(`the bench file should scan clean, found ${s.problems} problems`);
    lib.push(s.seconds);
    if (fs.existsSync(BIN)) {
      const r = await timeCmd([BIN, "forensics", "scan", file, "--json"]);
      if (r.code !== 0) throw new Error(`dist/nvmesh forensics scan exited ${r.code}`);
      bin.push(r.seconds);
    }
    cat.push((await timeCmd(["sh", "-c", `cat '${file}' > /dev/null`])).seconds);
    dd.push((await timeCmd(["dd", `if=${file}`, "of=/dev/null", "bs=4M", "status=none"])).seconds);
  }
  const fileBytes = size_bytes;
  console.log(`\nbest of ${runs} runs, page cache warm, file ${fileBytes / 2 ** 20} MiB (data area ${(b.area_bytes / 2 ** 20).toFixed(0)} MiB):`);
  console.log(`  scan (library)         ${best(lib).toFixed(2)} s  ${mbs(b.area_bytes, best(lib))} MB/s`);
  if (bin.length) console.log(`  scan (dist/nvmesh)     ${best(bin).toFixed(2)} s  ${mbs(b.area_bytes, best(bin))} MB/s  (process start and JSON output included)`);
  else console.log("  scan (dist/nvmesh)     skipped: run 'npm run build' first");
  console.log(`  cat > /dev/null        ${best(cat).toFixed(2)} s  ${mbs(fileBytes, best(cat))} MB/s`);
  console.log(`  dd bs=4M               ${best(dd).toFixed(2)} s  ${mbs(fileBytes, best(dd))} MB/s`);
  console.log(`\nscan time / cat time: ${(best(lib) / best(cat)).toFixed(1)}x (library), ${bin.length ? (best(bin) / best(cat)).toFixed(1) : "-"}x (binary)`);
} finally {
  fs.rmSync(file, { force: true });
}
