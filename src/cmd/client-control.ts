/**
 * The client daemon's local control channel: HTTP + JSON on a unix socket in the run directory,
 * used by `client attach|detach|show`. Local only: whoever can reach the socket is root on this host.
 */
import { mkdirSync } from "node:fs";
import * as v from "valibot";
import { AttachError, type Attachment, type ClientDaemon, VOLUME_NAME } from "../engine/client/daemon.ts";

export const DEFAULT_RUN_DIR = "/run/nvmesh";

export function runDir(flag: string | undefined): string {
  return flag ?? process.env.NVMESH_RUN_DIR ?? DEFAULT_RUN_DIR;
}

export const controlSocket = (dir: string) => `${dir}/client.sock`;

const AttachBody = v.object({
  volume: v.pipe(v.string(), v.regex(VOLUME_NAME, "invalid volume name")),
  nbd_tcp: v.optional(v.pipe(v.string(), v.regex(/^[^\s]+:\d{1,5}$/, "nbd_tcp must be HOST:PORT"))),
});
const DetachBody = v.object({ volume: v.pipe(v.string(), v.regex(VOLUME_NAME, "invalid volume name")) });

const STATUS: Record<AttachError["code"], number> = { not_found: 404, conflict: 409, unavailable: 503, invalid: 400 };

function reply(status: number, body: unknown): Response {
  return Response.json(body, { status });
}

async function body<S extends v.GenericSchema>(req: Request, schema: S): Promise<v.InferOutput<S> | Response> {
  let raw: unknown;
  try {
    raw = await req.json();
  } catch {
    return reply(400, { error: "request body is not JSON" });
  }
  const r = v.safeParse(schema, raw);
  return r.success ? r.output : reply(400, { error: r.issues.map((i) => i.message).join("; ") });
}

export function serveControl(dir: string, daemon: ClientDaemon): { stop(): void; path: string } {
  mkdirSync(dir, { recursive: true });
  const path = controlSocket(dir);
  try {
    require("node:fs").unlinkSync(path);
  } catch {}
  const server = Bun.serve({
    unix: path,
    async fetch(req) {
      const url = new URL(req.url);
      try {
        if (req.method === "GET" && url.pathname === "/v1/attachments") return reply(200, daemon.list());
        if (req.method === "POST" && url.pathname === "/v1/attach") {
          const b = await body(req, AttachBody);
          return b instanceof Response ? b : reply(200, await daemon.attach(b));
        }
        if (req.method === "POST" && url.pathname === "/v1/detach") {
          const b = await body(req, DetachBody);
          if (b instanceof Response) return b;
          await daemon.detach(b.volume);
          return reply(200, { detached: b.volume });
        }
        return reply(404, { error: `no such endpoint ${req.method} ${url.pathname}` });
      } catch (e) {
        if (e instanceof AttachError) return reply(STATUS[e.code], { error: e.message });
        return reply(500, { error: e instanceof Error ? e.message : String(e) });
      }
    },
  });
  return { stop: () => server.stop(true), path };
}

export async function control<T>(dir: string, method: "GET" | "POST", path: string, payload?: unknown): Promise<T> {
  let res: Response;
  try {
    res = await fetch(`http://localhost${path}`, {
      method,
      unix: controlSocket(dir),
      headers: payload ? { "content-type": "application/json" } : undefined,
      body: payload ? JSON.stringify(payload) : undefined,
    });
  } catch {
    throw new Error(`no client daemon at ${controlSocket(dir)}: start one with 'nvmesh client serve'`);
  }
  const json = (await res.json().catch(() => ({}))) as T & { error?: string };
  if (!res.ok) throw new Error(json.error ?? `client daemon answered ${res.status}`);
  return json;
}

export type { Attachment };
