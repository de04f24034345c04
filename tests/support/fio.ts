/**
 * fio through an NBD export for real-process tests and benchmarks: a verifying writer that runs
 * in the background while faults are injected, its JSON result, and the longest stall read from
 * its per-I/O latency log.
 */
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { Daemon, ok } from "./proc.ts";

export interface FioSide {
  io_bytes: number;
  iops: number;
  bw_bytes: number;
  lat_ns: { mean: number; max: number };
  clat_ns: { mean: number; max: number; percentile?: Record<string, number> };
}

export interface FioJob {
  error: number;
  read: FioSide;
  write: FioSide;
}

export interface VerifyOptions {
  uri: string;
  /** Folder for fio's JSON output and its latency log. */
  dir: string;
  name: string;
  /** Byte range of the volume written (fio's offset and size). */
  offset?: string;
  size: string;
  bs?: string;
  iodepth?: number;
  /** Runs this long (time based); without it, one pass over the range then the verify pass. */
  runtime_s?: number;
}

/**
 * fio writing random blocks with crc32c checksums and reading them back as it goes
 * (verify_backlog): every block written is verified, during the run and at its end.
 */
export class FioVerify {
  readonly daemon: Daemon;
  readonly json: string;
  readonly lat_prefix: string;
  /** performance.now() when fio was started: its log's time 0, give or take its start-up. */
  readonly started_ms: number;

  constructor(readonly opts: VerifyOptions) {
    this.started_ms = performance.now();
    this.json = `${opts.dir}/${opts.name}.json`;
    this.lat_prefix = `${opts.dir}/${opts.name}`;
    const args = [
      "fio", `--name=${opts.name}`, "--ioengine=nbd", `--uri=${opts.uri}`, "--rw=randwrite",
      `--bs=${opts.bs ?? "4k"}`, `--iodepth=${opts.iodepth ?? 16}`, `--size=${opts.size}`,
      "--verify=crc32c", "--verify_backlog=256", "--do_verify=1", "--verify_fatal=1", "--verify_state_save=0",
      `--write_lat_log=${this.lat_prefix}`, "--log_avg_msec=0", "--output-format=json", `--output=${this.json}`,
    ];
    if (opts.offset) args.push(`--offset=${opts.offset}`);
    if (opts.runtime_s) args.push("--time_based", `--runtime=${opts.runtime_s}`);
    this.daemon = new Daemon(`fio ${opts.name}`, args);
  }

  /** Waits for fio to end; throws with its output when it failed. */
  async result(timeout_ms = 180_000): Promise<FioJob> {
    const timer = setTimeout(() => this.daemon.proc.kill("SIGKILL"), timeout_ms);
    const code = await this.daemon.proc.exited;
    clearTimeout(timer);
    const text = existsSync(this.json) ? readFileSync(this.json, "utf8") : "";
    if (code !== 0) throw new Error(`fio ${this.opts.name} exited ${code}:\n${this.daemon.output}\n${text.slice(0, 4000)}`);
    const j = JSON.parse(text.slice(text.indexOf("{"))) as { jobs: FioJob[] };
    return j.jobs[0]!;
  }

  /** fio's log time (ms) of a performance.now() reading taken in this process. */
  fioTime(now_ms: number): number {
    return now_ms - this.started_ms;
  }

  /**
   * The longest time between two I/O completions, and when it began (ms since fio started);
   * only gaps that begin within [from_ms, to_ms] of fio's time when given.
   */
  longestStall(from_ms = 0, to_ms = Infinity): { gap_ms: number; at_ms: number; ios: number } {
    const dir = this.opts.dir;
    const base = this.lat_prefix.slice(dir.length + 1);
    const files = readdirSync(dir).filter((f) => f.startsWith(`${base}_lat.`) && f.endsWith(".log"));
    const times: number[] = [];
    for (const f of files) {
      for (const line of readFileSync(`${dir}/${f}`, "utf8").split("\n")) {
        const comma = line.indexOf(",");
        if (comma > 0) times.push(Number(line.slice(0, comma)));
      }
    }
    times.sort((a, b) => a - b);
    let gap_ms = 0;
    let at_ms = 0;
    for (let i = 1; i < times.length; i++) {
      if (times[i - 1]! < from_ms || times[i - 1]! > to_ms) continue;
      if (times[i]! - times[i - 1]! > gap_ms) [gap_ms, at_ms] = [times[i]! - times[i - 1]!, times[i - 1]!];
    }
    return { gap_ms, at_ms, ios: times.length };
  }
}

/** Writes `bytes` of random data at `offset` of the export (nbdcopy from a file) and flushes. */
export async function fillRandom(uri: string, dir: string, name: string, bytes: number): Promise<Uint8Array> {
  const data = new Uint8Array(bytes);
  for (let i = 0; i < bytes; i += 65536) crypto.getRandomValues(data.subarray(i, Math.min(bytes, i + 65536)));
  const path = `${dir}/${name}`;
  await Bun.write(path, data);
  await ok(["nbdcopy", "--flush", path, uri], { timeout_ms: 120_000 });
  return data;
}

/** Reads the whole export into a file with nbdcopy and returns its bytes. */
export async function readAll(uri: string, dir: string, name: string): Promise<Uint8Array> {
  const path = `${dir}/${name}`;
  await ok(["nbdcopy", uri, path], { timeout_ms: 120_000 });
  return new Uint8Array(readFileSync(path));
}

/** Reads `length` bytes at `offset` of an nbd+unix export (qemu-img with a raw offset) into a file. */
export async function readRange(uri: string, dir: string, name: string, offset: number, length: number): Promise<Uint8Array> {
  const m = /^nbd\+unix:\/\/\/([^?]*)\?socket=(.+)$/.exec(uri);
  if (!m) throw new Error(`not an nbd+unix URI: ${uri}`);
  const path = `${dir}/${name}`;
  const opts = `driver=raw,offset=${offset},size=${length},file.driver=nbd,file.server.type=unix,file.server.path=${m[2]},file.export=${m[1]}`;
  await ok(["qemu-img", "convert", "-O", "raw", "--image-opts", opts, path], { timeout_ms: 120_000 });
  return new Uint8Array(readFileSync(path));
}
