/**
 * The management API over the simulated network. The real runtime puts the API (src/toma/api.ts,
 * behind the nonces and signatures of src/toma/api-auth.ts) on HTTP; the simulator carries the
 * same signed requests → (status, body) over a simulated connection, so a client that cannot
 * reach the TOMA's server, or reaches it through a lossy or one-way link, sees what a real one
 * would: a timeout or an error (and a TOMA that restarted between a nonce and its request, a 401
 * that the signer retries once).
 * Frames: u32 LE length, then JSON.
 */
import type { Env } from "../src/engine/env.ts";
import type { Conn } from "../src/engine/net/conn.ts";
import type { ApiResponse, ManagementSigner, RawRequest, Transport } from "../src/toma/api-auth.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();

function frame(value: unknown): Uint8Array {
  const body = enc.encode(JSON.stringify(value));
  const out = new Uint8Array(4 + body.length);
  new DataView(out.buffer).setUint32(0, body.length, true);
  out.set(body, 4);
  return out;
}

/** Calls `onFrame` with each whole JSON frame received on `conn`. */
function readFrames(conn: Conn, onFrame: (value: unknown) => void): void {
  let buf = new Uint8Array(0);
  conn.onData = (chunk) => {
    const next = new Uint8Array(buf.length + chunk.length);
    next.set(buf);
    next.set(chunk, buf.length);
    buf = next;
    while (buf.length >= 4) {
      const n = new DataView(buf.buffer, buf.byteOffset).getUint32(0, true);
      if (buf.length < 4 + n) break;
      onFrame(JSON.parse(dec.decode(buf.subarray(4, 4 + n))));
      buf = buf.slice(4 + n);
    }
  };
}

/**
 * Serves the management API on `address`: every frame is a RawRequest (method, path, exact body
 * text, Authorization), answered by the same code as over HTTP (src/toma/api.ts managementApi:
 * nonces, signatures, routes).
 */
export async function serveMgmt(env: Env, address: string, api: () => Transport | null): Promise<void> {
  await env.net.listen(address, (conn) => {
    readFrames(conn, (req) => {
      const a = api();
      const answer = a ? a(req as RawRequest) : Promise.resolve({ status: 503, body: { error: "TOMA starting" } });
      void answer.then(
        (res) => conn.send(frame(res)),
        (e) => conn.send(frame({ status: 500, body: { error: String(e) } })),
      );
    });
  });
}

/** A refusal from the API, with its HTTP status (and for 421, the leader's address). */
export class MgmtError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly leader?: string,
  ) {
    super(message);
  }
}

/** One RawRequest on a fresh connection, given up after timeout_ms of the caller's time. */
function exchange(env: Env, address: string, req: RawRequest, timeout_ms: number): Promise<ApiResponse> {
  return new Promise<ApiResponse>((resolve, reject) => {
    let conn: Conn | null = null;
    let done = false;
    const finish = (f: () => void) => {
      if (done) return;
      done = true;
      timer.cancel();
      conn?.close();
      f();
    };
    const timer = env.timers.after(timeout_ms, () =>
      finish(() => reject(new Error(`management ${address}: no answer in ${timeout_ms} ms`))),
    );
    env.net.connect(address).then(
      (c) => {
        conn = c;
        if (done) return c.close();
        readFrames(c, (res) => finish(() => resolve(res as ApiResponse)));
        c.onClose = (why) => finish(() => reject(new Error(`management ${address}: ${why}`)));
        c.send(frame(req));
      },
      (e) => finish(() => reject(e as Error)),
    );
  });
}

/**
 * One call, signed by `signer` (which first fetches a nonce: a second exchange), each exchange
 * given up after timeout_ms of the caller's time.
 */
export async function callMgmt<T>(
  env: Env,
  address: string,
  signer: ManagementSigner,
  method: string,
  path: string,
  timeout_ms: number,
  body?: unknown,
): Promise<T> {
  let res: ApiResponse;
  try {
    res = await signer.call((req) => exchange(env, address, req, timeout_ms), method, path, body);
  } catch (e) {
    // Nothing answered (refused, reset, timed out): status 0, as the HTTP client says it.
    throw new MgmtError(0, (e as Error).message);
  }
  if (res.status >= 200 && res.status < 300) return res.body as T;
  const b = res.body as { error?: string; leader?: unknown } | null;
  throw new MgmtError(res.status, `management ${address}: ${res.status} ${b?.error ?? ""}`, typeof b?.leader === "string" ? b.leader : undefined);
}
