/**
 * The management API on HTTP with Bun.serve: the only place in src/toma that opens a socket.
 * All logic is in ../api.ts and ../api-auth.ts (nonces, signatures); this only carries the
 * request's method, path with its query, exact body text and Authorization header in, and
 * {status, body} out.
 */
import type { Transport } from "../api-auth.ts";

export interface TomaHttpServer {
  /** "http://HOST:PORT", with the real port when 0 was asked. */
  readonly url: string;
  readonly port: number;
  stop(): Promise<void>;
}

const MAX_BODY_BYTES = 64 * 1024;

export function serveTomaApi(api: Transport, opts: { hostname?: string; port?: number } = {}): TomaHttpServer {
  const hostname = opts.hostname ?? "127.0.0.1";
  const server = Bun.serve({
    hostname,
    port: opts.port ?? 0,
    maxRequestBodySize: MAX_BODY_BYTES,
    async fetch(req) {
      const url = new URL(req.url);
      try {
        // The query is part of what is signed and what the handler routes on (a watch's known
        // generations); the body is signed as the exact text sent.
        const r = await api({
          method: req.method,
          path: url.pathname + url.search,
          body: await req.text(),
          authorization: req.headers.get("authorization"),
        });
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
