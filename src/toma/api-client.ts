/**
 * A small typed client of the management API, for the admin commands and the client daemon.
 * Error responses become a thrown TomaApiError carrying the server's message and status.
 */
import type { AttachInfo } from "../engine/layout/types.ts";
import type { ClusterJson, CreateVolumeBody, DriveJson, TargetJson, VolumeJson } from "./api-types.ts";

export class TomaApiError extends Error {
  constructor(
    /** HTTP status; 0 when the TOMA could not be reached at all. */
    readonly status: number,
    message: string,
    /** The address answered nothing, or something that is not a TOMA's management API. */
    readonly kind?: "unreachable" | "not_toma",
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
  deleteVolume(name: string): Promise<void>;
  attach(name: string): Promise<AttachInfo>;
  /** Any route (the client daemon's routes go through this). */
  call(method: string, path: string, body?: unknown): Promise<unknown>;
}

/** `base` is "http://HOST:PORT"; a bare "HOST:PORT" is accepted too. */
/** `token`: the cluster key's management token, sent with every request (cluster-key.ts). */
export function tomaClient(base: string, opts: { timeout_ms?: number; token?: string } = {}): TomaClient {
  const root = (/^https?:\/\//.test(base) ? base : `http://${base}`).replace(/\/+$/, "");
  const timeout_ms = opts.timeout_ms ?? 30_000;
  const where = root.replace(/^https?:\/\//, "");
  const auth: Record<string, string> = opts.token === undefined ? {} : { authorization: `Bearer ${opts.token}` };

  async function call<T>(method: string, path: string, body?: unknown): Promise<T> {
    let res: Response;
    try {
      res = await fetch(`${root}${path}`, {
        method,
        headers: body === undefined ? auth : { ...auth, "content-type": "application/json" },
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: AbortSignal.timeout(timeout_ms),
      });
    } catch (e) {
      throw new TomaApiError(0, `cannot reach a TOMA at ${where}: ${unreachable(e, timeout_ms)}`, "unreachable");
    }
    const text = await res.text();
    let json: unknown;
    try {
      json = text.length > 0 ? JSON.parse(text) : null;
    } catch {
      throw new TomaApiError(res.status, `${where} is not a TOMA: it answered HTTP ${res.status} without the management API's JSON`, "not_toma");
    }
    if (!res.ok) {
      const msg = typeof json === "object" && json !== null && typeof (json as { error?: unknown }).error === "string"
        ? (json as { error: string }).error
        : `HTTP ${res.status}`;
      throw new TomaApiError(res.status, msg);
    }
    return json as T;
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
    deleteVolume: async (name) => {
      await call("DELETE", vol(name));
    },
    attach: (name) => call("GET", `${vol(name)}/attach`),
    call: (method, path, body) => call(method, path, body),
  };
}
