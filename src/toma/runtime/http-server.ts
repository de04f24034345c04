/**
 * The management API on HTTP with Bun.serve: the only place in src/toma that opens a socket.
 * All logic is in ../api.ts; this only parses JSON and turns {status, body} into a Response.
 */
import { sameSecret } from "../../engine/wire/cluster-key.ts";
import type { ApiHandler } from "../api.ts";

export interface TomaHttpServer {
  /** "http://HOST:PORT", with the real port when 0 was asked. */
  readonly url: string;
  readonly port: number;
  stop(): Promise<void>;
}

const MAX_BODY_BYTES = 64 * 1024;

/**
 * `token`: the cluster key's management token (cluster-key.ts); every request must carry it as
 * "Authorization: Bearer TOKEN", else 401 and nothing is done. Null: no key, anyone may.
 */
export function serveTomaApi(handler: ApiHandler, opts: { hostname?: string; port?: number; token?: string | null } = {}): TomaHttpServer {
  const hostname = opts.hostname ?? "127.0.0.1";
  const token = opts.token ?? null;
  const server = Bun.serve({
    hostname,
    port: opts.port ?? 0,
    maxRequestBodySize: MAX_BODY_BYTES,
    async fetch(req) {
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
    },
  });
  const host = hostname.includes(":") ? `[${hostname}]` : hostname;
  return {
    url: `http://${host}:${server.port}`,
    port: server.port!,
    stop: () => server.stop(true),
  };
}
