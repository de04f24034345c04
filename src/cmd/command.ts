/**
 * Every nvmesh command is defined through `command()`, and run through `runCli()`: the strict
 * argument check before citty parses anything, usage errors (exit 2) said in one line with where
 * to look, and one place that turns a thrown error into a clear message and a non-zero exit.
 */
import { type ArgsDef, type CommandContext, type CommandDef, defineCommand, runCommand, showUsage } from "citty";
import { consola } from "consola";
import { TomaApiError } from "../toma/api-client.ts";
import { checkArgs, nearest, UsageError } from "./args.ts";

/** The flags of each command that may be given several times (read with `repeated()`). */
const repeatableFlags = new WeakMap<object, ReadonlySet<string>>();

export function command<T extends ArgsDef>(def: {
  meta: { name: string; description: string };
  args?: T;
  /** Flags that may be given several times (--drive a --drive b); any other given twice is refused. */
  repeatable?: (keyof T & string)[];
  subCommands?: CommandDef["subCommands"];
  run?: (ctx: CommandContext<T>) => unknown | Promise<unknown>;
}): CommandDef<T> {
  const run = def.run;
  const cmd = defineCommand<T>({
    meta: def.meta,
    args: def.args,
    subCommands: def.subCommands,
    run: run
      ? async (ctx) => {
          try {
            await run(ctx);
          } catch (e) {
            fail(e);
          }
        }
      : undefined,
  });
  if (def.repeatable) repeatableFlags.set(cmd, new Set(def.repeatable));
  return cmd;
}

type AnyCommand = CommandDef<ArgsDef>;

async function resolved<V>(v: V | (() => V | Promise<V>) | Promise<V>): Promise<V> {
  return typeof v === "function" ? await (v as () => V | Promise<V>)() : await v;
}

/**
 * Runs the command that `rawArgs` name under `main` (`nvmesh volume create --name v …`): help,
 * the version, a missing or unknown command, then the argument check and the command itself.
 */
export async function runCli(main: AnyCommand, rawArgs: string[], version: string): Promise<void> {
  try {
    const path = ["nvmesh"];
    let cmd = main;
    let parent: AnyCommand | undefined;
    let i = 0;
    for (;;) {
      const subs = await resolved(cmd.subCommands);
      const word = rawArgs[i];
      if (!subs || Object.keys(subs).length === 0 || word === undefined || word.startsWith("-")) break;
      const sub = subs[word];
      if (sub === undefined) {
        const names = Object.keys(subs);
        const near = nearest(word, names);
        throw new UsageError(`unknown command '${word}' for ${path.join(" ")}${near ? ` (did you mean '${near}'?)` : ""}: use ${names.join(", ")}`);
      }
      [parent, cmd] = [cmd, (await resolved(sub)) as AnyCommand];
      path.push(word);
      i++;
    }
    const rest = rawArgs.slice(i);
    const flags = rest.slice(0, rest.includes("--") ? rest.indexOf("--") : rest.length);
    if (flags.includes("--help") || flags.includes("-h")) {
      await showUsage(cmd, parent);
      process.exit(0);
    }
    if (path.length === 1 && (flags.includes("--version") || flags.includes("-v"))) {
      process.stdout.write(`${version}\n`);
      process.exit(0);
    }
    if (!cmd.run) {
      await showUsage(cmd, parent);
      const names = Object.keys((await resolved(cmd.subCommands)) ?? {});
      throw new UsageError(`${path.join(" ")} needs a command: ${names.join(", ")}`);
    }
    checkArgs(path.join(" "), (await resolved(cmd.args)) ?? {}, rest, repeatableFlags.get(cmd));
    await runCommand(cmd, { rawArgs: rest });
  } catch (e) {
    fail(e);
  }
}

/**
 * The end of a failed command: its message on stderr (never a stack trace, unless NVMESH_DEBUG),
 * exit code 2 for a usage error (the command line is wrong) and 1 for a failed operation.
 */
export function fail(e: unknown): never {
  consola.error(explain(e));
  if (process.env.NVMESH_DEBUG && e instanceof Error && e.stack) consola.log(e.stack);
  // A request the TOMA found malformed (400) is the command line's fault too.
  const usage = e instanceof UsageError || (e instanceof TomaApiError && e.status === 400);
  process.exit(usage ? 2 : 1);
}

/** The error's message, with what to do where the error alone does not say it. */
function explain(e: unknown): string {
  const msg = e instanceof Error ? e.message : String(e);
  if (!(e instanceof TomaApiError)) return msg;
  if (e.kind === "unreachable" || e.kind === "not_toma") {
    return `${msg}. Check -m (or NVMESH_MANAGEMENT): it must name the --listen address of a running 'nvmesh toma run'`;
  }
  if (e.status === 503) return `${msg}; try again once it is ready ('nvmesh cluster status' shows why it is not)`;
  return msg;
}

/** Adds what to do to the TOMA's refusal of this HTTP status (its message says only what is wrong). */
export async function hinted<T>(p: Promise<T>, status: number, hint: string): Promise<T> {
  try {
    return await p;
  } catch (e) {
    if (e instanceof TomaApiError && e.status === status) throw new TomaApiError(e.status, `${e.message}: ${hint}`, e.kind);
    throw e;
  }
}

/** Resolves when the process is asked to stop (Ctrl-C, SIGTERM). */
export function untilSignal(): Promise<string> {
  return new Promise((resolve) => {
    process.once("SIGINT", () => resolve("SIGINT"));
    process.once("SIGTERM", () => resolve("SIGTERM"));
  });
}
