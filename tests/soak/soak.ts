/**
 * The fault soak: a mirrored volume on servers that are network namespaces (LabCluster), fio
 * writing and verifying through it from the client host, and a fault injected every few seconds,
 * drawn by a seeded PRNG (FaultDraw). At the end everything is healed, the volume must come back
 * to Normal, fio must have seen no error, a read pass must verify every block fio wrote, and the
 * mirror's legs must be byte-identical on the drive files.
 *
 * The rule that keeps the faults survivable: one fault at a time (at most one server impaired),
 * and a fault is injected only once every mirror set has at least two legs ok again (for a 2-leg
 * mirror: Normal). Three servers are the minimum: the TOMA commits a change only through a
 * majority of the drives, so with one server of three impaired it still can.
 */
import { appendFileSync, mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import type { VolumeJson } from "../../src/toma/api-types.ts";
import { FioVerify } from "../support/fio.ts";
import { parseSize } from "../../src/cmd/args.ts";
import { requireNetnsTool } from "../support/netns.ts";
import { type Daemon, ok, requireTool, run } from "../support/proc.ts";
import { type ActiveFault, DEFAULT_TIMES, FAULT_KINDS, FaultDraw, type FaultTimes, faultSelectors, inject, selectFaults } from "./faults.ts";
import { LabCluster, requirePeersFlag } from "./lab-cluster.ts";
import { LeaderWatch } from "./leadership.ts";
import { type ErrorRecord, type FaultRecord, type StateRecord, faultAt, secs, stallMiddle, stallsOver, stamp, summary } from "./report.ts";

const MiB = 2 ** 20;
const VOLUME = "soak";
/** fio logs one averaged entry per window with completions: stalls are measured to this. */
const WINDOW_MS = 100;

export interface SoakOptions {
  duration_ms: number;
  seed: number;
  /** Fault selectors: kinds, or `kind:variant` (FAULT_SELECTORS). */
  faults: string[];
  /** A fault is injected every this many ms (once the volume can take one). */
  every_ms: number;
  legs: 2 | 3;
  servers: number;
  cluster_mode: boolean;
  /** fio: jobs, each on its own range of job_size bytes. */
  jobs: number;
  job_size: string;
  bs: string;
  iodepth: number;
  capacity: string;
  times: FaultTimes;
  /** How long the volume may take to come back after a fault (and at the end). */
  recover_ms: number;
  /** Where logs, fio's files and the summary go (a new temp folder when absent). */
  out_dir?: string;
  /** Keep the cluster's folder (drive files) at the end. */
  keep: boolean;
  /** A stall longer than this (no fio completion) fails the run; null: stalls are only reported. */
  max_stall_ms: number | null;
  /** The command line to print in the summary (how to replay). */
  command: string;
  /** Aborts the run (Ctrl-C): cleanup still runs. */
  signal?: AbortSignal;
  log?: (line: string) => void;
}

export const DEFAULT_OPTIONS: Omit<SoakOptions, "command"> = {
  duration_ms: 600_000,
  seed: 1,
  faults: [...FAULT_KINDS],
  every_ms: 10_000,
  legs: 2,
  servers: 3,
  cluster_mode: false,
  jobs: 4,
  job_size: "16M",
  bs: "4k",
  iodepth: 8,
  capacity: "256M",
  times: DEFAULT_TIMES,
  recover_ms: 180_000,
  keep: false,
  max_stall_ms: null,
};

export interface SoakResult {
  ok: boolean;
  failures: string[];
  faults: FaultRecord[];
  errors: ErrorRecord[];
  /** Leg differences found on the drive files (empty when equal or not compared). */
  leg_differences: number;
  summary: string;
  out_dir: string;
}

class Aborted extends Error {}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  if (signal?.aborted) return Promise.reject(new Aborted("aborted"));
  return new Promise((resolve, reject) => {
    const t = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => {
      clearTimeout(t);
      reject(new Aborted("aborted"));
    }, { once: true });
  });
}

/** Every mirror set keeps an ok leg whatever single server fails next. */
function canTakeFault(v: VolumeJson): boolean {
  if (v.state !== "online" && v.state !== "degraded") return false;
  const sets = v.legs.length / v.mirrors;
  for (let s = 0; s < sets; s++) {
    const ok = v.legs.slice(s * v.mirrors, (s + 1) * v.mirrors).filter((l) => l === "ok").length;
    if (ok < 2) return false;
  }
  return true;
}

const isNormal = (v: VolumeJson) => v.state === "online" && v.legs.every((l) => l === "ok");

/** fio's first line that reports an error, and when it came (performance.now()). */
function firstFioError(fio: FioVerify): { at: number; line: string } | null {
  const re = /^.*(error|verify:|bad magic|mismatch).*$/im;
  let text = "";
  for (const c of fio.daemon.chunks) {
    text += c.text;
    const m = re.exec(text);
    if (m) return { at: c.at_ms, line: m[0].trim() };
  }
  return null;
}

export async function runSoak(opts: SoakOptions): Promise<SoakResult> {
  requireTool("fio");
  requireNetnsTool("ip");
  const selection = selectFaults(opts.faults, opts.cluster_mode);
  if (selection.some((s) => s.kind === "oneway")) requireNetnsTool("nft");
  if (opts.cluster_mode) await requirePeersFlag();
  if (opts.servers < 3) throw new Error("--servers: at least 3 (the TOMA needs a majority of the drives to change anything)");
  if (opts.legs > opts.servers) throw new Error(`--legs ${opts.legs} needs as many servers`);
  const out = opts.out_dir ?? mkdtempSync(`${tmpdir()}/nvmesh-soak-`);
  mkdirSync(out, { recursive: true });
  const logFile = `${out}/soak.log`;
  const t0 = performance.now();
  const now = () => performance.now() - t0;
  const log = (line: string) => {
    const l = `[${stamp(now()).padStart(8)}] ${line}`;
    (opts.log ?? console.log)(l);
    appendFileSync(logFile, `${l}\n`);
  };
  const signal = opts.signal;
  const faults: FaultRecord[] = [];
  const errors: ErrorRecord[] = [];
  const states: StateRecord[] = [];
  const failures: string[] = [];
  const fios: FioVerify[] = [];
  const checks: string[] = [];
  const fioLines: string[] = [];
  let legDifferences = 0;
  let end_ms = 0;
  const draw = new FaultDraw(opts.seed, opts.faults, opts.servers, opts.cluster_mode, opts.times, opts.legs);
  const mode = opts.cluster_mode ? "a TOMA per server (--peers)" : "one TOMA (in s1)";
  const setup = `faults ${faultSelectors(selection, opts.cluster_mode).join(",")} every ${secs(opts.every_ms)}; RAID1 with ${opts.legs} legs over ${opts.servers} servers, ${mode}; fio ${opts.jobs} jobs x ${opts.job_size} (${opts.bs}, QD${opts.iodepth} each, verify=crc32c)`;
  log(`soak: seed ${opts.seed}; ${setup}; output in ${out}`);

  const c = new LabCluster({ servers: opts.servers, drive_size: "512M", cluster_mode: opts.cluster_mode });
  let polling = true;
  let poller: Promise<void> = Promise.resolve();
  let leaderPoller: Promise<void> = Promise.resolve();
  const leaders = new LeaderWatch();
  let active: ActiveFault | null = null;
  let record: FaultRecord | null = null;
  let stopSampler = () => {};
  try {
    await c.start();
    log(`cluster up: servers ${Array.from({ length: opts.servers }, (_, t) => `${c.server(t)}=${c.lab.ip(c.server(t))}`).join(" ")}, client=${c.lab.ip("client")}, TOMA ${c.toma_addr}`);
    await c.cli("volume", "create", "--name", VOLUME, "--capacity", opts.capacity, "--raid-level", "1", "--number-of-mirrors", String(opts.legs));
    const uri = await c.attach(VOLUME);
    const wrap = c.lab.exec("client");
    const vol0 = await c.volume(VOLUME);
    const jobBytes = parseSize(opts.job_size);
    if (opts.jobs * jobBytes > vol0.capacity_bytes) throw new Error(`fio's ${opts.jobs} x ${opts.job_size} do not fit in the ${opts.capacity} volume`);
    log(`volume ${VOLUME} attached on the client host: ${uri}; legs on ${vol0.columns.map((x) => c.drives.findIndex((ds) => ds.includes(c.driveFile(x.drive_uuid).path))).map((t) => c.server(t)).join(", ")}`);

    // Every block of fio's ranges gets a verify header first, so the final read pass can check all.
    await ok([...wrap, "fio", "--name=prefill", "--ioengine=nbd", `--uri=${uri}`, "--rw=write", `--bs=${opts.bs}`, "--iodepth=32", `--size=${opts.job_size}`, `--numjobs=${opts.jobs}`, `--offset_increment=${opts.job_size}`, "--verify=crc32c", "--do_verify=0", "--verify_state_save=0"], { timeout_ms: 600_000 });
    log(`prefilled ${opts.jobs} x ${opts.job_size} with verify headers`);

    // The volume's states, as the admin host sees them, every second.
    const poll = async () => {
      let last = "";
      while (polling) {
        const r = await c.cliWithin(5000, "volume", "show", VOLUME, "-o", "json");
        let st: string;
        if (r.code === 0) {
          const v = JSON.parse(r.stdout) as VolumeJson;
          st = `${v.state} [${v.legs.join(",")}]`;
        } else st = r.code === 137 ? "no answer in 5 s" : `unreachable (${r.stderr.trim().split("\n").at(-1)?.slice(0, 80)})`;
        if (st !== last) {
          states.push({ at_ms: now(), state: st });
          log(`volume: ${st}`);
          last = st;
        }
        await Bun.sleep(1000);
      }
    };
    poller = poll();

    // A TOMA per server: every TOMA's `cluster status`, every second, each on its own (a paused
    // TOMA answers nothing for the 5 s timeout: the others' answers are not held back by it).
    // Checked: never two leaders claiming one term. A ready leader is where admin reads go first.
    const pollLeaders = async (t: number) => {
      while (polling) {
        const at = now();
        const v = await c.consensusOf(t);
        for (const line of leaders.observe(at, [v && { server: t, role: v.role, term: v.term, address: v.address }])) log(line);
        if (v?.role === "leader" && v.leader_ready && v.address && (leaders.changes.at(-1)?.term ?? 0) <= (v.term ?? 0)) c.toma_addr = v.address;
        await Bun.sleep(Math.max(0, 1000 - (now() - at)));
      }
    };
    if (opts.cluster_mode) leaderPoller = Promise.all(Array.from({ length: opts.servers }, (_, t) => pollLeaders(t))).then(() => {});

    let epoch = 0;
    /** When the running fio last completed an I/O (its status, sampled every second). */
    let progressed_ms = 0;
    let progress_seen: number | null = null;
    const startFio = () => {
      epoch++;
      const f = new FioVerify({ uri, dir: out, name: `fio${epoch}`, size: opts.job_size, bs: opts.bs, iodepth: opts.iodepth, jobs: opts.jobs, runtime_s: 24 * 3600, wrap, lean_logs: true, log_avg_ms: WINDOW_MS, status_s: 1 });
      fios.push(f);
      progress_seen = null;
      progressed_ms = now();
      log(`fio #${epoch} started: randwrite with verify_backlog over the prefilled ranges`);
      return f;
    };
    let fio = startFio();
    const sampler = setInterval(() => {
      const p = fio.progress();
      if (p !== null && p !== progress_seen) {
        progress_seen = p;
        progressed_ms = now();
      }
    }, 1000);
    stopSampler = () => clearInterval(sampler);

    /** Polls until the volume is as `pred` wants and fio completed I/O since `since` (null: timeout). */
    const waitBack = async (pred: (v: VolumeJson) => boolean, since: number, timeout_ms: number): Promise<number | null> => {
      const deadline = now() + timeout_ms;
      let volume_ok = false;
      while (now() < deadline) {
        if (!volume_ok) {
          const r = await c.cliWithin(10_000, "volume", "show", VOLUME, "-o", "json");
          volume_ok = r.code === 0 && pred(JSON.parse(r.stdout) as VolumeJson);
        }
        if (volume_ok && (progressed_ms > since + 1000 || fioFailed())) return now();
        await sleep(1000, signal);
      }
      if (volume_ok) {
        // The volume is back but fio's I/O is not: stuck requests, an error of their own.
        const at = progressed_ms;
        // Progress is sampled every second: a fault injected within that second may be the cause.
        const f = faultAt(faults, at + 1000);
        errors.push({ at_ms: at, what: `fio #${epoch}: no I/O completed from ${stamp(at)} on, though the volume was back (I/O stuck)`, after_fault: f?.n ?? null });
        log(`ERROR: I/O stuck since ${stamp(at)}${f ? ` (fault #${f.n}: ${f.label})` : ""}`);
        stuck = true;
      }
      return null;
    };

    /** Polls until the volume is as `pred` wants; the time it was, or null. */
    const waitVolume = (pred: (v: VolumeJson) => boolean, timeout_ms: number) => waitBack(pred, -Infinity, timeout_ms);

    /** fio reported an error (one of its jobs ended) or ended on its own. */
    const fioFailed = () => !fio.daemon.alive || firstFioError(fio) !== null;
    let stuck = false;

    /** Stops a failed fio and records its first error against the fault in force or before it. */
    const fioEnded = async (): Promise<void> => {
      const o = await fio.stop(60_000);
      const first = firstFioError(fio);
      if (first === null && stuck) return; // Recorded as stuck already.
      const at = first ? first.at - t0 : now();
      const what = `fio #${epoch} (exit ${o.code}${o.job ? `, error ${o.job.error}` : ""}): ${first?.line ?? o.output.trim().split("\n").slice(-3).join(" | ")}`;
      const f = faultAt(faults, at);
      errors.push({ at_ms: at, what, after_fault: f?.n ?? null });
      log(`ERROR: ${what}${f ? ` (fault #${f.n}: ${f.label})` : ""}`);
    };

    /** After an error: fio stopped, the volume Normal again, a new fio. False: the volume is not back. */
    const restartFio = async (): Promise<boolean> => {
      await fioEnded();
      stuck = false;
      const back = await waitVolume(isNormal, opts.recover_ms);
      if (back === null) {
        failures.push(`the volume was not Normal within ${secs(opts.recover_ms)} after fio's error`);
        return false;
      }
      const last = faults.at(-1);
      if (last && last.recovered_ms === null) last.recovered_ms = back;
      fio = startFio();
      return true;
    };

    let next_at = opts.every_ms;
    while (now() < opts.duration_ms) {
      // Wait for the next slot, watching fio.
      while (now() < next_at && now() < opts.duration_ms && !fioFailed()) await sleep(Math.max(1, Math.min(500, next_at - now())), signal);
      if (fioFailed()) {
        if (!(await restartFio())) break;
        next_at = Math.max(next_at, now() + opts.every_ms);
        continue;
      }
      if (now() >= opts.duration_ms) break;
      const plan = draw.next();
      record = { n: faults.length + 1, kind: plan.variant ? `${plan.kind}:${plan.variant}` : plan.kind, label: "", injected_ms: now(), healed_ms: null, recovered_ms: null };
      active = await inject(c, plan, VOLUME);
      record.label = `${active.label}${plan.kind === "kill" || plan.kind === "toma-kill" ? `, ${plan.variant === "leg" ? "both " : ""}restarted after ${secs(plan.hold_ms)}` : plan.kind === "linkdown" || plan.kind === "oneway" ? ` for ${secs(plan.hold_ms)}` : ""}`;
      faults.push(record);
      log(`fault #${record.n}: ${record.label}`);
      const heal_at = now() + plan.hold_ms;
      // A fault that made fio fail has shown what it does: it is healed at once, and the soak goes on.
      while (now() < heal_at && !fioFailed()) await sleep(Math.max(1, Math.min(500, heal_at - now())), signal);
      const early = now() < heal_at - 250;
      await active.heal();
      record.healed_ms = now();
      if (early) record.label += " (healed early: fio failed)";
      log(`fault #${record.n} healed${early ? " early: fio failed" : ""}`);
      active = null;
      const healed = record.healed_ms;
      const n = record.n;
      record = null;
      if (fioFailed()) continue;
      // A fault's effects (a leg declared dead) may surface just after it is healed: settle first.
      await sleep(2000, signal);
      const back = await waitBack(canTakeFault, healed, opts.recover_ms);
      faults[n - 1]!.recovered_ms = back;
      if (back === null && stuck) {
        if (!(await restartFio())) break;
      } else if (back === null) {
        failures.push(`the volume did not come back (every set with 2 legs ok) within ${secs(opts.recover_ms)} after fault #${n} (${faults[n - 1]!.label})`);
        log(`volume did not come back after fault #${n}`);
        break;
      } else log(`volume can take a fault again, and I/O goes on (${secs(back - faults[n - 1]!.injected_ms)} after fault #${n})`);
      next_at = Math.max(faults.at(-1)!.injected_ms + opts.every_ms, now());
    }

    // The end: heal everything, Normal, stop fio, read everything back, compare the legs.
    log("end of the fault phase: healing everything");
    const healed_all = now();
    await healEverything(c);
    const normal = await waitBack(isNormal, healed_all, opts.recover_ms);
    if (normal === null && !stuck) failures.push(`the volume was not Normal within ${secs(opts.recover_ms)} after everything was healed`);
    else if (normal !== null) log("volume Normal, I/O going on");
    if (opts.cluster_mode) {
      const agreed = await c.agreement(opts.recover_ms);
      if (agreed === null) failures.push(`the TOMAs did not agree on one leader within ${secs(opts.recover_ms)} after everything was healed`);
      else log(`every TOMA names leader ${c.server(agreed.leader)} in term ${agreed.term}`);
      checks.push(agreed === null ? "after the heal: the TOMAs did NOT agree on one leader" : `after the heal: every TOMA names one leader, ${c.server(agreed.leader)}, in term ${agreed.term}`);
    }
    if (fioFailed() || stuck) await fioEnded();
    else {
      const o = await fio.stop();
      end_ms = now();
      // fio stopped by SIGINT exits 128 with a clean result; an error shows in its result.
      if ((o.code !== 0 && o.code !== 128) || o.job === null || o.job.error !== 0 || firstFioError(fio) !== null) {
        const first = firstFioError(fio);
        const at = first ? first.at - t0 : end_ms;
        const f = faultAt(faults, at);
        errors.push({ at_ms: at, what: `fio #${epoch} (stopped at the end) exit ${o.code}${o.job ? `, error ${o.job.error}` : ", no result"}: ${first?.line ?? o.output.trim().slice(-300)}`, after_fault: f?.n ?? null });
      }
    }
    if (end_ms === 0) end_ms = now();
    let written = 0;
    let verified = 0;
    for (const f of fios) {
      const o = await f.finish(1000);
      if (o.job) {
        written += o.job.write.io_bytes;
        verified += o.job.read.io_bytes;
      }
    }
    fioLines.push(`fio: ${fios.length} run(s), wrote ${(written / MiB).toFixed(0)} MiB, verified ${(verified / MiB).toFixed(0)} MiB as it went (verify_backlog); errors ${errors.length}`);
    if (errors.length > 0) failures.push(`${errors.length} I/O or verify error(s); the first after: ${errors[0]!.after_fault === null ? "no fault" : `fault #${errors[0]!.after_fault} (${faults[errors[0]!.after_fault - 1]!.label})`}`);

    const volumeBack = normal !== null || (await c.volume(VOLUME).then(isNormal, () => false));
    if (volumeBack) {
      const total = `${(opts.jobs * jobBytes) / MiB}M`;
      const rb = await runReadback(wrap, uri, opts.bs, total, out);
      checks.push(rb.ok ? `final read-verify of ${total}iB: every block intact` : `final read-verify of ${total}iB: FAILED: ${rb.detail}`);
      if (!rb.ok) failures.push(`final read-verify: ${rb.detail}`);
      const v = await c.volume(VOLUME);
      const cmp = c.compareLegs(v);
      legDifferences = cmp.differences.length;
      checks.push(`legs compared on the drive files: ${cmp.bytes / MiB} MiB of each of ${v.mirrors} legs, ${cmp.differences.length} differing MiB chunk(s)${cmp.differences.length ? `: ${cmp.differences.map((d) => `set ${d.set} columns ${d.columns.join("/")} at ${d.offset}`).join(", ")}` : ""}`);
      if (cmp.differences.length > 0) failures.push(`the legs differ on the drive files (${cmp.differences.length} MiB chunk(s))`);
    } else {
      checks.push("final read-verify and leg comparison not done: the volume never came back to Normal");
    }
  } catch (e) {
    if (e instanceof Aborted) failures.push("aborted (signal)");
    else {
      failures.push(`harness error: ${(e as Error).message.split("\n")[0]}`);
      log(`harness error: ${(e as Error).stack ?? e}`);
    }
  } finally {
    if (end_ms === 0) end_ms = now();
    polling = false;
    stopSampler();
    if (record && record.healed_ms === null && active) {
      await active.heal().catch(() => {});
    }
    for (const f of fios) if (f.daemon.alive) f.daemon.proc.kill("SIGKILL");
    await poller.catch(() => {});
    await leaderPoller.catch(() => {});
    if (opts.cluster_mode) {
      const conflicts = leaders.conflicts.map((x) => `term ${x.term}: ${x.addresses.join(" and ")} at ${stamp(x.at_ms)}`);
      checks.push(`leadership: ${leaders.polls} polls of cluster status (every TOMA, every second), ${leaders.terms()} term(s) with a leader, ${leaders.changes.length} leader change(s) seen; two leaders claiming one term: ${conflicts.length === 0 ? "never" : conflicts.join("; ")}`);
      if (conflicts.length > 0) failures.push(`two leaders claimed one term: ${conflicts.join("; ")}`);
    }
    mkdirSync(`${out}/logs`, { recursive: true });
    // Each line stamped with when it arrived on the soak's clock, to line it up with the faults.
    for (const [i, d] of c.allDaemons().entries()) writeFileSync(`${out}/logs/${i}-${d.name.replace(/\W+/g, "_")}.log`, stampedOutput(d, t0));
    await c.destroy(opts.keep).catch((e) => failures.push(`cleanup: ${(e as Error).message}`));
    if (opts.keep) checks.push(`cluster folder kept: ${c.dir}`);
  }

  const times = mergedCompletions(fios, t0);
  const iops = fios.flatMap((f) => f.iopsLog().map(([t, v]): [number, number] => [t + f.started_ms - t0, v]));
  const io_from_ms = fios.length > 0 ? fios[0]!.started_ms - t0 : 0;
  // A job with no completion for longer than the volume may take to come back had I/O stuck,
  // though the other jobs went on (which the live check, on fio's summed progress, cannot see).
  for (const [job, jt] of times.entries()) {
    for (const st of stallsOver(jt, io_from_ms, end_ms, opts.recover_ms)) {
      const f = faultAt(faults, st.from_ms + 1000);
      errors.push({ at_ms: st.from_ms, what: `fio job ${job + 1}: no I/O completed for ${secs(st.gap_ms)} from ${stamp(st.from_ms)} (I/O stuck while the other jobs went on)`, after_fault: f?.n ?? null });
      failures.push(`fio job ${job + 1}'s I/O stuck for ${secs(st.gap_ms)} from ${stamp(st.from_ms)}${f ? `, after fault #${f.n} (${f.label})` : ""}`);
    }
  }
  if (opts.max_stall_ms !== null) {
    for (const [job, jt] of times.entries()) {
      for (const st of stallsOver(jt, io_from_ms, end_ms, opts.max_stall_ms)) {
        const f = faultAt(faults, stallMiddle(st));
        failures.push(`fio job ${job + 1}'s I/O stalled ${secs(st.gap_ms)} from ${stamp(st.from_ms)} (over --max-stall ${secs(opts.max_stall_ms)})${f ? `, after fault #${f.n} (${f.label})` : ""}`);
      }
    }
  }
  const text = summary({ command: opts.command, seed: opts.seed, setup, faults, errors, states, times, iops, window_ms: WINDOW_MS, io_from_ms, end_ms, fio_lines: fioLines, checks, failures, bucket_ms: opts.duration_ms > 300_000 ? 10_000 : 5_000 });
  writeFileSync(`${out}/summary.txt`, `${text}\n`);
  writeFileSync(`${out}/result.json`, JSON.stringify({ seed: opts.seed, faults, errors, states, failures }, null, 2));
  return { ok: failures.length === 0, failures, faults, errors, leg_differences: legDifferences, summary: text, out_dir: out };
}

/** Starts what is down, resumes what is paused, heals every cut and link. */
async function healEverything(c: LabCluster): Promise<void> {
  await c.lab.healAll();
  for (const d of c.allDaemons()) if (d.alive) process.kill(d.proc.pid, "SIGCONT");
  for (let t = 0; t < c.serverCount(); t++) if (!c.targets[t]?.alive) await c.restartTarget(t);
  if (c.labOpts.cluster_mode) {
    for (let t = 0; t < c.serverCount(); t++) if (!c.tomas[t]?.alive) await c.startTomaOn(t);
  } else if (!c.toma?.alive) await c.restartToma();
}

/** A daemon's output, each line prefixed with the soak time its chunk arrived at. */
function stampedOutput(d: Daemon, t0: number): string {
  return d.chunks.map((ch) => ch.text.split("\n").filter((l) => l.trim() !== "").map((l) => `[${stamp(ch.at_ms - t0).padStart(8)}] ${l}\n`).join("")).join("");
}

/** fio reading every block of the ranges and checking its verify header and checksum. */
async function runReadback(wrap: string[], uri: string, bs: string, size: string, dir: string): Promise<{ ok: boolean; detail: string }> {
  const r = await run([...wrap, "fio", "--name=readback", "--ioengine=nbd", `--uri=${uri}`, "--rw=read", `--bs=${bs}`, "--iodepth=16", `--size=${size}`, "--verify=crc32c", "--verify_fatal=1", "--verify_state_save=0", "--output-format=json", `--output=${dir}/readback.json`], { timeout_ms: 600_000 });
  if (r.code === 0) return { ok: true, detail: "" };
  const line = `${r.stdout}\n${r.stderr}`.split("\n").find((l) => /verify|error|bad/i.test(l)) ?? `exit ${r.code}`;
  return { ok: false, detail: line.trim() };
}

/** Every fio run's completions on the soak's clock, per job (job i of each run), in order. */
function mergedCompletions(fios: FioVerify[], t0: number): Float64Array[] {
  const jobs: number[][] = [];
  for (const f of fios) {
    const base = f.started_ms - t0;
    for (const [i, times] of f.jobCompletionTimes().entries()) (jobs[i] ??= []).push(...Array.from(times, (t) => t + base));
  }
  return jobs.map((ts) => Float64Array.from(ts).sort());
}
