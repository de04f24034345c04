/**
 * The cluster's key files: where each command finds its key, `nvmesh cluster genkey` (the server
 * key) and `nvmesh cluster client-key` (the client key derived from it), and `--insecure`, the
 * only way to run a daemon without a key (src/engine/wire/cluster-key.ts, docs/security.md).
 */
import { chmodSync, existsSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { randomBytes } from "node:crypto";
import { dirname } from "node:path";
import { consola } from "consola";
import { CLUSTER_KEY_BYTES, type ClusterKey, clientKeyOf, formatKeyFile, parseKeyFile } from "../engine/wire/cluster-key.ts";
import { UsageError } from "./args.ts";

/** The server key's usual place (servers and administrators). */
export const DEFAULT_KEY_FILE = "/etc/nvmesh/cluster.key";
/** The client key's usual place (client hosts). */
export const DEFAULT_CLIENT_KEY_FILE = "/etc/nvmesh/client.key";

export const keyFileArg = {
  "key-file": {
    type: "string" as const,
    description: `key file (or NVMESH_KEY_FILE; default ${DEFAULT_KEY_FILE}, else ${DEFAULT_CLIENT_KEY_FILE}, when it exists)`,
  },
};

export const insecureArg = {
  insecure: {
    type: "boolean" as const,
    description: "run WITHOUT a cluster key: anyone who reaches the port may read and write every drive (labs only)",
  },
};

/**
 * The key named by --key-file or NVMESH_KEY_FILE (which must then be readable and valid), else
 * the server key's default file, else the client key's, when it exists; else null.
 */
export function clusterKey(flag: string | undefined): ClusterKey | null {
  const named = flag ?? (process.env.NVMESH_KEY_FILE || undefined);
  const path = named ?? [DEFAULT_KEY_FILE, DEFAULT_CLIENT_KEY_FILE].find((p) => existsSync(p));
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
    const key = parseKeyFile(text);
    if ((statSync(path).mode & 0o077) !== 0) consola.warn(`cluster key file ${path} is readable by other users: chmod 600 ${path}`);
    return key;
  } catch (e) {
    throw new UsageError(`cluster key file ${path}: ${(e as Error).message}`);
  }
}

/** Why the server key is needed, when a client key was given instead. */
function needsServerKey(what: string): UsageError {
  return new UsageError(
    `${what} needs the cluster's server key (nvmesh cluster genkey), and the key file given holds a client key, which a client host ` +
      "holds and which gives no more than a client's rights",
  );
}

/**
 * The key of a daemon: required unless `insecure`, which then must come without a key and is
 * announced loudly. `server`: the daemon needs the server key (a target, a TOMA).
 */
export function daemonKey(args: { "key-file"?: string; insecure?: boolean }, what: string, server: boolean): ClusterKey | null {
  const key = clusterKey(args["key-file"]);
  if (args.insecure) {
    if (key !== null) {
      const where = args["key-file"] || process.env.NVMESH_KEY_FILE || "found in /etc/nvmesh";
      throw new UsageError(`--insecure and a cluster key (${where}): give one or the other`);
    }
    warnInsecure(what);
    return null;
  }
  if (key === null) {
    throw new UsageError(
      `${what} needs a cluster key: --key-file FILE, NVMESH_KEY_FILE, or ${server ? DEFAULT_KEY_FILE : `${DEFAULT_KEY_FILE} or ${DEFAULT_CLIENT_KEY_FILE}`} ` +
        `(write one with 'nvmesh cluster genkey --out ${DEFAULT_KEY_FILE}'); --insecure runs it without one, for labs only`,
    );
  }
  if (server && key.kind !== "server") throw needsServerKey(what);
  return key;
}

/** The server key's bytes from a daemon key that must be one (null: --insecure). */
export function serverKeyBytes(key: ClusterKey | null, what: string): Uint8Array | null {
  if (key === null) return null;
  if (key.kind !== "server") throw needsServerKey(what);
  return key.key;
}

/** Said by each daemon started --insecure, so that nobody runs one so by accident unnoticed. */
export function warnInsecure(what: string): void {
  const bar = "!".repeat(78);
  consola.warn(
    [
      bar,
      `INSECURE: ${what} runs without a cluster key (--insecure).`,
      "Anyone who can reach it can read and write every drive, rewrite the cluster's metadata,",
      "and create or delete volumes. For a lab only: run 'nvmesh cluster genkey' for anything else.",
      bar,
    ].join("\n"),
  );
}

/** Writes `text` to `path` (mode 600); refuses to replace an existing file unless `force`. */
function writePrivate(path: string, text: string, force: boolean, why: string): void {
  if (existsSync(path) && statSync(path).isDirectory()) throw new UsageError(`${path} is a directory: give the path of the key file to write, e.g. ${path.replace(/\/+$/, "")}/cluster.key`);
  if (existsSync(path) && !force) throw new UsageError(`${path} exists: ${why}; --force replaces it`);
  try {
    writeFileSync(path, text, { mode: 0o600 });
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const reason =
      code === "ENOENT" ? `its directory ${dirname(path)} does not exist (mkdir -p ${dirname(path)})`
      : code === "EACCES" || code === "EROFS" ? "permission denied (run as root?)"
      : (e as Error).message;
    throw new Error(`cannot write ${path}: ${reason}`);
  }
  chmodSync(path, 0o600); // `mode` applies only to a file created here, not to one --force replaced
}

/** Writes a fresh server key to `path`. */
export function generateKeyFile(path: string, force: boolean): void {
  const key = new Uint8Array(randomBytes(CLUSTER_KEY_BYTES));
  writePrivate(path, formatKeyFile({ kind: "server", key }), force, "a new key would lock every daemon using the old one out");
}

/** Writes the client key derived from `server` to `path`. */
export function writeClientKeyFile(server: ClusterKey, path: string, force: boolean): void {
  if (server.kind !== "server") throw needsServerKey("deriving the client key");
  writePrivate(path, formatKeyFile({ kind: "client", key: clientKeyOf(server.key) }), force, "not replaced");
}
