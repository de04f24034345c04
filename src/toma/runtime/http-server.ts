/**
 * The management API on HTTP: the only place in src/toma that opens a socket. All logic is in
 * ../api.ts; this only checks the cluster key, parses JSON and turns {status, body} into a
 * response.
 *
 * Not Bun.serve: it gives no hook before a request is parsed, so nothing caps how many
 * connections a stranger holds, and its cut-off of one that never completes a request is fixed
 * (measured: 12 s, whatever idleTimeout says) and outside the daemon's timers. ../http-conn.ts
 * parses HTTP/1.1 itself on a plain socket, with a cap and a deadline of our own on connections
 * that have not authenticated yet (docs/protocol.md, "The management API").
 */
import type { Env } from "../../engine/env.ts";
import { realEnv } from "../../engine/runtime/real-env.ts";
import { sameSecret } from "../../engine/wire/cluster-key.ts";
import type { ApiHandler } from "../api.ts";
import { DEFAULT_HTTP_LIMITS, type HttpLimits, HttpServer } from "../http-conn.ts";
import { type HttpRequest, type HttpResponse, jsonResponse } from "../http-wire.ts";

export interface TomaHttpServer {
  /** "http://HOST:PORT", with the real port when 0 was asked. */
  readonly url: string;
  readonly port: number;
  stop(): Promise<void>;
}

/**
 * `token`: the cluster key's management token (cluster-key.ts); every request must carry it as
 * "Authorization: Bearer TOKEN", else 401 and nothing is done. Null: no key, anyone may.
 */
export async function serveTomaApi(
  handler: ApiHandler,
  opts: { hostname?: string; port?: number; token?: string | null; env?: Env; limits?: Partial<HttpLimits> } = {},
): Promise<TomaHttpServer> {
  const hostname = opts.hostname ?? "127.0.0.1";
  const token = opts.token ?? null;
  const env = opts.env ?? realEnv("toma-api");

  async function fetch(req: Request): Promise<Response> {
    if (token !== null) {
      const given = /^Bearer ([0-9a-f]+)$/.exec(req.headers.get("authorization") ?? "")?.[1];
      if (given === undefined || !sameSecret(given, token)) {
        const why = given === undefined ? "the request carried no cluster key" : "the request's cluster key is not this cluster's";
        return Response.json({ error: `this TOMA requires the cluster key: ${why} (--key-file FILE or NVMESH_KEY_FILE)` }, { status: 401 });
      }
    }
    const url = new URL(req.url);
    let body: unknown = undefined;
    if (req.method === "POST" || req.method === "PUT") {
      const text = await req.text();
      if (text.length > 0) {
        try {
          body = JSON.parse(text);
        } catch {
          return Response.json({ error: "request body is not valid JSON" }, { status: 400 });
        }
      }
    }
    try {
      // The query is part of what the handler routes on (a watch's known generations).
      const r = await handler(req.method, url.pathname + url.search, body);
      return Response.json(r.body, { status: r.status });
    } catch (e) {
      return Response.json({ error: `internal error: ${(e as Error).message}` }, { status: 500 });
    }
  }

  const host = hostname.includes(":") ? `[${hostname}]` : hostname;
  const server = new HttpServer(env, (req) => answer(fetch, req, host), { ...DEFAULT_HTTP_LIMITS, ...opts.limits });
  const listener = await env.net.listen(`${host}:${opts.port ?? 0}`, (conn) => server.handle(conn));
  const port = Number(listener.address.slice(listener.address.lastIndexOf(":") + 1));
  return {
    url: `http://${host}:${port}`,
    port,
    stop: async () => {
      listener.close();
      server.closeAll();
    },
  };
}

/** One parsed request through a fetch-style handler (WHATWG Request in, Response out). */
async function answer(fetch: (req: Request) => Promise<Response>, r: HttpRequest, host: string): Promise<HttpResponse> {
  const headers = new Headers();
  for (const [k, v] of r.headers) headers.set(k, v);
  const hasBody = r.method !== "GET" && r.method !== "HEAD";
  let req: Request;
  try {
    // Our own host, not the client's Host header: only the path and query are routed on.
    req = new Request(`http://${host}${r.target}`, { method: r.method, headers, body: hasBody ? r.body : null });
  } catch (e) {
    // A method the Request type refuses (CONNECT, TRACE) or a target it cannot parse.
    return jsonResponse(400, { error: `unsupported request: ${(e as Error).message}` });
  }
  const res = await fetch(req);
  const out: [string, string][] = [];
  res.headers.forEach((v, k) => out.push([k, v]));
  return { status: res.status, headers: out, body: new Uint8Array(await res.arrayBuffer()) };
}
