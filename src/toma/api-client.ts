/**
 * A small typed client of the management API, for the admin commands and the client daemon.
 * Error responses become a thrown TomaApiError carrying the server's message and status.
 */
import type { AttachInfo } from "../engine/layout/types.ts";
import type { ClusterKey } from "../engine/wire/cluster-key.ts";
import { ManagementSigner, type Transport } from "./api-auth.ts";
import type { ClusterJson, CreateVolumeBody, DriveJson, ServerChangeJson, TargetJson, VolumeJson } from "./api-types.ts";

export class TomaApiError extends Error {
  constructor(
    /** HTTP status; 0 when the TOMA could not be reached at all. */
    readonly status: number,
    message: string,
    /** The address answered nothing, or something that is not a TOMA's management API. */
    readonly kind?: "unreachable" | "not_toma",
    /** 421 from a TOMA that is not the leader: the leader's management address. */
    readonly leader?: string,
  ) {
    super(message);
  }
}

/** Why a request reached no TOMA, in words (fetch's own messages name the URL, not the cause). */
function unreachable(e: unknown, timeout_ms: number): string {
  const code = (e as { code?: unknown }).code;
  if ((e as Error).name === "TimeoutError") return `no answer within ${timeout_ms / 1000} s`;
  if (code === "ECONNREFUSED") return "connection refused (nothing listens there)";
  if (code === "ECONNRESET") return "the connection was closed without an answer (is it a target's port rather than a TOMA's?)";
  if (code === "ENOTFOUND") return "unknown host name";
  if (code === "EHOSTUNREACH" || code === "ENETUNREACH") return "no route to that host";
  return (e as Error).message;
}

export interface TomaClient {
  readonly base: string;
  cluster(): Promise<ClusterJson>;
  targets(): Promise<TargetJson[]>;
  drives(): Promise<DriveJson[]>;
  volumes(): Promise<VolumeJson[]>;
  volume(name: string): Promise<VolumeJson>;
  createVolume(req: CreateVolumeBody): Promise<VolumeJson>;
  /** `force`: even while clients have it attached (they are fenced out of it first). */
  deleteVolume(name: string, opts?: { force?: boolean }): Promise<void>;
  attach(name: string): Promise<AttachInfo>;
  /** TOMA cluster, leader only (421 with the leader elsewhere): add the server whose TOMA is at `address`. */
  addServer(name: string, address: string): Promise<ServerChangeJson>;
  removeServer(name: string): Promise<ServerChangeJson>;
  /** Any route (the client daemon's routes go through this). */
  call(method: string, path: string, body?: unknown): Promise<unknown>;
}

/**
 * `base` is "http://HOST:PORT"; a bare "HOST:PORT" is accepted too. `key`: the key that signs
 * every request (api-auth.ts); none: only a TOMA started --insecure will answer. `signer`: one
 * shared with other clients (it holds the client secrets learned at registration; it then
 * replaces `key`).
 */
export function tomaClient(base: string, opts: { timeout_ms?: number; key?: ClusterKey | null; signer?: ManagementSigner } = {}): TomaClient {
  const root = (/^https?:\/\//.test(base) ? base : `http://${base}`).replace(/\/+$/, "");
  const timeout_ms = opts.timeout_ms ?? 30_000;
  // Shared by the clients of one daemon (homing.ts): the secret a TOMA gave it at registration
  // signs its requests to whichever TOMA serves it now.
  const signer = opts.signer ?? new ManagementSigner(opts.key ?? null);
  const where = root.replace(/^https?:\/\//, "");

  const send: Transport = async (req) => {
    let res: Response;
    try {
      res = await fetch(`${root}${req.path}`, {
        method: req.method,
        headers: {
          ...(req.authorization === null ? {} : { authorization: req.authorization }),
          ...(req.body.length === 0 ? {} : { "content-type": "application/json" }),
        },
        body: req.body.length === 0 ? undefined : req.body,
        signal: AbortSignal.timeout(timeout_ms),
      });
    } catch (e) {
      throw new TomaApiError(0, `cannot reach a TOMA at ${where}: ${unreachable(e, timeout_ms)}`, "unreachable");
    }
    const text = await res.text();
    try {
      return { status: res.status, body: text.length > 0 ? JSON.parse(text) : null };
    } catch {
      throw new TomaApiError(res.status, `${where} is not a TOMA: it answered HTTP ${res.status} without the management API's JSON`, "not_toma");
    }
  };

  async function call<T>(method: string, path: string, body?: unknown): Promise<T> {
    // Signed as the server will see it: the URL parser normalises what fetch sends (dot
    // segments, escapes), so sign its result rather than the text given here.
    const u = new URL(`${root}${path}`);
    const res = await signer.call(send, method, u.pathname + u.search, body);
    if (res.status < 200 || res.status > 299) {
      const json = res.body;
      const msg = typeof json === "object" && json !== null && typeof (json as { error?: unknown }).error === "string"
        ? (json as { error: string }).error
        : `HTTP ${res.status}`;
      const leader = typeof json === "object" && json !== null && typeof (json as { leader?: unknown }).leader === "string" ? (json as { leader: string }).leader : undefined;
      throw new TomaApiError(res.status, msg, undefined, leader);
    }
    return res.body as T;
  }

  const vol = (name: string) => `/v1/volumes/${encodeURIComponent(name)}`;
  return {
    base: root,
    cluster: () => call("GET", "/v1/cluster"),
    targets: () => call("GET", "/v1/targets"),
    drives: () => call("GET", "/v1/drives"),
    volumes: () => call("GET", "/v1/volumes"),
    volume: (name) => call("GET", vol(name)),
    createVolume: (req) => call("POST", "/v1/volumes", req),
    deleteVolume: async (name, opts) => {
      await call("DELETE", opts?.force ? `${vol(name)}?force=true` : vol(name));
    },
    attach: (name) => call("GET", `${vol(name)}/attach`),
    addServer: (name, address) => call("POST", "/v1/cluster/servers", { name, address }),
    removeServer: (name) => call("DELETE", `/v1/cluster/servers/${encodeURIComponent(name)}`),
    call: (method, path, body) => call(method, path, body),
  };
}
