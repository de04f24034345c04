/**
 * The cluster key file: where each command finds it, and `nvmesh cluster genkey`, which writes one.
 * Every daemon and admin command of a cluster uses the same key (src/engine/wire/cluster-key.ts).
 */
import { chmodSync, existsSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { randomBytes } from "node:crypto";
import { dirname } from "node:path";
import { consola } from "consola";
import { CLUSTER_KEY_BYTES, formatClusterKey, parseClusterKey } from "../engine/wire/cluster-key.ts";
import { UsageError } from "./args.ts";

export const DEFAULT_KEY_FILE = "/etc/nvmesh/cluster.key";

export const keyFileArg = {
  "key-file": {
    type: "string" as const,
    description: `cluster key file (or NVMESH_KEY_FILE; default ${DEFAULT_KEY_FILE} when it exists; nvmesh cluster genkey writes one)`,
  },
};

/**
 * The key named by --key-file or NVMESH_KEY_FILE (which must then be readable and valid), else
 * the default file when it exists, else null: no key, the cluster runs unauthenticated.
 */
export function clusterKey(flag: string | undefined): Uint8Array | null {
  const named = flag ?? (process.env.NVMESH_KEY_FILE || undefined);
  const path = named ?? (existsSync(DEFAULT_KEY_FILE) ? DEFAULT_KEY_FILE : undefined);
  if (path === undefined) return null;
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const from = named === undefined ? "" : flag !== undefined ? " (--key-file)" : " (NVMESH_KEY_FILE)";
    const why =
      code === "ENOENT" ? "it does not exist; copy the cluster's key there, or write a new one with 'nvmesh cluster genkey --out FILE'"
      : code === "EISDIR" ? "it is a directory; give the key file itself"
      : code === "EACCES" ? "permission denied; run as root, or give this user read access"
      : (e as Error).message;
    throw new UsageError(`cannot read the cluster key file ${path}${from}: ${why}`);
  }
  try {
    const key = parseClusterKey(text);
    if ((statSync(path).mode & 0o077) !== 0) consola.warn(`cluster key file ${path} is readable by other users: chmod 600 ${path}`);
    return key;
  } catch (e) {
    throw new UsageError(`cluster key file ${path}: ${(e as Error).message}`);
  }
}

/** Said once by each daemon started without a key: anyone who reaches its port may use it. */
export function warnNoKey(what: string): void {
  consola.warn(`no cluster key: ${what} accepts anyone who can reach it (create one with 'nvmesh cluster genkey --out ${DEFAULT_KEY_FILE}' and give it to every daemon)`);
}

/** Writes a fresh key to `path` (mode 600); refuses to replace an existing file unless `force`. */
export function generateKeyFile(path: string, force: boolean): void {
  if (existsSync(path) && statSync(path).isDirectory()) throw new UsageError(`${path} is a directory: give the path of the key file to write, e.g. ${path.replace(/\/+$/, "")}/cluster.key`);
  if (existsSync(path) && !force) throw new UsageError(`${path} exists: a new key would lock every daemon using the old one out; --force replaces it`);
  try {
    writeFileSync(path, formatClusterKey(new Uint8Array(randomBytes(CLUSTER_KEY_BYTES))), { mode: 0o600 });
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const why =
      code === "ENOENT" ? `its directory ${dirname(path)} does not exist (mkdir -p ${dirname(path)})`
      : code === "EACCES" || code === "EROFS" ? "permission denied (run as root?)"
      : (e as Error).message;
    throw new Error(`cannot write ${path}: ${why}`);
  }
  chmodSync(path, 0o600); // `mode` applies only to a file created here, not to one --force replaced
}
