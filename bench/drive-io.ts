/**
 * Which I/O path should a drive use? The same file, the same workloads, in one run, through:
 *   - FileStore: buffered I/O through Bun's async fs (its thread pool), the fallback store;
 *   - UringStore, buffered (page-aligned writes inline, or every write a ring op) and O_DIRECT:
 *     io_uring through bun:ffi (src/ffi/uring.ts);
 *   - fio's own io_uring engine, buffered and O_DIRECT: what C gets from the same kernel.
 * Workloads: 4 KiB random reads with a hot page cache and a cold one (posix_fadvise DONTNEED
 * first, so reads reach the device as they would on a drive bigger than RAM), 4 KiB random
 * writes, 128 KiB sequential reads and writes, FUA writes (and write + flush), and a flush with
 * nothing dirty. QD1 gives latency (p50, p99), deeper queues give throughput; our stores also
 * report the CPU they used per op (the whole process: the thread pool's threads included), fio
 * its own.
 *
 *   bun bench/drive-io.ts [--dir /path] [--size-mib 1024] [--seconds 3] [--only NAME]
 *
 * The numbers and the decisions they led to are in docs/on-drive-format.md ("I/O path").
 */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import type { DriveStore } from "../src/engine/drive/store.ts";
import { FileStore } from "../src/engine/runtime/file-store.ts";
import { UringStore } from "../src/engine/runtime/uring-store.ts";
import { alignedBuffer, libc, POSIX_FADV_DONTNEED } from "../src/ffi/libc.ts";
import { requireTool, run } from "../tests/support/proc.ts";
import { flag, printTable } from "./common.ts";

const dir = flag("dir", os.tmpdir());
const size_bytes = Number(flag("size-mib", "1024")) * 1024 * 1024;
const SECONDS = Number(flag("seconds", "3"));
const ONLY = flag("only", "");
const file = path.join(dir, `nvmesh-drive-io-${process.pid}.img`);

interface Workload {
  name: string;
  rw: "randread" | "randwrite" | "read" | "write" | "fua" | "write+flush" | "flush";
  bs: number;
  qd: number;
  cold?: boolean;
}

const WORKLOADS: Workload[] = [
  { name: "4k randread QD1 hot", rw: "randread", bs: 4096, qd: 1 },
  { name: "4k randread QD32 hot", rw: "randread", bs: 4096, qd: 32 },
  { name: "4k randread QD1 cold", rw: "randread", bs: 4096, qd: 1, cold: true },
  { name: "4k randread QD32 cold", rw: "randread", bs: 4096, qd: 32, cold: true },
  { name: "4k randwrite QD1", rw: "randwrite", bs: 4096, qd: 1 },
  { name: "4k randwrite QD32", rw: "randwrite", bs: 4096, qd: 32 },
  { name: "128k read QD8", rw: "read", bs: 131072, qd: 8 },
  { name: "128k write QD8", rw: "write", bs: 131072, qd: 8 },
  { name: "4k FUA write QD1", rw: "fua", bs: 4096, qd: 1 },
  { name: "4k write + flush QD1", rw: "write+flush", bs: 4096, qd: 1 },
  { name: "flush, nothing dirty QD1", rw: "flush", bs: 4096, qd: 1 },
];

interface Result {
  iops: number;
  p50_us: number;
  p99_us: number;
  cpu_us: number;
}

let seed = 0x9e3779b9;
function randomBlock(bs: number): number {
  seed ^= seed << 13;
  seed ^= seed >>> 17;
  seed ^= seed << 5;
  return ((seed >>> 0) % (size_bytes / bs)) * bs;
}

function pct(sorted: number[], p: number): number {
  return sorted.length === 0 ? NaN : sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))]!;
}

function dropCache(): void {
  const fd = fs.openSync(file, "r");
  try {
    fs.fdatasyncSync(fd);
    const c = libc();
    if (c === null || c.fadvise(fd, 0, 0, POSIX_FADV_DONTNEED) !== 0) throw new Error("posix_fadvise(DONTNEED) failed");
  } finally {
    fs.closeSync(fd);
  }
}

/** Runs the workload against a store for SECONDS (cold reads: a bounded number of ops, all misses). */
async function measureStore(store: DriveStore, w: Workload): Promise<Result> {
  const lat: number[] = [];
  let ops = 0;
  let seq = 0;
  const limit = w.cold ? (w.qd === 1 ? 3000 : 20000) : Infinity;
  const deadline = performance.now() + SECONDS * 1000;
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  const worker = async () => {
    const buf = alignedBuffer(w.bs);
    buf.fill(0x5a);
    while (performance.now() < deadline && ops < limit) {
      ops++;
      const off = w.rw === "read" || w.rw === "write" ? (seq++ * w.bs) % size_bytes : randomBlock(w.bs);
      const s = performance.now();
      switch (w.rw) {
        case "randread":
        case "read":
          await store.read(off, buf);
          break;
        case "randwrite":
        case "write":
          await store.write(off, buf, false);
          break;
        case "fua":
          await store.write(off, buf, true);
          break;
        case "write+flush":
          await store.write(off, buf, false);
          await store.flush();
          break;
        case "flush":
          await store.flush();
          break;
      }
      if (w.qd === 1) lat.push((performance.now() - s) * 1000);
    }
  };
  await Promise.all(Array.from({ length: w.qd }, worker));
  const secs = (performance.now() - t0) / 1000;
  const cpu = process.cpuUsage(cpu0);
  lat.sort((a, b) => a - b);
  return { iops: ops / secs, p50_us: pct(lat, 0.5), p99_us: pct(lat, 0.99), cpu_us: (cpu.user + cpu.system) / ops };
}

interface FioSide {
  iops: number;
  clat_ns: { percentile?: Record<string, number> };
  lat_ns: { mean: number };
}

/** fio's io_uring engine on the same file and workload. */
async function measureFio(w: Workload, direct: boolean): Promise<Result | null> {
  if (w.rw === "write+flush" || w.rw === "flush") return null; // no such fio workload
  const out = `${file}.fio.json`;
  const rw = w.rw === "fua" ? "randwrite" : w.rw;
  const args = [
    "fio", "--name=bench", `--filename=${file}`, "--ioengine=io_uring", `--rw=${rw}`, `--bs=${w.bs}`, `--iodepth=${w.qd}`,
    `--direct=${direct ? 1 : 0}`, `--size=${size_bytes}`, "--randrepeat=0", "--output-format=json", `--output=${out}`,
    ...(w.rw === "fua" ? ["--fdatasync=1"] : []),
    ...(w.cold ? ["--invalidate=1", `--number_ios=${w.qd === 1 ? 3000 : 20000}`] : ["--invalidate=0", `--runtime=${Math.round(SECONDS * 1000)}ms`, "--time_based"]),
  ];
  const r = await run(args, { timeout_ms: (SECONDS + 120) * 1000 });
  if (r.code !== 0) throw new Error(`fio failed: ${r.stderr}`);
  const text = fs.readFileSync(out, "utf8");
  const j = JSON.parse(text.slice(text.indexOf("{"))) as {
    jobs: { read: FioSide; write: FioSide; usr_cpu: number; sys_cpu: number; job_runtime: number }[];
  };
  const job = j.jobs[0]!;
  const side = rw.includes("read") ? job.read : job.write;
  const p = side.clat_ns.percentile ?? {};
  const ops = side.iops * (job.job_runtime / 1000);
  const cpu_us = (((job.usr_cpu + job.sys_cpu) / 100) * job.job_runtime * 1000) / Math.max(1, ops);
  // With --fdatasync fio times the write alone, not its sync: only the rate says what a FUA costs.
  const timed = w.rw !== "fua";
  return { iops: side.iops, p50_us: timed ? (p["50.000000"] ?? NaN) / 1000 : NaN, p99_us: timed ? (p["99.000000"] ?? NaN) / 1000 : NaN, cpu_us };
}

function prepare(): void {
  const fd = fs.openSync(file, "w");
  const chunk = new Uint8Array(1 << 20);
  for (let i = 0; i < chunk.length; i++) chunk[i] = (i * 131) & 0xff;
  for (let off = 0; off < size_bytes; off += chunk.length) fs.writeSync(fd, chunk, 0, chunk.length, off);
  fs.fdatasyncSync(fd);
  fs.closeSync(fd);
}

const STORES: [string, () => Promise<DriveStore>][] = [
  ["thread pool (FileStore)", () => FileStore.open(file)],
  ["io_uring buffered (inline writes)", () => UringStore.open(file)],
  ["io_uring buffered, ring writes", () => UringStore.open(file, { inline_writes: false })],
  ["io_uring O_DIRECT", () => UringStore.open(file, { direct: true })],
];

async function main(): Promise<void> {
  requireTool("fio");
  console.log(`# drive-io: ${size_bytes / 2 ** 20} MiB file at ${file}, ${SECONDS} s per point`);
  prepare();
  const f0 = (x: number) => (Number.isNaN(x) ? "-" : x.toFixed(0));
  const f1 = (x: number) => (Number.isNaN(x) ? "-" : x.toFixed(1));
  const rows: Record<string, string>[] = [];
  try {
    for (const w of WORKLOADS) {
      if (ONLY && !w.name.includes(ONLY)) continue;
      const results: [string, Result | null][] = [];
      for (const [name, open] of STORES) {
        // O_DIRECT reads bypass the cache: hot and cold are the same run, so only cold is shown.
        if (name.includes("O_DIRECT") && w.rw === "randread" && !w.cold) {
          results.push([name, null]);
          continue;
        }
        if (w.cold) dropCache();
        const store = await open();
        try {
          results.push([name, await measureStore(store, w)]);
        } finally {
          await store.close();
        }
      }
      for (const direct of [false, true]) {
        if (direct && w.rw === "randread" && !w.cold) {
          results.push(["fio io_uring O_DIRECT", null]);
          continue;
        }
        if (w.cold) dropCache();
        results.push([`fio io_uring ${direct ? "O_DIRECT" : "buffered"}`, await measureFio(w, direct)]);
      }
      for (const [name, r] of results) {
        if (r === null) continue;
        rows.push({
          workload: w.name,
          path: name,
          IOPS: f0(r.iops),
          "MiB/s": f0((r.iops * w.bs) / 2 ** 20),
          "p50 us": w.qd === 1 ? f1(r.p50_us) : "-",
          "p99 us": w.qd === 1 ? f1(r.p99_us) : "-",
          "CPU us/op": f1(r.cpu_us),
        });
        console.log(`${w.name} | ${name}: ${f0(r.iops)} IOPS${w.qd === 1 ? `, p50 ${f1(r.p50_us)} us, p99 ${f1(r.p99_us)} us` : ""}, ${f1(r.cpu_us)} us CPU/op`);
      }
    }
  } finally {
    fs.rmSync(file, { force: true });
    fs.rmSync(`${file}.fio.json`, { force: true });
  }
  printTable(rows);
}

await main();
