/**
 * `nvmesh verify run`: the distributed, self-validating I/O generator. N worker processes, each
 * with its own NBD connection to an export of the volume (several client daemons' exports with
 * --uri given several times), each the verify pattern's worker w (src/debugfmt/pattern.ts): it
 * writes its own blocks and reads and checks anyone's (src/debugfmt/verify-check.ts). The workers
 * never talk to each other or to this process until they end. A worker that finds a mismatch
 * stops and reports the block, what it expected and what it found.
 *
 * Over NBD a worker sees the logical data only: it checks the data (its stamp and every byte) and
 * that no block goes back in time. The debug headers and histories stay on the drives, for
 * `nvmesh forensics scan` after the run.
 *
 * Exit codes: 0 every worker clean, 1 a mismatch, an I/O error or a worker that died, 2 usage.
 */
import { basename } from "node:path";
import { consola } from "consola";
import type { PatternSpec } from "../debugfmt/pattern.ts";
import { patternSpecProblem } from "../debugfmt/pattern.ts";
import { runVerifyWorker, type VerifyWorkerResult } from "../debugfmt/verify-worker.ts";
import { connectNbd } from "../engine/nbd/client.ts";
import { parseNbdUri } from "../engine/nbd/uri.ts";
import { realEnv } from "../engine/runtime/real-env.ts";
import { parsePositiveInt, parseSize, repeated, UsageError } from "./args.ts";
import { type Attachment, control, runDir } from "./client-control.ts";
import { command } from "./command.ts";
import { printJson, printTable } from "./output.ts";
import { selfCommand } from "./self.ts";

/** "30s", "500ms", "2m" → milliseconds. */
function parseDuration(text: string): number {
  const m = /^(\d+)(ms|s|m)?$/.exec(text);
  if (!m || Number(m[1]) <= 0) throw new UsageError(`invalid --duration '${text}': use e.g. 60s, 500ms or 2m`);
  return Number(m[1]) * (m[2] === "ms" ? 1 : m[2] === "m" ? 60_000 : 1000);
}

function parseSeed(text: string | undefined): number {
  const seed = Number(text ?? "1");
  if (!/^\d+$/.test(text ?? "1") || seed < 1 || seed > 0xffff_ffff) throw new UsageError(`--seed must be 1..4294967295, got '${text}'`);
  return seed;
}

async function openExport(uri: string) {
  const target = parseNbdUri(uri);
  if (typeof target === "string") throw new UsageError(target);
  try {
    return await connectNbd(realEnv("verify"), target.address, target.export_name);
  } catch (e) {
    throw new Error(`${uri}: ${(e as Error).message}; is the volume exported there? ('nvmesh client show' lists this host's exports)`);
  }
}

/** The URIs the workers use: given, or the local client daemon's export of the volume. */
async function exportsOf(volume: string | undefined, uris: string[], dir: string | undefined): Promise<string[]> {
  if (uris.length > 0) return uris;
  if (volume === undefined) throw new UsageError("give --volume (attached on this host) or --uri");
  const attached = await control<Attachment[]>(runDir(dir), "GET", "/v1/attachments");
  const a = attached.find((x) => x.volume === volume);
  if (!a) throw new Error(`volume ${volume} is not attached on this host: nvmesh client attach --volume ${volume} (or give --uri)`);
  return [a.uri];
}

interface WorkerOutcome {
  worker: number;
  uri: string;
  result: VerifyWorkerResult | null;
  /** The process died or printed no result. */
  crash: string | null;
}

const run = command({
  meta: { name: "run", description: "several worker processes write and check a volume over NBD; report any mismatch" },
  args: {
    volume: { type: "string", description: "volume attached on this host (its NBD export is used)" },
    uri: { type: "string", description: "NBD URI of an export of the volume; repeat for several clients (worker w uses URI w mod n)" },
    clients: { type: "string", description: "worker processes (default 4)" },
    seed: { type: "string", description: "the run's seed, 1..2^32-1 (default 1); a new seed for each run on the same volume" },
    duration: { type: "string", description: "how long the workers run, e.g. 60s (default 30s)", default: "30s" },
    "block-size": { type: "string", description: "bytes each write and read covers, a multiple of 512 (default 4K)" },
    "reads-per-write": { type: "string", description: "random block reads after each write (default 1)" },
    "run-dir": { type: "string", description: "client daemon run directory (default /run/nvmesh, or NVMESH_RUN_DIR)" },
    json: { type: "boolean", description: "print the result as JSON" },
  },
  repeatable: ["uri"],
  async run({ args, rawArgs }) {
    const clients = parsePositiveInt(args.clients, "--clients") ?? 4;
    const seed = parseSeed(args.seed);
    const duration_ms = parseDuration(args.duration);
    const block_bytes = args["block-size"] === undefined ? 4096 : parseSize(args["block-size"], "--block-size");
    if (block_bytes % 512 !== 0) throw new UsageError("--block-size must be a multiple of 512");
    const reads_per_write = args["reads-per-write"] === undefined ? 1 : Number(args["reads-per-write"]);
    if (!Number.isInteger(reads_per_write) || reads_per_write < 0 || reads_per_write > 1000) throw new UsageError("--reads-per-write must be 0..1000");
    const uris = await exportsOf(args.volume, repeated(rawArgs, "uri"), args["run-dir"]);
    const probe = await openExport(uris[0]!);
    const size_bytes = probe.size_bytes;
    await probe.close();
    const spec: PatternSpec = { seed_id: seed, workers: clients, blocks: Math.floor(size_bytes / block_bytes), block_sectors: block_bytes / 512, base_lba: 0 };
    if (spec.blocks < clients) throw new UsageError(`the volume holds ${spec.blocks} blocks of ${block_bytes} bytes: fewer than --clients ${clients}`);
    const problem = patternSpecProblem(spec);
    if (problem) throw new UsageError(problem);
    if (!args.json) {
      consola.info(`verify: ${clients} workers on ${uris.length} export(s), seed ${seed}, ${spec.blocks} blocks of ${block_bytes} bytes, ${duration_ms / 1000} s`);
    }
    const t0 = performance.now();
    const outcomes = await Promise.all(
      Array.from({ length: clients }, (_, w) => runWorkerProcess(w, uris[w % uris.length]!, spec, duration_ms, reads_per_write)),
    );
    const elapsed_ms = Math.round(performance.now() - t0);
    const bad = outcomes.filter((o) => o.crash !== null || o.result?.mismatch || o.result?.error);
    if (args.json) {
      await printJson({ volume: args.volume ?? null, uris, seed, spec, duration_ms, elapsed_ms, workers: outcomes, problems: bad.length });
    } else printSummary(outcomes, elapsed_ms);
    process.exit(bad.length > 0 ? 1 : 0);
  },
});

/** One worker as a child process of this same binary; its result is the JSON line it prints. */
async function runWorkerProcess(worker: number, uri: string, spec: PatternSpec, duration_ms: number, reads_per_write: number): Promise<WorkerOutcome> {
  const cmd = [
    ...selfCommand(), "verify", "worker", "--uri", uri, "--worker", String(worker), "--workers", String(spec.workers),
    "--seed", String(spec.seed_id), "--blocks", String(spec.blocks), "--block-sectors", String(spec.block_sectors),
    "--duration-ms", String(duration_ms), "--reads-per-write", String(reads_per_write),
  ];
  const p = Bun.spawn(cmd, { stdout: "pipe", stderr: "pipe", stdin: "ignore", env: { ...process.env, NO_COLOR: "1" } });
  // A worker that hangs (a volume that stopped answering) is killed well after its time is up.
  const timer = setTimeout(() => p.kill("SIGKILL"), duration_ms + 60_000);
  const [out, err, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
  clearTimeout(timer);
  const line = out.trim().split("\n").reverse().find((l) => l.startsWith("{"));
  if (line !== undefined) {
    try {
      return { worker, uri, result: (JSON.parse(line) as { result: VerifyWorkerResult }).result, crash: null };
    } catch {}
  }
  return { worker, uri, result: null, crash: `worker process exited ${code} without a result: ${(err.trim() || out.trim()).split("\n").slice(-3).join(" | ")}` };
}

function where(uri: string): string {
  const t = parseNbdUri(uri);
  return typeof t === "string" ? uri : t.address.startsWith("unix:") ? basename(t.address.slice(5)) : t.address;
}

function printSummary(outcomes: WorkerOutcome[], elapsed_ms: number): void {
  const out = (s = "") => process.stdout.write(`${s}\n`);
  printTable(
    outcomes.map((o) => ({
      worker: o.worker,
      export: where(o.uri),
      writes: o.result?.writes ?? "-",
      reads: o.result?.reads ?? "-",
      "sectors checked": o.result?.sectors_checked ?? "-",
      result: o.crash ? "DIED" : o.result!.mismatch ? "MISMATCH" : o.result!.error ? "I/O ERROR" : "ok",
    })),
  );
  out();
  const bad = outcomes.filter((o) => o.crash !== null || o.result?.mismatch || o.result?.error);
  for (const o of bad) {
    const m = o.result?.mismatch;
    if (m) {
      out(`worker ${o.worker} stopped: ${m.kind} at block ${m.block} (LBA ${m.lba}, owned by worker ${m.owner})`);
      out(`  expected: ${m.expected}`);
      out(`  found:    ${m.found}`);
    } else out(`worker ${o.worker} stopped: ${o.crash ?? o.result!.error}`);
  }
  const writes = outcomes.reduce((n, o) => n + (o.result?.writes ?? 0), 0);
  const reads = outcomes.reduce((n, o) => n + (o.result?.reads ?? 0), 0);
  out(`${writes} writes and ${reads} checked reads in ${(elapsed_ms / 1000).toFixed(1)} s: ${bad.length === 0 ? "no problems" : `${bad.length} worker(s) found problems`}`);
}

const worker = command({
  meta: { name: "worker", description: "(internal) one worker of 'verify run'; prints its result as JSON" },
  args: {
    uri: { type: "string", required: true, description: "NBD URI" },
    worker: { type: "string", required: true, description: "this worker's index" },
    workers: { type: "string", required: true, description: "workers of the run" },
    seed: { type: "string", required: true, description: "the run's seed" },
    blocks: { type: "string", required: true, description: "blocks of the verify area" },
    "block-sectors": { type: "string", required: true, description: "512-byte sectors per block" },
    "duration-ms": { type: "string", required: true, description: "how long to run" },
    "reads-per-write": { type: "string", default: "1", description: "reads after each write" },
  },
  async run({ args }) {
    const num = (v: string, what: string) => {
      if (!/^\d+$/.test(v)) throw new UsageError(`--${what} must be a whole number`);
      return Number(v);
    };
    const spec: PatternSpec = {
      seed_id: num(args.seed, "seed"),
      workers: num(args.workers, "workers"),
      blocks: num(args.blocks, "blocks"),
      block_sectors: num(args["block-sectors"], "block-sectors"),
      base_lba: 0,
    };
    const problem = patternSpecProblem(spec);
    if (problem) throw new UsageError(problem);
    const w = num(args.worker, "worker");
    if (w >= spec.workers) throw new UsageError(`--worker ${w} must be below --workers ${spec.workers}`);
    const deadline = performance.now() + num(args["duration-ms"], "duration-ms");
    const nbd = await openExport(args.uri);
    if (nbd.size_bytes < spec.blocks * spec.block_sectors * 512) throw new Error(`the export holds ${nbd.size_bytes} bytes, the run needs ${spec.blocks * spec.block_sectors * 512}`);
    const result = await runVerifyWorker(
      { read: (o, dst) => nbd.readInto(o, dst), write: (o, src, fua) => nbd.write(o, src, fua), flush: () => nbd.flush() },
      { spec, worker: w, reads_per_write: num(args["reads-per-write"], "reads-per-write"), should_stop: () => performance.now() >= deadline },
    );
    await nbd.close().catch(() => {});
    await Bun.write(Bun.stdout, `${JSON.stringify({ result })}\n`);
    process.exit(result.mismatch || result.error ? 1 : 0);
  },
});

export const verifyCommand = command({
  meta: { name: "verify", description: "the distributed, self-validating I/O generator (verify data: see docs/debug-format.md)" },
  subCommands: { run, worker },
});
