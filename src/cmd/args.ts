/**
 * What citty does not do for us: refuse unknown flags (a typo must not be silently ignored by a
 * storage tool), collect repeated flags, and parse sizes the way storage people write them.
 */
import type { ArgsDef, CommandContext } from "citty";

export class UsageError extends Error {}

/** Throws UsageError for any --flag or -f the command does not define. */
export function rejectUnknownFlags(ctx: CommandContext<ArgsDef>, defs: ArgsDef): void {
  const known = new Set<string>();
  for (const [name, def] of Object.entries(defs)) {
    known.add(name);
    const alias = (def as { alias?: string | string[] }).alias;
    for (const a of Array.isArray(alias) ? alias : alias ? [alias] : []) known.add(a);
  }
  for (const raw of ctx.rawArgs) {
    if (raw === "--") break;
    const m = /^--?(?:no-)?([^=]+)/.exec(raw);
    if (!m || /^-\d/.test(raw)) continue;
    const name = m[1]!;
    const camel = name.replace(/-([a-z])/g, (_s, c: string) => c.toUpperCase());
    if (!known.has(name) && !known.has(camel)) {
      throw new UsageError(`unknown option '${raw.split("=")[0]}' (see --help)`);
    }
  }
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
  const m = /^\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(?:i?B)?\s*$/i.exec(text);
  if (!m) throw new UsageError(`invalid ${what} '${text}': use a number with an optional K, M, G or T suffix`);
  const bytes = Number(m[1]) * UNITS[m[2]!.toUpperCase()]!;
  if (!Number.isSafeInteger(bytes) || bytes <= 0) throw new UsageError(`invalid ${what} '${text}'`);
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
  if (!m || Number(m[1]) <= 0) throw new UsageError(`invalid ${what} '${text}': use e.g. 30s, 500ms or 2m`);
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
  if (!addr) throw new UsageError("no management address: pass -m HOST:PORT or set NVMESH_MANAGEMENT");
  if (!/^[^:\s]+:\d{1,5}$/.test(addr) && !/^\[[0-9a-fA-F:]+\]:\d{1,5}$/.test(addr)) {
    throw new UsageError(`invalid management address '${addr}': expected HOST:PORT`);
  }
  return addr;
}

export function listenAddress(text: string, what = "--listen"): string {
  if (text.startsWith("unix:")) return text;
  const m = /^(.*):(\d{1,5})$/.exec(text);
  if (!m || Number(m[2]) > 65535) throw new UsageError(`invalid ${what} '${text}': expected HOST:PORT or unix:/path`);
  return text;
}
