/**
 * The management API on HTTP: the only place in src/toma that opens a socket. All logic is in
 * ../api.ts and ../api-auth.ts (nonces, signatures); this only carries the request's method, path
 * with its query, exact body text and Authorization header in, and {status, body} out.
 *
 * Not Bun.serve: it gives no hook before a request is parsed, so nothing caps how many
 * connections a stranger holds, and its cut-off of one that never completes a request is fixed
 * (measured: 12 s, whatever idleTimeout says) and outside the daemon's timers. ../http-conn.ts
 * parses HTTP/1.1 itself on a plain socket, with a cap and a deadline of our own on connections
 * that have not authenticated yet (docs/protocol.md, "The management API"); a 401 from the
 * transport closes the connection.
 */
import type { Env } from "../../engine/env.ts";
import { realEnv } from "../../engine/runtime/real-env.ts";
import { NONCE_PATH, type Transport } from "../api-auth.ts";
import { DEFAULT_HTTP_LIMITS, type HttpLimits, HttpServer } from "../http-conn.ts";
import { jsonResponse } from "../http-wire.ts";

export interface TomaHttpServer {
  /** "http://HOST:PORT", with the real port when 0 was asked. */
  readonly url: string;
  readonly port: number;
  stop(): Promise<void>;
}

const utf8 = new TextDecoder();

export async function serveTomaApi(
  api: Transport,
  opts: { hostname?: string; port?: number; env?: Env; limits?: Partial<HttpLimits> } = {},
): Promise<TomaHttpServer> {
  const hostname = opts.hostname ?? "127.0.0.1";
  const env = opts.env ?? realEnv("toma-api");
  const server = new HttpServer(
    env,
    async (req) => {
      try {
        // The query is part of what is signed and what the handler routes on (a watch's known
        // generations); the body is signed as the exact text sent.
        const r = await api({ method: req.method, path: req.target, body: utf8.decode(req.body), authorization: req.headers.get("authorization") ?? null });
        // A nonce is handed to anyone: taking one does not authenticate the connection.
        return { ...jsonResponse(r.status, r.body), authenticates: req.target.split("?")[0] !== NONCE_PATH };
      } catch (e) {
        return jsonResponse(500, { error: `internal error: ${(e as Error).message}` });
      }
    },
    { ...DEFAULT_HTTP_LIMITS, ...opts.limits },
  );
  const host = hostname.includes(":") ? `[${hostname}]` : hostname;
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
