/**
 * The management API on HTTP with Bun.serve: the only place in src/toma that opens a socket.
 * All logic is in ../api.ts; this only parses JSON and turns {status, body} into a Response.
 */
import type { ApiHandler } from "../api.ts";

export interface TomaHttpServer {
  /** "http://HOST:PORT", with the real port when 0 was asked. */
  readonly url: string;
  readonly port: number;
  stop(): Promise<void>;
}

const MAX_BODY_BYTES = 64 * 1024;

export function serveTomaApi(handler: ApiHandler, opts: { hostname?: string; port?: number } = {}): TomaHttpServer {
  const hostname = opts.hostname ?? "127.0.0.1";
  const server = Bun.serve({
    hostname,
    port: opts.port ?? 0,
    maxRequestBodySize: MAX_BODY_BYTES,
    async fetch(req) {
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
        const r = await handler(req.method, url.pathname, body);
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
