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
  ) {
    super(message);
  }
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
  /** Any route (the client daemon's routes go through this). */
  call(method: string, path: string, body?: unknown): Promise<unknown>;
}

/** `base` is "http://HOST:PORT"; a bare "HOST:PORT" is accepted too. */
/** `token`: the cluster key's management token, sent with every request (cluster-key.ts). */
export function tomaClient(base: string, opts: { timeout_ms?: number; token?: string } = {}): TomaClient {
  const root = (/^https?:\/\//.test(base) ? base : `http://${base}`).replace(/\/+$/, "");
  const timeout_ms = opts.timeout_ms ?? 30_000;
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
      throw new TomaApiError(0, `cannot reach the TOMA at ${root}: ${(e as Error).message}`);
    }
    const text = await res.text();
    let json: unknown;
    try {
      json = text.length > 0 ? JSON.parse(text) : null;
    } catch {
      throw new TomaApiError(res.status, `TOMA at ${root} answered ${res.status} with a non-JSON body`);
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
    deleteVolume: async (name, opts) => {
      await call("DELETE", opts?.force ? `${vol(name)}?force=true` : vol(name));
    },
    attach: (name) => call("GET", `${vol(name)}/attach`),
    call: (method, path, body) => call(method, path, body),
  };
}
