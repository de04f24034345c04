/**
 * The client daemon's local control channel: HTTP + JSON on a unix socket in the run directory,
 * used by `client attach|detach|show`. Local only: whoever can reach the socket is root on this host.
 */
import { mkdirSync } from "node:fs";
import * as v from "valibot";
import { AttachError, type Attachment as DaemonAttachment, type ClientDaemon, VOLUME_NAME } from "../engine/client/daemon.ts";
import { type KernelNbdBindings, KernelNbdError, loadNbdDriver, NBD_DEVICE } from "./kernel-nbd.ts";
import { TomaApiError } from "../toma/api-client.ts";

/** An attached volume as `client attach|show` report it: with its /dev/nbdN, if bound. */
export type Attachment = DaemonAttachment & { nbd_device: string | null };

export const DEFAULT_RUN_DIR = "/run/nvmesh";

export function runDir(flag: string | undefined): string {
  return flag ?? process.env.NVMESH_RUN_DIR ?? DEFAULT_RUN_DIR;
}

export const controlSocket = (dir: string) => `${dir}/client.sock`;

const AttachBody = v.object({
  volume: v.pipe(v.string(), v.regex(VOLUME_NAME, "invalid volume name")),
  nbd_tcp: v.optional(v.pipe(v.string(), v.regex(/^[^\s]+:\d{1,5}$/, "nbd_tcp must be HOST:PORT"))),
  nbd_device: v.optional(v.pipe(v.string(), v.regex(NBD_DEVICE, "nbd_device must be /dev/nbdN"))),
});
const DetachBody = v.object({
  volume: v.pipe(v.string(), v.regex(VOLUME_NAME, "invalid volume name")),
  nbd_device: v.optional(v.pipe(v.string(), v.regex(NBD_DEVICE, "nbd_device must be /dev/nbdN"))),
});

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

export function serveControl(dir: string, daemon: ClientDaemon, kernel: KernelNbdBindings): { stop(): void; path: string } {
  mkdirSync(dir, { recursive: true });
  const path = controlSocket(dir);
  try {
    require("node:fs").unlinkSync(path);
  } catch {}
  const shown = (a: DaemonAttachment): Attachment => ({ ...a, nbd_device: kernel.deviceOf(a.volume) ?? null });

  async function attach(b: v.InferOutput<typeof AttachBody>): Promise<Attachment> {
    const current = daemon.list().find((a) => a.volume === b.volume);
    if (current !== undefined && b.nbd_tcp !== undefined && !exportedAt(current.uri, b.nbd_tcp)) {
      throw new AttachError(`volume ${b.volume} is attached already, exported at ${current.uri}: detach it first to export it on ${b.nbd_tcp}`, "conflict");
    }
    const device = b.nbd_device;
    if (device === undefined || kernel.deviceOf(b.volume) === device) return shown(await daemon.attach(b));
    if (b.nbd_tcp !== undefined) throw new AttachError("a kernel /dev/nbdN uses the unix socket export: drop nbd_tcp", "invalid");
    // Everything that can be checked is, before the volume is attached.
    kernel.claim(b.volume, device, await loadNbdDriver());
    const was_attached = daemon.list().some((a) => a.volume === b.volume);
    let a: DaemonAttachment;
    try {
      a = await daemon.attach(b);
    } catch (e) {
      kernel.release(device);
      throw e;
    }
    try {
      await kernel.bind(b.volume, device, socketOfUri(a.uri));
    } catch (e) {
      kernel.release(device);
      // Attached for this device only: a failed bind leaves nothing behind.
      if (!was_attached) await daemon.detach(b.volume).catch(() => {});
      throw e;
    }
    return shown(a);
  }

  async function detach(b: v.InferOutput<typeof DetachBody>): Promise<void> {
    const device = kernel.deviceOf(b.volume);
    if (b.nbd_device !== undefined && b.nbd_device !== device) {
      throw new AttachError(device ? `volume ${b.volume} is bound to ${device}, not ${b.nbd_device}` : `volume ${b.volume} is not bound to ${b.nbd_device}`, "invalid");
    }
    if (!daemon.list().some((a) => a.volume === b.volume)) throw new AttachError(`volume ${b.volume} is not attached here ('nvmesh client show' lists what is)`, "not_found");
    await kernel.unbind(b.volume);
    await daemon.detach(b.volume);
  }

  const server = Bun.serve({
    unix: path,
    async fetch(req) {
      const url = new URL(req.url);
      try {
        if (req.method === "GET" && url.pathname === "/v1/attachments") return reply(200, daemon.list().map(shown));
        if (req.method === "POST" && url.pathname === "/v1/attach") {
          const b = await body(req, AttachBody);
          return b instanceof Response ? b : reply(200, await attach(b));
        }
        if (req.method === "POST" && url.pathname === "/v1/detach") {
          const b = await body(req, DetachBody);
          if (b instanceof Response) return b;
          await detach(b);
          return reply(200, { detached: b.volume });
        }
        return reply(404, { error: `no such endpoint ${req.method} ${url.pathname}` });
      } catch (e) {
        if (e instanceof AttachError || e instanceof KernelNbdError) return reply(STATUS[e.code], { error: e.message });
        if (e instanceof TomaApiError) return tomaFailure(e);
        return reply(500, { error: e instanceof Error ? e.message : String(e) });
      }
    },
  });
  return { stop: () => server.stop(true), path };
}

/**
 * The TOMA's answer to this daemon, relayed to `client attach`: said as the daemon's, since the
 * fix (its -m, its key file) is on the daemon's command line, not on attach's.
 */
function tomaFailure(e: TomaApiError): Response {
  if (e.kind !== undefined) return reply(502, { error: `this client daemon ${e.message}: restart 'nvmesh client serve' with -m naming a running TOMA` });
  if (e.status === 401) return reply(502, { error: `the TOMA refused this client daemon: ${e.message}` });
  return reply(e.status >= 400 && e.status < 600 ? e.status : 502, { error: e.message });
}

/** The socket path of an nbd+unix URI (a kernel /dev/nbdN is bound to the unix socket export). */
function socketOfUri(uri: string): string {
  const m = /^nbd\+unix:\/\/\/[^?]*\?socket=(.+)$/.exec(uri);
  if (!m) throw new AttachError(`a kernel /dev/nbdN needs the unix socket export; this volume is exported at ${uri}`, "conflict");
  return m[1]!;
}

/** Whether an nbd:// URI is the export on TCP `address` (port 0 asks for any port). */
function exportedAt(uri: string, address: string): boolean {
  const m = /^nbd:\/\/(.*):(\d+)\//.exec(uri);
  const [host, port] = [address.slice(0, address.lastIndexOf(":")), address.slice(address.lastIndexOf(":") + 1)];
  return m !== null && m[1] === host && (port === "0" || m[2] === port);
}

/** Why the control socket did not answer, and what to do. */
function noDaemon(dir: string, e: unknown): string {
  const path = controlSocket(dir);
  const code = (e as { code?: unknown }).code;
  const where = dir === DEFAULT_RUN_DIR ? "" : ` --run-dir ${dir}`;
  if (code === "EACCES") return `cannot reach the client daemon at ${path}: permission denied (run as root?)`;
  if (code === "ECONNREFUSED") return `no client daemon answers at ${path} (the socket of one that stopped): start one with 'nvmesh client serve${where}'`;
  return `no client daemon at ${path}: start one with 'nvmesh client serve${where}' (or give the --run-dir of the one running)`;
}

/** Whether a client daemon answers on the control socket of `dir` now. */
export async function daemonAnswers(dir: string): Promise<boolean> {
  try {
    await fetch("http://localhost/v1/attachments", { unix: controlSocket(dir), signal: AbortSignal.timeout(2000) });
    return true;
  } catch {
    return false;
  }
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
  } catch (e) {
    throw new Error(noDaemon(dir, e));
  }
  const json = (await res.json().catch(() => ({}))) as T & { error?: string };
  if (!res.ok) throw new Error(json.error ?? `client daemon answered ${res.status}`);
  return json;
}

