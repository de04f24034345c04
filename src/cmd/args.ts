/**
 * What citty does not do for us: refuse unknown flags and anything else it would silently guess
 * (a typo must not be ignored by a storage tool), collect repeated flags, and parse sizes the
 * way storage people write them.
 */
import type { ArgDef, ArgsDef } from "citty";

export class UsageError extends Error {}

/**
 * Checks a command line against the command's arguments before citty parses it, and says what
 * is wrong and where to look: an unknown flag (with the nearest known one), a flag without its
 * value (citty would take the next flag as the value, or an empty string), a single-value flag
 * given twice (citty keeps the last silently), a boolean given a value, an argument too many, a
 * required flag or argument missing. `command` is "nvmesh volume create", for the messages.
 */
export function checkArgs(command: string, defs: ArgsDef, rawArgs: string[], repeatable: ReadonlySet<string> = new Set()): void {
  const help = `see '${command} --help'`;
  const byFlag = new Map<string, [string, ArgDef]>();
  for (const [name, def] of Object.entries(defs)) {
    if (def.type === "positional") continue;
    const alias = (def as { alias?: string | string[] }).alias;
    for (const f of [name, camelCase(name), ...(Array.isArray(alias) ? alias : alias ? [alias] : [])]) byFlag.set(f, [name, def]);
  }
  const positional = Object.entries(defs).filter(([, d]) => d.type === "positional");
  const seen = new Map<string, string>();
  const given: string[] = [];
  for (let i = 0; i < rawArgs.length; i++) {
    const raw = rawArgs[i]!;
    if (raw === "--") {
      given.push(...rawArgs.slice(i + 1));
      break;
    }
    if (!raw.startsWith("-") || raw === "-" || /^-\d/.test(raw)) {
      given.push(raw);
      continue;
    }
    const [, dashes, negated, flag, inline] = /^(--?)(no-)?([^=]*)(?:=(.*))?$/s.exec(raw)!;
    const entry = byFlag.get(flag!) ?? byFlag.get(camelCase(flag!));
    const shown = `${dashes}${negated ?? ""}${flag}`;
    if (!entry || (negated && entry[1].type !== "boolean")) {
      const near = nearest(`${negated ?? ""}${flag}`, Object.keys(defs).filter((n) => defs[n]!.type !== "positional"));
      throw new UsageError(`unknown option '${shown}'${near ? ` (did you mean '--${near}'?)` : ""}: ${help}`);
    }
    const [name, def] = entry;
    let value = inline;
    if (def.type === "boolean") {
      if (inline !== undefined && inline !== "true" && inline !== "false") throw new UsageError(`${shown} takes no value, got '${inline}': ${help}`);
      value = negated || inline === "false" ? "false" : "true";
    } else {
      const next = rawArgs[i + 1];
      if (value === undefined && next !== undefined && (!next.startsWith("-") || /^-\d/.test(next))) {
        value = next;
        i++;
      }
      if (value === undefined || value === "") throw new UsageError(`${shown} needs a value (${def.description}): ${help}`);
    }
    const before = seen.get(name);
    if (before !== undefined && !repeatable.has(name)) {
      throw new UsageError(`--${name} is given twice${def.type === "boolean" ? "" : ` ('${before}', then '${value}')`}: give it once`);
    }
    seen.set(name, value);
  }
  if (given.length > positional.length) {
    const takes = positional.length === 0 ? "takes no arguments" : `takes ${positional.map(([n]) => n.toUpperCase()).join(" ")} only`;
    throw new UsageError(`unexpected argument '${given[positional.length]}': ${command} ${takes} (${help})`);
  }
  for (const [name, def] of Object.entries(defs)) {
    const d = def as { required?: boolean; default?: unknown; description?: string };
    if (d.default !== undefined) continue;
    if (def.type === "positional") {
      const at = positional.findIndex(([n]) => n === name);
      if (d.required !== false && at >= given.length) throw new UsageError(`missing ${name.toUpperCase()} (${d.description}): ${help}`);
    } else if (d.required === true && !seen.has(name)) {
      throw new UsageError(`missing --${name} (${d.description}): ${help}`);
    }
  }
}

function camelCase(s: string): string {
  return s.replace(/-([a-z])/g, (_s, c: string) => c.toUpperCase());
}

/** The known name closest to a mistyped one, if it is close enough to be a typo, or starts it. */
export function nearest(typed: string, known: string[]): string | undefined {
  let best: string | undefined;
  let bestD = Number.POSITIVE_INFINITY;
  for (const k of known) {
    const d = editDistance(typed, k);
    if (d < bestD) [best, bestD] = [k, d];
  }
  if (best !== undefined && bestD <= Math.max(2, Math.floor(typed.length / 3))) return best;
  return typed.length >= 3 ? known.find((k) => k.startsWith(typed)) : undefined;
}

function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) cur[j] = Math.min(prev[j]! + 1, cur[j - 1]! + 1, prev[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    prev = cur;
  }
  return prev[b.length]!;
}

/** All values of a flag given several times: --drive a --drive b, or --drive=a. */
export function repeated(rawArgs: string[], name: string): string[] {
  const out: string[] = [];
  for (let i = 0; i < rawArgs.length; i++) {
    const a = rawArgs[i]!;
    if (a === `--${name}`) {
      const v = rawArgs[i + 1];
      if (v === undefined || v.startsWith("-")) throw new UsageError(`--${name} needs a value`);
      out.push(v);
      i++;
    } else if (a.startsWith(`--${name}=`)) {
      out.push(a.slice(name.length + 3));
    }
  }
  return out;
}

const UNITS: Record<string, number> = { "": 1, B: 1, K: 2 ** 10, M: 2 ** 20, G: 2 ** 30, T: 2 ** 40, P: 2 ** 50 };

/** "2G", "512M", "4096", "1.5T", "16KiB" → bytes (binary units, as dd, fio and lsblk use them). */
export function parseSize(text: string, what = "size"): number {
  const bad = (why: string) => new UsageError(`invalid ${what} '${text}': ${why}`);
  if (/^\s*-/.test(text)) throw bad("a size cannot be negative; give e.g. 10G");
  const m = /^\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(?:i?B)?\s*$/i.exec(text);
  if (!m) throw bad("give a number with an optional unit K, M, G, T or P, e.g. 10G or 512M");
  const bytes = Number(m[1]) * UNITS[m[2]!.toUpperCase()]!;
  if (bytes === 0) throw bad("a size must be more than 0");
  if (!Number.isInteger(bytes)) throw bad(`that is ${bytes} bytes, not a whole number`);
  if (!Number.isSafeInteger(bytes)) throw bad("too large");
  return bytes;
}

export function parsePositiveInt(text: string | undefined, what: string): number | undefined {
  if (text === undefined) return undefined;
  if (!/^\d+$/.test(text) || Number(text) <= 0) throw new UsageError(`${what} must be a positive integer, got '${text}'`);
  return Number(text);
}

/** "30s", "500ms", "2m" → milliseconds. */
export function parseDuration(text: string, what: string): number {
  const m = /^(\d+)(ms|s|m)?$/.exec(text);
  if (!m || Number(m[1]) === 0) throw new UsageError(`invalid ${what} '${text}': give a duration such as 30s, 500ms or 2m`);
  return Number(m[1]) * (m[2] === "ms" ? 1 : m[2] === "m" ? 60_000 : 1000);
}

export function formatBytes(n: number): string {
  for (const [u, f] of [["T", 2 ** 40], ["G", 2 ** 30], ["M", 2 ** 20], ["K", 2 ** 10]] as const) {
    if (n >= f) return `${(n / f).toFixed(n % f === 0 ? 0 : 1)}${u}`;
  }
  return `${n}B`;
}

/** HOST:PORT of a TOMA from -m/--management or NVMESH_MANAGEMENT. */
export function managementAddress(flag: string | undefined): string {
  const addr = flag ?? process.env.NVMESH_MANAGEMENT;
  if (!addr) throw new UsageError("no management address: pass -m HOST:PORT of a TOMA (the address of its 'toma run --listen'), or set NVMESH_MANAGEMENT");
  const from = flag === undefined ? " (from NVMESH_MANAGEMENT)" : "";
  const m = /^(?:[^:\s[\]]+|\[[0-9a-fA-F:]+\]):(\d{1,5})$/.exec(addr);
  if (!m) throw new UsageError(`invalid management address '${addr}'${from}: expected HOST:PORT, e.g. 10.0.0.1:4000`);
  checkPort(Number(m[1]), `management address '${addr}'${from}`);
  return addr;
}

/** A daemon's HOST:PORT (port 0: any free one) or unix:/path to listen on. */
export function listenAddress(text: string, what = "--listen"): string {
  if (text.startsWith("unix:")) return text;
  const m = /^(.*):(\d{1,5})$/.exec(text);
  if (!m) throw new UsageError(`invalid ${what} '${text}': expected HOST:PORT (e.g. 0.0.0.0:4420) or unix:/path`);
  checkPort(Number(m[2]), `${what} '${text}'`);
  return text;
}

function checkPort(port: number, what: string): void {
  if (port > 65535) throw new UsageError(`invalid ${what}: port ${port} is above 65535`);
}
