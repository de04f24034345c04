/** Tables for people, JSON for scripts (-o json). */
import { consola } from "consola";
import { UsageError } from "./args.ts";

export type OutputFormat = "table" | "json";

export const outputArg = {
  output: { type: "string" as const, alias: ["o"], description: "output format: table or json", default: "table" },
};

export function outputFormat(v: string | undefined): OutputFormat {
  if (v === undefined || v === "table") return "table";
  if (v === "json") return "json";
  throw new UsageError(`invalid output format '${v}': use -o table or -o json`);
}

/** Resolves once the whole text is written: await it before process.exit, which would otherwise
 * cut a large output to a pipe short (process.stdout.write does not wait). */
export async function printJson(value: unknown): Promise<void> {
  await Bun.write(Bun.stdout, `${JSON.stringify(value, null, 2)}\n`);
}

export function printTable(rows: Record<string, unknown>[], columns?: string[]): void {
  if (rows.length === 0) {
    consola.log("(none)");
    return;
  }
  const cols = columns ?? Object.keys(rows[0]!);
  const cells = rows.map((r) => cols.map((c) => (r[c] === undefined || r[c] === null ? "-" : String(r[c]))));
  const widths = cols.map((c, i) => Math.max(c.length, ...cells.map((r) => r[i]!.length)));
  const line = (vals: string[]) => vals.map((v, i) => v.padEnd(widths[i]!)).join("  ").trimEnd();
  process.stdout.write(`${line(cols.map((c) => c.toUpperCase()))}\n`);
  for (const r of cells) process.stdout.write(`${line(r)}\n`);
}

export function printKeyValues(obj: Record<string, unknown>): void {
  const w = Math.max(...Object.keys(obj).map((k) => k.length));
  for (const [k, v] of Object.entries(obj)) {
    process.stdout.write(`${k.padEnd(w)}  ${typeof v === "object" && v !== null ? JSON.stringify(v) : String(v)}\n`);
  }
}
