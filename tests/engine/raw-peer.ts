/**
 * A hand-rolled requester for tests that must send what a Session never would (flags on the
 * wrong opcode, ranges above the session's local limits, bodies that fail the schema): HELLO,
 * then frames whose responses are matched by request id.
 */
import type { Env } from "../../src/engine/env.ts";
import type { Conn } from "../../src/engine/net/conn.ts";
import { type ClusterKey, requesterProof } from "../../src/engine/wire/cluster-key.ts";
import { encodeBody, ErrorBody, TargetInfo, decodeBody, isInvalid } from "../../src/engine/wire/control.ts";
import { FrameDecoder, type Header, Op, Status, emptyHeader, encodeFrame } from "../../src/engine/wire/header.ts";

export interface RawAnswer {
  h: Header;
  body: Uint8Array;
  /** The ErrorBody's text of a non-OK answer, else "". */
  error: string;
}

export interface RawPeer {
  request(fields: Partial<Header>, payload?: Uint8Array): Promise<RawAnswer>;
  readonly closed: boolean;
  close(): void;
}

/**
 * HELLO as `role` and `name`. With `key`: the HELLO names its kind and carries a fresh nonce, and
 * AUTH proves it, built here frame by frame as an attacker holding that key would (the target's
 * own proof is not checked: an attacker does not care).
 */
export async function rawPeer(env: Env, address: string, role: "client" | "toma" | "admin", name = "raw", key: ClusterKey | null = null): Promise<RawPeer> {
  const conn: Conn = await env.net.connect(address);
  const waiting = new Map<number, (a: RawAnswer) => void>();
  let closed = false;
  const decoder = new FrameDecoder(
    (h, payload) => {
      const body = payload.slice();
      const err = h.status === Status.OK ? null : decodeBody(ErrorBody, body);
      const error = err === null || isInvalid(err) ? "" : err.error;
      waiting.get(h.request_id)?.({ h, body, error });
      waiting.delete(h.request_id);
    },
    (why) => {
      throw new Error(`raw peer got a malformed frame: ${why}`);
    },
  );
  conn.onData = (c) => decoder.push(c);
  conn.onClose = () => {
    closed = true;
  };
  let nextId = 1;
  const peer: RawPeer = {
    request(fields, payload) {
      const request_id = nextId++;
      const answer = new Promise<RawAnswer>((resolve) => waiting.set(request_id, resolve));
      conn.send(encodeFrame({ ...emptyHeader(), ...fields, request_id }, payload));
      return answer;
    },
    get closed() {
      return closed;
    },
    close() {
      conn.close();
    },
  };
  const nonce = new Uint8Array(16);
  env.random.fill(nonce);
  const hello = await peer.request({ opcode: Op.HELLO }, encodeBody(key === null ? { version: 1, role, name } : { version: 1, role, name, nonce, key: key.kind }));
  if (hello.h.status !== Status.OK) throw new Error(`HELLO answered ${Status[hello.h.status]}: ${hello.error}`);
  if (key === null) return peer;
  const info = decodeBody(TargetInfo, hello.body);
  if (isInvalid(info) || !info.auth) throw new Error("the target asked for no AUTH");
  const auth = await peer.request({ opcode: Op.AUTH }, encodeBody({ proof: requesterProof(key, info.auth.challenge, nonce, role, name) }));
  if (auth.h.status !== Status.OK) throw new Error(`AUTH answered ${Status[auth.h.status]}: ${auth.error}`);
  return peer;
}
