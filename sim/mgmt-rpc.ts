/**
 * The management API over the simulated network. The real runtime puts the API handler
 * (src/toma/api.ts) on HTTP; the simulator carries the same (method, path, body) → (status, body)
 * calls over a simulated connection, so a client that cannot reach the TOMA's server, or reaches
 * it through a lossy or one-way link, sees what a real one would: a timeout or an error.
 * Frames: u32 LE length, then JSON.
 */
import type { Env } from "../src/engine/env.ts";
import type { Conn } from "../src/engine/net/conn.ts";
import type { ApiHandler } from "../src/toma/api.ts";

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

export async function serveMgmt(env: Env, address: string, handler: () => ApiHandler | null): Promise<void> {
  await env.net.listen(address, (conn) => {
    readFrames(conn, (req) => {
      const { method, path, body } = req as { method: string; path: string; body: unknown };
      const h = handler();
      const answer = h ? h(method, path, body) : Promise.resolve({ status: 503, body: { error: "TOMA starting" } });
      void answer.then(
        (res) => conn.send(frame(res)),
        (e) => conn.send(frame({ status: 500, body: { error: String(e) } })),
      );
    });
  });
}

/** A refusal from the API, with its HTTP status. */
export class MgmtError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

/** One call on a fresh connection, given up after timeout_ms of the caller's time. */
export function callMgmt<T>(env: Env, address: string, method: string, path: string, timeout_ms: number, body: unknown = null): Promise<T> {
  return new Promise<T>((resolve, reject) => {
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
        readFrames(c, (res) => {
          const { status, body } = res as { status: number; body: unknown };
          if (status >= 200 && status < 300) finish(() => resolve(body as T));
          else finish(() => reject(new MgmtError(status, `management ${address}: ${status} ${(body as { error?: string })?.error ?? ""}`)));
        });
        c.onClose = (why) => finish(() => reject(new Error(`management ${address}: ${why}`)));
        c.send(frame({ method, path, body }));
      },
      (e) => finish(() => reject(e as Error)),
    );
  });
}
