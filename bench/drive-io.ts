/**
 * Which I/O path should FileStore use? Measures 4 KiB random reads and writes on a 1 GiB file for
 * buffered sync calls (fs.readSync/writeSync), async fs (Bun's threadpool) and O_DIRECT (both
 * sync and async, 4096-aligned buffers), at QD1 (latency) and QD32 (throughput), with a hot page
 * cache and, for reads, a cold one (posix_fadvise DONTNEED before the run, so reads hit the
 * device as they would for a drive bigger than RAM). Also the cost of a FUA write: write +
 * fdatasync against a write on an O_DSYNC descriptor.
 *
 *   bun bench/drive-io.ts [--dir /path] [--size-mib 1024]
 *
 * The numbers and the decision are recorded in docs/on-drive-format.md ("I/O path").
 */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { alignedBuffer, libc, POSIX_FADV_DONTNEED } from "../src/ffi/libc.ts";

const BLOCK = 4096;
const args = process.argv.slice(2);
const argOf = (name: string, dflt: string) => {
  const i = args.indexOf(name);
  return i >= 0 && args[i + 1] ? args[i + 1]! : dflt;
};
const dir = argOf("--dir", os.tmpdir());
const size_bytes = Number(argOf("--size-mib", "1024")) * 1024 * 1024;
const blocks = size_bytes / BLOCK;
const file = path.join(dir, `nvmesh-drive-io-${process.pid}.img`);

let seed = 0x9e3779b9;
function nextBlock(): number {
  seed ^= seed << 13;
  seed ^= seed >>> 17;
  seed ^= seed << 5;
  return ((seed >>> 0) % blocks) * BLOCK;
}

type Op = (buf: Uint8Array, offset: number) => Promise<void> | void;

function pct(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))]!;
}

async function qd1(op: Op, buf: Uint8Array, n: number): Promise<{ p50: number; p99: number; iops: number }> {
  const lat: number[] = new Array(n);
  const t0 = performance.now();
  for (let i = 0; i < n; i++) {
    const s = performance.now();
    await op(buf, nextBlock());
    lat[i] = (performance.now() - s) * 1000;
  }
  const total_s = (performance.now() - t0) / 1000;
  lat.sort((a, b) => a - b);
  return { p50: pct(lat, 0.5), p99: pct(lat, 0.99), iops: n / total_s };
}

async function qd32(op: Op, bufs: Uint8Array[], n: number): Promise<number> {
  let issued = 0;
  const t0 = performance.now();
  await Promise.all(
    bufs.map(async (buf) => {
      while (issued < n) {
        issued++;
        await op(buf, nextBlock());
      }
    }),
  );
  return n / ((performance.now() - t0) / 1000);
}

function syncRead(fd: number): Op {
  return (buf, off) => void fs.readSync(fd, buf, 0, buf.length, off);
}
function syncWrite(fd: number): Op {
  return (buf, off) => void fs.writeSync(fd, buf, 0, buf.length, off);
}
function asyncRead(fd: number): Op {
  return (buf, off) =>
    new Promise((res, rej) => fs.read(fd, buf, 0, buf.length, off, (e) => (e ? rej(e) : res())));
}
function asyncWrite(fd: number): Op {
  return (buf, off) =>
    new Promise((res, rej) => fs.write(fd, buf, 0, buf.length, off, (e) => (e ? rej(e) : res())));
}

function dropCache(fd: number): void {
  fs.fdatasyncSync(fd);
  const c = libc();
  if (c === null || c.fadvise(fd, 0, 0, POSIX_FADV_DONTNEED) !== 0) throw new Error("fadvise failed");
}

function prepare(): void {
  const fd = fs.openSync(file, "w");
  const chunk = new Uint8Array(1 << 20);
  for (let i = 0; i < chunk.length; i++) chunk[i] = (i * 131) & 0xff;
  for (let off = 0; off < size_bytes; off += chunk.length) fs.writeSync(fd, chunk, 0, chunk.length, off);
  fs.fdatasyncSync(fd);
  fs.closeSync(fd);
}

interface Row {
  path: string;
  cache: string;
  read_p50_us: string;
  read_p99_us: string;
  read_qd32_iops: string;
  write_p50_us: string;
  write_p99_us: string;
  write_qd32_iops: string;
}

const f0 = (x: number) => x.toFixed(0);
const f1 = (x: number) => x.toFixed(1);

async function measure(
  name: string,
  flags: number,
  mk: { read: (fd: number) => Op; write: (fd: number) => Op },
  aligned: boolean,
  cold: boolean,
): Promise<Row> {
  const fd = fs.openSync(file, flags);
  const alloc = () => (aligned ? alignedBuffer(BLOCK) : new Uint8Array(BLOCK));
  const one = alloc();
  const many = Array.from({ length: 32 }, alloc);
  const n1 = cold ? 3000 : 20000;
  const n32 = cold ? 20000 : 100000;
  if (cold) dropCache(fd);
  const r1 = await qd1(mk.read(fd), one, n1);
  if (cold) dropCache(fd);
  const r32 = await qd32(mk.read(fd), many, n32);
  // Writes: buffered writes only dirty the page cache (cold/hot is the same to them), so measure
  // them once per path, on the hot run; the flush cost is measured separately below.
  let w1 = { p50: NaN, p99: NaN, iops: NaN };
  let w32 = NaN;
  if (!cold) {
    w1 = await qd1(mk.write(fd), one, n1);
    w32 = await qd32(mk.write(fd), many, n32);
    fs.fdatasyncSync(fd);
  }
  fs.closeSync(fd);
  return {
    path: name,
    cache: cold ? "cold" : "hot",
    read_p50_us: f1(r1.p50),
    read_p99_us: f1(r1.p99),
    read_qd32_iops: f0(r32),
    write_p50_us: cold ? "-" : f1(w1.p50),
    write_p99_us: cold ? "-" : f1(w1.p99),
    write_qd32_iops: cold ? "-" : f0(w32),
  };
}

async function fuaCost(): Promise<Record<string, string>[]> {
  const buf = new Uint8Array(BLOCK).fill(7);
  const out: Record<string, string>[] = [];
  const n = 2000;
  const variants: [string, number, (fd: number, b: Uint8Array, off: number) => void][] = [
    ["write + fdatasync", fs.constants.O_RDWR, (fd, b, off) => {
      fs.writeSync(fd, b, 0, b.length, off);
      fs.fdatasyncSync(fd);
    }],
    ["write on O_DSYNC fd", fs.constants.O_RDWR | fs.constants.O_DSYNC, (fd, b, off) => {
      fs.writeSync(fd, b, 0, b.length, off);
    }],
    ["fdatasync, nothing dirty", fs.constants.O_RDWR, (fd) => fs.fdatasyncSync(fd)],
  ];
  for (const [name, flags, op] of variants) {
    const fd = fs.openSync(file, flags);
    const r = await qd1((b, off) => op(fd, b, off), buf, n);
    fs.closeSync(fd);
    out.push({ fua_path: name, p50_us: f1(r.p50), p99_us: f1(r.p99), ops_per_s: f0(r.iops) });
  }
  return out;
}

async function main(): Promise<void> {
  console.log(`# drive-io: ${size_bytes / 2 ** 20} MiB file at ${file}, 4 KiB random I/O`);
  prepare();
  const { O_RDWR, O_DIRECT } = fs.constants;
  const sync = { read: syncRead, write: syncWrite };
  const async_ = { read: asyncRead, write: asyncWrite };
  const rows: Row[] = [];
  try {
    for (const cold of [false, true]) {
      rows.push(await measure("buffered sync (readSync/writeSync)", O_RDWR, sync, false, cold));
      rows.push(await measure("buffered async (fs.read/write, threadpool)", O_RDWR, async_, false, cold));
      if (!cold) {
        // O_DIRECT bypasses the cache: hot and cold are the same run.
        rows.push(await measure("O_DIRECT sync (aligned)", O_RDWR | O_DIRECT, sync, true, false));
        rows.push(await measure("O_DIRECT async (aligned)", O_RDWR | O_DIRECT, async_, true, false));
      }
    }
    console.table(rows);
    console.table(await fuaCost());
  } finally {
    fs.rmSync(file, { force: true });
  }
}

await main();
