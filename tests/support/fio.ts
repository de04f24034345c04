/**
 * fio through an NBD export for real-process tests and benchmarks: a verifying writer that runs
 * in the background while faults are injected, its JSON result, and the longest stall read from
 * its per-I/O latency log.
 */
import { closeSync, existsSync, fstatSync, openSync, readdirSync, readFileSync, readSync } from "node:fs";
import { Daemon, ok } from "./proc.ts";

export interface FioSide {
  io_bytes: number;
  total_ios: number;
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
  /**
   * Several jobs, each on a range of its own: job i writes `size` bytes from offset + i * size.
   * Their results are reported as one (group_reporting); each logs its own completions.
   */
  jobs?: number;
  /** Argv prefix fio runs under (e.g. `ip netns exec NS`, to run it on another host). */
  wrap?: string[];
  /** Log total latency only (no submission and completion logs): a third of the log to write. */
  lean_logs?: boolean;
  /**
   * Log one averaged entry per window of this many ms with completions (and an IOPS log) instead
   * of one per I/O: for long runs. Stalls are then known to the window.
   */
  log_avg_ms?: number;
  /** fio writes its whole JSON result every this many seconds too (see progress()). */
  status_s?: number;
}

/** How a fio run ended: its exit code, its summed job (null without a JSON result), its text. */
export interface FioOutcome {
  code: number;
  job: FioJob | null;
  /** fio's own messages (errors, verify failures), from its stdout and stderr. */
  output: string;
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
      `--write_lat_log=${this.lat_prefix}`, `--log_avg_msec=${opts.log_avg_ms ?? 0}`, "--output-format=json", `--output=${this.json}`,
    ];
    if (opts.log_avg_ms) args.push(`--write_iops_log=${this.lat_prefix}`);
    if (opts.status_s) args.push(`--status-interval=${opts.status_s}`);
    if (opts.offset) args.push(`--offset=${opts.offset}`);
    if (opts.runtime_s) args.push("--time_based", `--runtime=${opts.runtime_s}`);
    if (opts.jobs && opts.jobs > 1) args.push(`--numjobs=${opts.jobs}`, `--offset_increment=${opts.size}`, "--group_reporting");
    if (opts.lean_logs) args.push("--disable_slat=1", "--disable_clat=1");
    this.daemon = new Daemon(`fio ${opts.name}`, [...(opts.wrap ?? []), ...args]);
  }

  /** Waits for fio to end; throws with its output when it failed. */
  async result(timeout_ms = 180_000): Promise<FioJob> {
    const r = await this.finish(timeout_ms);
    if (r.code !== 0 || r.job === null) throw new Error(`fio ${this.opts.name} exited ${r.code}:\n${r.output}`);
    return r.job;
  }

  /** Waits for fio to end (killed after timeout_ms) and says how it ended, without judging it. */
  async finish(timeout_ms = 180_000): Promise<FioOutcome> {
    const timer = setTimeout(() => this.daemon.proc.kill("SIGKILL"), timeout_ms);
    const code = await this.daemon.proc.exited;
    clearTimeout(timer);
    const text = existsSync(this.json) ? readFileSync(this.json, "utf8") : "";
    const brace = text.indexOf("{");
    // A killed fio leaves no (or half a) JSON document: no result, the output says why.
    const job = lastResult(text);
    // Messages fio prints before its JSON go to the --output file too.
    return { code, job, output: `${this.daemon.output}${brace > 0 ? text.slice(0, brace) : brace < 0 ? text : ""}` };
  }

  /**
   * With status_s: the I/Os completed so far (reads and writes, every job), from the last status
   * fio wrote; null before the first.
   */
  progress(): number | null {
    if (!existsSync(this.json)) return null;
    const fd = openSync(this.json, "r");
    try {
      const size = fstatSync(fd).size;
      const tail = Buffer.alloc(Math.min(size, 256 * 1024));
      readSync(fd, tail, 0, tail.length, size - tail.length);
      const job = lastResult(tail.toString("utf8"));
      return job === null ? null : job.read.total_ios + job.write.total_ios;
    } finally {
      closeSync(fd);
    }
  }

  /** Asks fio to stop (SIGINT: it ends its jobs and writes its result) and waits for it. */
  async stop(timeout_ms = 120_000): Promise<FioOutcome> {
    if (this.daemon.alive) this.daemon.proc.kill("SIGINT");
    return await this.finish(timeout_ms);
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
    const times = this.completionTimes();
    let gap_ms = 0;
    let at_ms = 0;
    for (let i = 1; i < times.length; i++) {
      if (times[i - 1]! < from_ms || times[i - 1]! > to_ms) continue;
      if (times[i]! - times[i - 1]! > gap_ms) [gap_ms, at_ms] = [times[i]! - times[i - 1]!, times[i - 1]!];
    }
    return { gap_ms, at_ms, ios: times.length };
  }

  /**
   * When each I/O completed (ms since fio started), every job's, in order; with log_avg_ms, when
   * each window that had completions was logged.
   */
  completionTimes(): Float64Array {
    return Float64Array.from(this.logEntries("lat").map(([t]) => t)).sort();
  }

  /**
   * With log_avg_ms: when each job's log windows with completions ended (ms since fio started),
   * one sorted array per job in job order. fio writes one IOPS log per job (its latency log may
   * be one for all), so a job whose I/O stopped while the others went on shows here only.
   */
  jobCompletionTimes(): Float64Array[] {
    return this.logFiles("iops").map((f) => Float64Array.from(this.entries(f).map(([t]) => t)).sort());
  }

  /** With log_avg_ms: (ms since fio started, I/Os completed per second in that window), every job's. */
  iopsLog(): [number, number][] {
    return this.logEntries("iops");
  }

  /** The first two columns (time, value) of every job's log of a kind. */
  private logEntries(kind: "lat" | "iops"): [number, number][] {
    return this.logFiles(kind).flatMap((f) => this.entries(f));
  }

  /** The log files of a kind, in job order (fio names them PREFIX_KIND.JOB.log). */
  private logFiles(kind: "lat" | "iops"): string[] {
    const dir = this.opts.dir;
    const base = this.lat_prefix.slice(dir.length + 1);
    const job = (f: string) => Number(/\.(\d+)\.log$/.exec(f)?.[1] ?? 0);
    return readdirSync(dir)
      .filter((f) => f.startsWith(`${base}_${kind}.`) && f.endsWith(".log"))
      .sort((a, b) => job(a) - job(b))
      .map((f) => `${dir}/${f}`);
  }

  private entries(path: string): [number, number][] {
    const out: [number, number][] = [];
    for (const line of readFileSync(path, "utf8").split("\n")) {
      const [t, v] = line.split(",", 2);
      if (v !== undefined) out.push([Number(t), Number(v)]);
    }
    return out;
  }
}

/** The first job of the last complete JSON document in fio's output (status reports come first). */
function lastResult(output: string): FioJob | null {
  const text = `\n${output}`;
  for (let at = text.lastIndexOf(DOC_START); at >= 0; at = at > 0 ? text.lastIndexOf(DOC_START, at - 1) : -1) {
    try {
      const doc = JSON.parse(text.slice(at + 1, nextDoc(text, at))) as { jobs: FioJob[] };
      return doc.jobs[0] ?? null;
    } catch {
      // Incomplete (being written) or cut by the tail: the one before.
    }
  }
  return null;
}

const DOC_START = '\n{\n  "fio version"';
const nextDoc = (text: string, at: number) => {
  const n = text.indexOf(DOC_START, at + 1);
  return n < 0 ? text.length : n;
};

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
