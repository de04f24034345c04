/**
 * The verify workload's I/O pattern: which block worker w writes at step s, and with what data,
 * is a pure function of (seed, w, s). Nobody keeps a log, so
 *   - a writer can put the earlier writes of a block into its sector (the history) without
 *     reading it first: they are computable;
 *   - any reader can check a sector written by any worker without talking to it: data, LBA and
 *     history must all be what the pattern says.
 *
 * The math (docs/debug-format.md, "The pattern"): blocks b ≡ w (mod W) belong to worker w, which
 * numbers them x = 0..M−1 (b = w + x·W). Pass k = floor(s / M) visits them in the order of the
 * affine permutation x ↦ (a_k·x + c_k) mod p of GF(p), p the smallest prime ≥ M, cycle-walked to
 * stay below M; a_k ∈ [1, p−1] and c_k ∈ [0, p−1] come from (seed, w, k) by a fixed integer hash.
 * Step s = k·M + i writes block w + perm_k(i)·W. Inverting perm_k gives the one step of each pass
 * that wrote a block, so the history of a block is one step per earlier pass.
 *
 * The data of (seed, w, s, lba) starts with a stamp that names the pattern (spec and coordinates),
 * so the data path can tell verify data from other data by looking at the data alone, and fill the
 * sector header's pattern fields and predicted history from it (see write.ts).
 */
import { crc32cRange } from "./crc32c-sliced.ts";
import { getU32, getU64, isU32, isU64, putU32, putU64 } from "./le.ts";
import { DATA_BYTES, type DebugSector, type HistoryEntry, type PatternStamp } from "./sector.ts";

/** What every worker of one verify run shares. */
export interface PatternSpec {
  /** ≥ 1; 0 means "not verify data" on the drive. */
  seed_id: number;
  workers: number;
  /** Blocks of the verify area; block b covers LBAs base_lba + b·block_sectors, block_sectors of them. */
  blocks: number;
  block_sectors: number;
  base_lba: number;
}

export interface StepAt {
  worker: number;
  step: number;
}

/** Largest prime below 2^32: the field must fit the 32-bit arithmetic of mulmod. */
export const MAX_FIELD_PRIME = 4294967291;

export function patternSpecProblem(spec: PatternSpec): string | null {
  if (!isU32(spec.seed_id) || spec.seed_id < 1) return `seed ${spec.seed_id} must be 1..2^32-1`;
  if (!isU32(spec.workers) || spec.workers < 1) return `workers ${spec.workers} must be 1..2^32-1`;
  if (!isU64(spec.blocks) || spec.blocks < 1) return `blocks ${spec.blocks} must be ≥ 1`;
  if (!isU32(spec.block_sectors) || spec.block_sectors < 1) return `block_sectors ${spec.block_sectors} must be 1..2^32-1`;
  if (!isU64(spec.base_lba)) return `base_lba ${spec.base_lba} is not a u64`;
  if (!isU64(spec.base_lba + spec.blocks * spec.block_sectors)) return "the verify area ends beyond 2^53 sectors";
  if (Math.ceil(spec.blocks / spec.workers) > MAX_FIELD_PRIME) return `a worker would own more than ${MAX_FIELD_PRIME} blocks`;
  return null;
}

function assertSpec(spec: PatternSpec): void {
  const p = patternSpecProblem(spec);
  if (p !== null) throw new Error(`pattern: ${p}`);
}

function assertWorker(spec: PatternSpec, worker: number): number {
  if (!Number.isInteger(worker) || worker < 0 || worker >= spec.workers) throw new Error(`pattern: worker ${worker} not in 0..${spec.workers - 1}`);
  const M = ownedBlocks(spec, worker);
  if (M === 0) throw new Error(`pattern: worker ${worker} owns no block (${spec.blocks} blocks, ${spec.workers} workers)`);
  return M;
}

/** M_w: how many blocks worker w owns (those ≡ w mod W). */
export function ownedBlocks(spec: PatternSpec, worker: number): number {
  return worker < spec.blocks ? Math.floor((spec.blocks - 1 - worker) / spec.workers) + 1 : 0;
}

/** The worker that writes block b. */
export function ownerOf(spec: PatternSpec, block: number): number {
  return block % spec.workers;
}

/** a·b mod p for a, b < p < 2^32, exact in doubles (every product stays below 2^49). */
export function mulmod(a: number, b: number, p: number): number {
  const hi = Math.floor(a / 65536);
  const lo = a % 65536;
  return ((((hi * b) % p) * 65536) % p + ((lo * b) % p)) % p;
}

function powmod(base: number, exp: number, p: number): number {
  let r = 1 % p;
  let b = base % p;
  let e = exp;
  while (e > 0) {
    if (e % 2 === 1) r = mulmod(r, b, p);
    b = mulmod(b, b, p);
    e = Math.floor(e / 2);
  }
  return r;
}

/** Deterministic Miller–Rabin for n < 2^32 (bases 2, 7, 61 suffice below 4,759,123,141). */
export function isPrime(n: number): boolean {
  if (!Number.isInteger(n) || n < 2) return false;
  for (const q of [2, 3, 5, 7, 11, 13, 61]) if (n % q === 0) return n === q;
  let d = n - 1;
  let r = 0;
  while (d % 2 === 0) {
    d /= 2;
    r++;
  }
  for (const a of [2, 7, 61]) {
    let x = powmod(a, d, n);
    if (x === 1 || x === n - 1) continue;
    let composite = true;
    for (let i = 1; i < r; i++) {
      x = mulmod(x, x, n);
      if (x === n - 1) {
        composite = false;
        break;
      }
    }
    if (composite) return false;
  }
  return true;
}

const primeCache = new Map<number, number>();

/** The smallest prime ≥ n (2 for n ≤ 2). */
export function smallestPrimeAtLeast(n: number): number {
  if (n > MAX_FIELD_PRIME) throw new Error(`pattern: no field prime ≥ ${n} below 2^32`);
  const hit = primeCache.get(n);
  if (hit !== undefined) return hit;
  let p = Math.max(2, n);
  while (!isPrime(p)) p++;
  if (primeCache.size > 1024) primeCache.clear();
  primeCache.set(n, p);
  return p;
}

/** Inverse of a modulo prime p (extended Euclid). */
export function invmod(a: number, p: number): number {
  let r0 = p;
  let r1 = a % p;
  let t0 = 0;
  let t1 = 1;
  while (r1 !== 0) {
    const q = Math.floor(r0 / r1);
    const r2 = r0 - q * r1;
    r0 = r1;
    r1 = r2;
    const t2 = t0 - q * t1;
    t0 = t1;
    t1 = t2;
  }
  if (r0 !== 1) throw new Error(`pattern: ${a} has no inverse modulo ${p}`);
  return ((t0 % p) + p) % p;
}

/** lowbias32 (Chris Wellons' hash-prospector): a fixed 32-bit integer mixer. */
export function mix32(x: number): number {
  x = (x ^ (x >>> 16)) >>> 0;
  x = Math.imul(x, 0x7feb352d) >>> 0;
  x = (x ^ (x >>> 15)) >>> 0;
  x = Math.imul(x, 0x846ca68b) >>> 0;
  return (x ^ (x >>> 16)) >>> 0;
}

const HASH_INIT = 0x243f6a88;
const step32 = (h: number, w: number) => mix32(((h + 0x9e3779b9) >>> 0) ^ (w >>> 0));

/** The fixed hash of the pattern: h ← mix32((h + φ) ⊕ w) for each 32-bit word, from h = 0x243f6a88. */
export function hashWords(...words: number[]): number {
  let h = HASH_INIT;
  for (const w of words) h = step32(h, w);
  return h;
}

/** hashWords of five words, without the array (the hot path of every step). */
function hash5(a: number, b: number, c: number, d: number, e: number): number {
  return step32(step32(step32(step32(step32(HASH_INIT, a), b), c), d), e);
}

function hash6(a: number, b: number, c: number, d: number, e: number, f: number): number {
  return step32(hash5(a, b, c, d, e), f);
}

const lo32 = (v: number) => v % 0x1_0000_0000;
const hi32 = (v: number) => Math.floor(v / 0x1_0000_0000);

/** The affine permutation of pass k of worker w: x ↦ (a·x + c) mod p over GF(p). */
export interface PassPermutation {
  /** Blocks permuted (the worker's M). */
  m: number;
  p: number;
  a: number;
  c: number;
  a_inv: number;
}

export function passPermutation(spec: PatternSpec, worker: number, pass: number): PassPermutation {
  // A scan or a verify run asks for the same few (worker, pass) again and again: a small
  // direct-mapped cache keeps the hashes, the prime and the inverse.
  const slot = (Math.imul(worker, 0x9e3779b1) ^ Math.imul(lo32(pass), 0x85ebca6b)) >>> 26;
  const hit = permCache[slot];
  if (
    hit !== undefined &&
    hit.worker === worker &&
    hit.pass === pass &&
    hit.seed_id === spec.seed_id &&
    hit.workers === spec.workers &&
    hit.blocks === spec.blocks
  ) {
    return hit.perm;
  }
  const m = ownedBlocks(spec, worker);
  const p = smallestPrimeAtLeast(m);
  const a = 1 + (hash5(spec.seed_id, worker, lo32(pass), hi32(pass), 1) % (p - 1));
  const c = hash5(spec.seed_id, worker, lo32(pass), hi32(pass), 2) % p;
  const perm = { m, p, a, c, a_inv: invmod(a, p) };
  permCache[slot] = { seed_id: spec.seed_id, workers: spec.workers, blocks: spec.blocks, worker, pass, perm };
  return perm;
}

const permCache: ({ seed_id: number; workers: number; blocks: number; worker: number; pass: number; perm: PassPermutation } | undefined)[] = new Array(64);

/** perm(i) for i < m: apply the affine map until the value falls below m (cycle-walking). */
export function permute(perm: PassPermutation, i: number): number {
  if (!(i >= 0 && i < perm.m)) throw new Error(`pattern: ${i} not in 0..${perm.m - 1}`);
  let y = i;
  // Each walk stays on the cycle of i, which returns below m within p − m + 1 steps.
  for (let n = 0; n <= perm.p - perm.m + 1; n++) {
    y = (mulmod(perm.a, y, perm.p) + perm.c) % perm.p;
    if (y < perm.m) return y;
  }
  throw new Error("pattern: cycle walk did not return below m (unreachable)");
}

/** perm⁻¹(x): the inverse map x ↦ a⁻¹·(x − c), walked the same way. */
export function unpermute(perm: PassPermutation, x: number): number {
  if (!(x >= 0 && x < perm.m)) throw new Error(`pattern: ${x} not in 0..${perm.m - 1}`);
  let y = x;
  for (let n = 0; n <= perm.p - perm.m + 1; n++) {
    y = mulmod(perm.a_inv, (y - perm.c + perm.p) % perm.p, perm.p);
    if (y < perm.m) return y;
  }
  throw new Error("pattern: inverse cycle walk did not return below m (unreachable)");
}

/** The block worker w writes at step s. */
export function blockAt(spec: PatternSpec, at: StepAt): number {
  assertSpec(spec);
  const M = assertWorker(spec, at.worker);
  if (!isU64(at.step)) throw new Error(`pattern: step ${at.step} is not a u64`);
  const pass = Math.floor(at.step / M);
  const x = permute(passPermutation(spec, at.worker, pass), at.step % M);
  return at.worker + x * spec.workers;
}

/** The LBAs of a block. */
export function blockLbas(spec: PatternSpec, block: number): { first_lba: number; sectors: number } {
  return { first_lba: spec.base_lba + block * spec.block_sectors, sectors: spec.block_sectors };
}

/** The block an LBA of the verify area belongs to, or null outside it. */
export function blockOfLba(spec: PatternSpec, lba: number): number | null {
  const rel = lba - spec.base_lba;
  if (rel < 0 || rel >= spec.blocks * spec.block_sectors) return null;
  return Math.floor(rel / spec.block_sectors);
}

/**
 * Steps of the block's owner that wrote `block`, strictly before step `before`, newest first, at
 * most `limit` of them: one per pass.
 */
export function stepsWriting(spec: PatternSpec, block: number, opts: { before: number; limit: number }): number[] {
  assertSpec(spec);
  if (!Number.isInteger(block) || block < 0 || block >= spec.blocks) throw new Error(`pattern: block ${block} not in 0..${spec.blocks - 1}`);
  const worker = ownerOf(spec, block);
  const M = ownedBlocks(spec, worker);
  const x = (block - worker) / spec.workers;
  const out: number[] = [];
  if (opts.before <= 0) return out;
  for (let pass = Math.floor((opts.before - 1) / M); pass >= 0 && out.length < opts.limit; pass--) {
    const s = pass * M + unpermute(passPermutation(spec, worker, pass), x);
    if (s < opts.before) out.push(s);
  }
  return out;
}

/** The earlier steps that wrote the block written at `at`: one per earlier pass, newest first. */
export function previousSteps(spec: PatternSpec, at: StepAt, depth: number): number[] {
  return stepsWriting(spec, blockAt(spec, at), { before: at.step, limit: depth });
}

// --- data -----------------------------------------------------------------------------------------

/** "NVMPAT01": the first 8 bytes of verify data. */
const STAMP_MAGIC = [0x4e, 0x56, 0x4d, 0x50, 0x41, 0x54, 0x30, 0x31];
/** Stamp layout in the 512 data bytes; bytes [STAMP_BYTES, 512) are the generator's stream. */
const S = { seed_id: 8, worker: 12, step: 16, lba: 24, workers: 32, block_sectors: 36, blocks: 40, base_lba: 48, crc: 56 } as const;
export const STAMP_BYTES = 64;

/** The verify data for (spec, worker, step) at lba: 512 bytes, written into out if given. */
export function dataFor(stamp: PatternStamp, lba: number, out: Uint8Array = new Uint8Array(DATA_BYTES)): Uint8Array {
  if (out.length !== DATA_BYTES) throw new Error(`pattern: data buffer must be ${DATA_BYTES} bytes`);
  out.set(STAMP_MAGIC, 0);
  putU32(out, S.seed_id, stamp.seed_id);
  putU32(out, S.worker, stamp.worker);
  putU64(out, S.step, stamp.step);
  putU64(out, S.lba, lba);
  putU32(out, S.workers, stamp.workers);
  putU32(out, S.block_sectors, stamp.block_sectors);
  putU64(out, S.blocks, stamp.blocks);
  putU64(out, S.base_lba, stamp.base_lba);
  putU32(out, S.crc, crc32cRange(out, 0, S.crc));
  putU32(out, S.crc + 4, 0);
  // splitmix-style stream: state advances by φ, each output is mix32(state).
  let state = hash6(stamp.seed_id, stamp.worker, lo32(stamp.step), hi32(stamp.step), lo32(lba), hi32(lba));
  for (let o = STAMP_BYTES; o < DATA_BYTES; o += 4) {
    state = (state + 0x9e3779b9) >>> 0;
    putU32(out, o, mix32(state));
  }
  return out;
}

/** What the data's stamp says, when the data starts with an intact verify stamp; else null. */
export function readDataStamp(data: Uint8Array): (PatternStamp & { lba: number }) | null {
  if (data.length < STAMP_BYTES) return null;
  for (let i = 0; i < 8; i++) if (data[i] !== STAMP_MAGIC[i]) return null;
  if (getU32(data, S.crc) !== crc32cRange(data, 0, S.crc) || getU32(data, S.crc + 4) !== 0) return null;
  const v = {
    seed_id: getU32(data, S.seed_id),
    worker: getU32(data, S.worker),
    step: getU64(data, S.step),
    lba: getU64(data, S.lba),
    workers: getU32(data, S.workers),
    block_sectors: getU32(data, S.block_sectors),
    blocks: getU64(data, S.blocks),
    base_lba: getU64(data, S.base_lba),
  };
  if (v.step < 0 || v.lba < 0 || v.blocks < 0 || v.base_lba < 0) return null;
  if (patternSpecProblem(v) !== null || v.worker >= v.workers) return null;
  return v;
}

export function specOf(stamp: PatternStamp): PatternSpec {
  return { seed_id: stamp.seed_id, workers: stamp.workers, blocks: stamp.blocks, block_sectors: stamp.block_sectors, base_lba: stamp.base_lba };
}

/** The predicted history the writer of (stamp, lba) puts in its sector: newest first. */
export function predictedHistory(stamp: PatternStamp, lba: number, opts: { depth: number; client_id: number }): HistoryEntry[] {
  const scratch = new Uint8Array(DATA_BYTES);
  return previousSteps(specOf(stamp), stamp, opts.depth).map((step) => ({
    kind: "predicted" as const,
    client_id: opts.client_id,
    generation: 0,
    seq: 0,
    step,
    data_crc: crc32cRange(dataFor({ ...stamp, step }, lba, scratch), 0, DATA_BYTES),
    topo_state: "none" as const,
    legs_mask: 0,
    op: "write" as const,
  }));
}

// --- validation -----------------------------------------------------------------------------------

export type PatternProblemKind = "not_pattern" | "misdirected" | "wrong_block" | "data_mismatch" | "history_mismatch" | "stale";

export interface PatternProblem {
  kind: PatternProblemKind;
  detail: string;
}

export interface PatternCheckOptions {
  /** Where the reader read the sector: the header must say this LBA. */
  expected_lba?: number;
  /** The newest step the reader saw earlier on this block: the block's step may not go back. */
  min_step?: number;
  /** The spec the reader runs with: the sector must belong to it. */
  spec?: PatternSpec;
  /** Also recompute the data CRC of every predicted history entry (costs a 512-byte data
   * generation and CRC per entry). Default true. */
  history_data?: boolean;
}

/**
 * Checks a decoded sector against the pattern it claims to belong to. Returns the problems found
 * (empty: the sector is exactly what the pattern says). Never throws.
 */
export function checkPatternSector(sector: DebugSector, opts: PatternCheckOptions = {}): PatternProblem[] {
  const problems: PatternProblem[] = [];
  const at = sector.pattern;
  if (opts.expected_lba !== undefined && sector.lba !== opts.expected_lba) {
    problems.push({ kind: "misdirected", detail: `read at LBA ${opts.expected_lba} but the header says LBA ${sector.lba}` });
  }
  if (at === null) {
    problems.push({ kind: "not_pattern", detail: "the sector carries no verify pattern coordinates" });
    return problems;
  }
  const spec = specOf(at);
  const specProblem = patternSpecProblem(spec);
  if (specProblem !== null || at.worker >= at.workers || ownedBlocks(spec, at.worker) === 0) {
    problems.push({ kind: "not_pattern", detail: `invalid pattern coordinates: ${specProblem ?? `worker ${at.worker} owns no block`}` });
    return problems;
  }
  if (opts.spec !== undefined && !sameSpec(opts.spec, spec)) {
    problems.push({ kind: "not_pattern", detail: `written by another verify run (seed ${spec.seed_id}, ${spec.workers} workers, ${spec.blocks} blocks)` });
    return problems;
  }
  const block = blockAt(spec, at);
  const { first_lba, sectors } = blockLbas(spec, block);
  if (sector.lba < first_lba || sector.lba >= first_lba + sectors) {
    problems.push({
      kind: "wrong_block",
      detail: `worker ${at.worker} step ${at.step} writes block ${block} (LBA ${first_lba}..${first_lba + sectors - 1}), not LBA ${sector.lba}`,
    });
  }
  const expected = dataFor(at, sector.lba, checkScratch);
  if (!sameBytes(expected, sector.data)) {
    const stamp = readDataStamp(sector.data);
    const what = stamp
      ? `the data is the pattern's for worker ${stamp.worker} step ${stamp.step} LBA ${stamp.lba}`
      : "the data is not pattern data";
    problems.push({ kind: "data_mismatch", detail: `expected worker ${at.worker} step ${at.step}'s data for LBA ${sector.lba}; ${what}` });
  }
  const predicted = sector.history.filter((h) => h.kind === "predicted");
  if (predicted.length > 0) {
    const want = stepsWriting(spec, block, { before: at.step, limit: predicted.length });
    if (predicted.length > want.length) {
      problems.push({ kind: "history_mismatch", detail: `history claims ${predicted.length} earlier writes, the pattern has ${want.length} before step ${at.step}` });
    }
    const scratch = checkScratch;
    for (let i = 0; i < Math.min(predicted.length, want.length); i++) {
      const h = predicted[i]!;
      if (h.step !== want[i]) {
        problems.push({ kind: "history_mismatch", detail: `history entry ${i} has step ${h.step}, the pattern says ${want[i]}` });
        break;
      }
      if (opts.history_data !== false) {
        const crc = crc32cRange(dataFor({ ...at, step: h.step }, sector.lba, scratch), 0, DATA_BYTES);
        if (crc !== h.data_crc) {
          problems.push({ kind: "history_mismatch", detail: `history entry ${i} (step ${h.step}) has data checksum ${h.data_crc}, the pattern's is ${crc}` });
          break;
        }
      }
    }
  }
  if (opts.min_step !== undefined && at.step < opts.min_step) {
    problems.push({ kind: "stale", detail: `step ${at.step} is older than step ${opts.min_step} seen earlier on this block: a write was lost or an old copy served` });
  }
  return problems;
}

const checkScratch = new Uint8Array(DATA_BYTES);

function sameSpec(a: PatternSpec, b: PatternSpec): boolean {
  return a.seed_id === b.seed_id && a.workers === b.workers && a.blocks === b.blocks && a.block_sectors === b.block_sectors && a.base_lba === b.base_lba;
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}
