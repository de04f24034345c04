/** How to run this same nvmesh again as a child process, compiled or from source. */
export function selfCommand(): string[] {
  // A `bun build --compile` binary runs its entry from the embedded /$bunfs; from source, bun
  // needs the script path too.
  return Bun.main.startsWith("/$bunfs") ? [process.execPath] : [process.execPath, Bun.main];
}
