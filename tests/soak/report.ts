/**
 * What a soak found, computed from its records (pure functions, no I/O): the longest I/O stall
 * overall and during each fault, IOPS over time, and the printed summary.
 */

export interface FaultRecord {
  n: number;
  /** The kind, with its variant where it has one (`stop:target`). */
  kind: string;
  label: string;
  /** ms since the soak began. */
  injected_ms: number;
  healed_ms: number | null;
  /** When the volume was seen able to take the next fault again (null: it never was). */
  recovered_ms: number | null;
}

export interface ErrorRecord {
  at_ms: number;
  what: string;
  /** The fault in force at that moment, or else the last one before it (null: none yet). */
  after_fault: number | null;
}

export interface StateRecord {
  at_ms: number;
  state: string;
}

export interface Stall {
  gap_ms: number;
  from_ms: number;
}

/**
 * The longest interval with no I/O completed, among intervals that begin within [from, to]
 * (`times` sorted, ms). The interval from `from` to the first completion counts too, and so does
 * the one from the last completion to `to` when `open_end` (I/O that never completed again).
 * `clip`: a gap is counted only up to `to`, so that a stall that begins at the end of one
 * fault's window and belongs to the next fault is not charged to the first.
 */
export function longestGap(times: Float64Array, from: number, to: number, open_end = false, clip = false): Stall {
  let best: Stall = { gap_ms: 0, from_ms: from };
  let prev = from;
  // First completion at or after `from`.
  let lo = 0;
  let hi = times.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (times[mid]! < from) lo = mid + 1;
    else hi = mid;
  }
  if (lo > 0) prev = Math.max(prev, times[lo - 1]!);
  for (let i = lo; i < times.length; i++) {
    const t = times[i]!;
    const end = clip ? Math.min(t, to) : t;
    if (end - prev > best.gap_ms) best = { gap_ms: end - prev, from_ms: prev };
    prev = t;
    if (t > to) break;
  }
  if (open_end && prev < to && to - prev > best.gap_ms) best = { gap_ms: to - prev, from_ms: prev };
  return best;
}

/**
 * longestGap of each fio job's completions (one sorted array per job): the longest, with its
 * job. A job whose I/O is stuck is a stall for whoever waits on that range, though the other jobs
 * go on, so jobs are never merged for this.
 */
export function worstGap(jobs: readonly Float64Array[], from: number, to: number, open_end = false, clip = false): Stall & { job: number } {
  let best = { gap_ms: 0, from_ms: from, job: 0 };
  for (const [job, times] of jobs.entries()) {
    const g = longestGap(times, from, to, open_end, clip);
    if (g.gap_ms > best.gap_ms) best = { ...g, job };
  }
  return best;
}

/** Every interval with no completion longer than limit_ms that begins within [from, to]. */
export function stallsOver(times: Float64Array, from: number, to: number, limit_ms: number): Stall[] {
  const out: Stall[] = [];
  let prev = from;
  for (const t of times) {
    if (t < from) continue;
    if (t - prev > limit_ms) out.push({ gap_ms: t - prev, from_ms: prev });
    prev = t;
  }
  if (to - prev > limit_ms) out.push({ gap_ms: to - prev, from_ms: prev });
  return out;
}

/**
 * Completions per second in buckets of bucket_ms from 0 to end_ms, from IOPS samples (time,
 * rate over the window_ms before it), summed over jobs and directions.
 */
export function iopsSeries(samples: [number, number][], window_ms: number, end_ms: number, bucket_ms: number): number[] {
  const n = Math.max(1, Math.ceil(end_ms / bucket_ms));
  const ios = new Array<number>(n).fill(0);
  for (const [t, rate] of samples) {
    const b = Math.floor(t / bucket_ms);
    if (b >= 0 && b < n) ios[b]! += (rate * window_ms) / 1000;
  }
  return ios.map((c) => c / (bucket_ms / 1000));
}

/**
 * Where a stall is charged: its middle. Its start is the last completion before it, which may
 * fall just before the fault that caused it was injected.
 */
export const stallMiddle = (st: Stall) => st.from_ms + st.gap_ms / 2;

/** The fault in force at `at_ms`, or else the last one injected before it. */
export function faultAt(faults: FaultRecord[], at_ms: number): FaultRecord | null {
  let last: FaultRecord | null = null;
  for (const f of faults) if (f.injected_ms <= at_ms) last = f;
  return last;
}

export const secs = (ms: number) => `${(ms / 1000).toFixed(1)} s`;
export const stamp = (ms: number) => `+${(ms / 1000).toFixed(1)}s`;

export interface SummaryInput {
  command: string;
  seed: number;
  setup: string;
  faults: FaultRecord[];
  errors: ErrorRecord[];
  states: StateRecord[];
  /**
   * When I/O completed (or a log window with completions ended), ms since the soak began: one
   * sorted array per fio job (job i of every fio run).
   */
  times: Float64Array[];
  /** IOPS samples (ms since the soak began, rate) over windows of window_ms. */
  iops: [number, number][];
  window_ms: number;
  /** When the I/O began (stalls are counted from there) and when the soak ended. */
  io_from_ms: number;
  end_ms: number;
  fio_lines: string[];
  checks: string[];
  failures: string[];
  bucket_ms: number;
}

/** The summary a person reads at the end of a soak (and docs/soak.md quotes). */
export function summary(s: SummaryInput): string {
  const out: string[] = [];
  out.push("== soak summary");
  out.push(`command: ${s.command}`);
  out.push(`seed ${s.seed}; ${s.setup}`);
  const stallOf = (f: FaultRecord) => {
    // A logged time is the end of a window with completions: the stall began up to a window later.
    const end = (f.recovered_ms ?? s.end_ms) - s.window_ms;
    return worstGap(s.times, f.injected_ms - s.window_ms, end, true, true).gap_ms;
  };
  const byKind = new Map<string, FaultRecord[]>();
  for (const f of s.faults) byKind.set(f.kind, [...(byKind.get(f.kind) ?? []), f]);
  out.push(`faults injected: ${s.faults.length} (${[...byKind].map(([k, fs]) => `${k} ${fs.length}`).join(", ") || "none"})`);
  for (const f of s.faults) {
    const healed = f.healed_ms === null ? "not healed" : `healed ${stamp(f.healed_ms)}`;
    const back = f.recovered_ms === null ? "volume not back" : `back ${stamp(f.recovered_ms)}`;
    const errs = s.errors.filter((e) => e.after_fault === f.n).length;
    out.push(`  #${f.n} ${stamp(f.injected_ms)} ${f.label}; ${healed}; ${back}; longest stall ${secs(stallOf(f))}${errs ? `; ${errs} ERROR(S)` : ""}`);
  }
  out.push("by fault (injected, followed by an error, longest stall):");
  for (const [k, fs] of [...byKind].sort(([a], [b]) => a.localeCompare(b))) {
    const failed = fs.filter((f) => s.errors.some((e) => e.after_fault === f.n)).length;
    out.push(`  ${k.padEnd(22)} ${String(fs.length).padStart(3)} ${String(failed).padStart(3)}  ${secs(Math.max(...fs.map(stallOf)))}`);
  }
  if (s.errors.length === 0) out.push("I/O errors: none");
  for (const e of s.errors) {
    const f = e.after_fault === null ? null : s.faults.find((x) => x.n === e.after_fault)!;
    const when = f === null ? "before any fault" : f.healed_ms !== null && f.healed_ms < e.at_ms ? `after fault #${f.n} (${f.label}), healed ${secs(e.at_ms - f.healed_ms)} before` : `during fault #${f.n} (${f.label}), injected ${secs(e.at_ms - f.injected_ms)} before`;
    out.push(`ERROR ${stamp(e.at_ms)} ${when}: ${e.what}`);
  }
  const all = worstGap(s.times, s.io_from_ms, s.end_ms, true);
  const during = faultAt(s.faults, stallMiddle(all));
  out.push(`longest I/O stall (no completion in one of the ${s.times.length} fio jobs, to ${s.window_ms} ms): ${secs(all.gap_ms)} from ${stamp(all.from_ms)} (job ${all.job + 1})${during ? ` (after fault #${during.n}: ${during.label})` : ""}`);
  out.push(`volume states: ${s.states.map((x) => `${stamp(x.at_ms)} ${x.state}`).join("; ")}`);
  out.push(`write IOPS over time (${s.bucket_ms / 1000} s buckets, every fio job; faults in force by number):`);
  const series = iopsSeries(s.iops, s.window_ms, s.end_ms, s.bucket_ms);
  const peak = Math.max(1, ...series);
  for (const [i, v] of series.entries()) {
    const [a, b] = [i * s.bucket_ms, (i + 1) * s.bucket_ms];
    const inForce = s.faults.filter((f) => f.injected_ms < b && (f.healed_ms ?? s.end_ms) >= a).map((f) => `#${f.n}`);
    out.push(`  ${stamp(a).padStart(8)} ${v.toFixed(0).padStart(6)} ${"#".repeat(Math.round((v / peak) * 40)).padEnd(40)} ${inForce.join(" ")}`);
  }
  out.push(...s.fio_lines, ...s.checks);
  out.push(s.failures.length === 0 ? "RESULT: PASS" : `RESULT: FAIL\n${s.failures.map((f) => `  - ${f}`).join("\n")}`);
  return out.join("\n");
}
