/**
 * What a path given as a drive must be, checked before it is opened, so that the message says
 * what is wrong with it and what to do (the open itself reports only the errno).
 */
import { accessSync, constants, statSync } from "node:fs";
import { UsageError } from "./args.ts";

export function checkDrivePath(path: string, need: "read" | "read and write"): void {
  let st: ReturnType<typeof statSync>;
  try {
    st = statSync(path);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "ENOENT") {
      const make = need === "read" ? "" : ` (make a file with 'truncate -s 10G ${path}')`;
      throw new UsageError(`${path} does not exist: give a drive file or a block device${make}`);
    }
    if (code === "EACCES") throw new UsageError(`cannot reach ${path}: permission denied on a directory of its path (run as root?)`);
    throw new UsageError(`cannot open ${path}: ${(e as Error).message}`);
  }
  if (st.isDirectory()) throw new UsageError(`${path} is a directory: give a drive file or a block device`);
  if (!st.isFile() && !st.isBlockDevice()) throw new UsageError(`${path} is neither a file nor a block device`);
  try {
    accessSync(path, need === "read" ? constants.R_OK : constants.R_OK | constants.W_OK);
  } catch {
    throw new UsageError(`no permission to ${need} ${path}: run as root, or give this user access to it`);
  }
}
