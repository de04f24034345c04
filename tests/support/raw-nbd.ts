/**
 * An NBD client made of raw bytes on a RawSocket, for tests that act as an attacker or as a
 * client that pipelines without limit: the fixed-newstyle handshake by hand, then requests
 * encoded one by one and simple replies counted as they arrive.
 */
import {
  NBD_CMD_WRITE,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_OPT_GO,
  NBD_OPTS_MAGIC,
  NBD_REP_ACK,
  NBD_SIMPLE_REPLY_MAGIC,
  SIMPLE_REPLY_BYTES,
} from "../../src/engine/nbd/constants.ts";
import { encodeRequest } from "../../src/engine/nbd/request.ts";
import { type RawAddress, RawSocket } from "./raw-socket.ts";

/** Connects, reads the greeting and completes NBD_OPT_GO for `name`. Returns the socket and the export size. */
export async function nbdGo(addr: RawAddress, name: string): Promise<{ sock: RawSocket; size: number }> {
  const sock = await RawSocket.connect(addr);
  await sock.read(18);
  const flags = new Uint8Array(4);
  new DataView(flags.buffer).setUint32(0, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
  await sock.write(flags);
  const n = new TextEncoder().encode(name);
  const opt = new Uint8Array(16 + 4 + n.length + 2);
  const v = new DataView(opt.buffer);
  v.setBigUint64(0, NBD_OPTS_MAGIC);
  v.setUint32(8, NBD_OPT_GO);
  v.setUint32(12, 4 + n.length + 2);
  v.setUint32(16, n.length);
  opt.set(n, 20);
  v.setUint16(20 + n.length, 0);
  await sock.write(opt);
  let size = -1;
  for (;;) {
    const h = new DataView((await sock.read(20)).buffer);
    const type = h.getUint32(12);
    const data = await sock.read(h.getUint32(16));
    if (type === NBD_REP_ACK) break;
    if (type >= 0x80000000) throw new Error(`NBD_OPT_GO refused: reply type 0x${type.toString(16)}`);
    const d = new DataView(data.buffer, data.byteOffset);
    if (d.getUint16(0) === 0) size = Number(d.getBigUint64(2));
  }
  return { sock, size };
}

export function writeRequest(cookie: number, offset: number, payload: Uint8Array): Uint8Array {
  return encodeRequest({ flags: 0, type: NBD_CMD_WRITE, cookie_hi: 0, cookie_lo: cookie, offset, length: payload.length }, payload);
}

/**
 * Counts simple replies (no payload: answers to WRITE, FLUSH, TRIM...) as they arrive on `sock`:
 * how many, how many carried an error, and each cookie seen once.
 */
export function countReplies(sock: RawSocket): { readonly ok: number; readonly errors: number; readonly total: number; bad: string | null } {
  const partial = new Uint8Array(SIMPLE_REPLY_BYTES);
  let have = 0;
  const state = { ok: 0, errors: 0, total: 0, bad: null as string | null };
  sock.onData = (chunk) => {
    let at = 0;
    while (at < chunk.length) {
      const take = Math.min(SIMPLE_REPLY_BYTES - have, chunk.length - at);
      partial.set(chunk.subarray(at, at + take), have);
      have += take;
      at += take;
      if (have < SIMPLE_REPLY_BYTES) break;
      have = 0;
      const v = new DataView(partial.buffer);
      if (v.getUint32(0) !== NBD_SIMPLE_REPLY_MAGIC) state.bad ??= `bad reply magic after ${state.total} replies`;
      if (v.getUint32(4) === 0) state.ok++;
      else state.errors++;
      state.total++;
    }
  };
  return state;
}
