/**
 * Every nvmesh command is defined through `command()`: citty's definition plus the strict flag
 * check, and one place that turns a thrown error into a clear message and a non-zero exit.
 */
import { type ArgsDef, type CommandContext, type CommandDef, defineCommand } from "citty";
import { consola } from "consola";
import { rejectUnknownFlags, UsageError } from "./args.ts";

export function command<T extends ArgsDef>(def: {
  meta: { name: string; description: string };
  args?: T;
  subCommands?: CommandDef["subCommands"];
  run?: (ctx: CommandContext<T>) => unknown | Promise<unknown>;
}): CommandDef<T> {
  const run = def.run;
  return defineCommand<T>({
    meta: def.meta,
    args: def.args,
    subCommands: def.subCommands,
    run: run
      ? async (ctx) => {
          try {
            rejectUnknownFlags(ctx as unknown as CommandContext<ArgsDef>, (def.args ?? {}) as ArgsDef);
            await run(ctx);
          } catch (e) {
            fail(e);
          }
        }
      : undefined,
  });
}

export function fail(e: unknown): never {
  const msg = e instanceof Error ? e.message : String(e);
  consola.error(msg);
  if (process.env.NVMESH_DEBUG && e instanceof Error && e.stack) consola.log(e.stack);
  process.exit(e instanceof UsageError ? 2 : 1);
}

/** Resolves when the process is asked to stop (Ctrl-C, SIGTERM). */
export function untilSignal(): Promise<string> {
  return new Promise((resolve) => {
    process.once("SIGINT", () => resolve("SIGINT"));
    process.once("SIGTERM", () => resolve("SIGTERM"));
  });
}
