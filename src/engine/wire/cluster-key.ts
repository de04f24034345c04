/**
 * The cluster's keys. Nothing here reads files or draws random numbers: callers pass keys and
 * nonces in, so the same code runs under the simulator.
 *
 * Two keys, and what a peer may do follows from which one it proved (docs/security.md):
 * - the **server key** (32 bytes, `nvmesh cluster genkey`): targets, TOMAs and administrators.
 *   It gives everything: raw metadata, CLAIM, FENCE, lock recovery, unfenced I/O, volume
 *   creation and deletion.
 * - the **client key**, derived from the server key one way (HMAC), so that every server can
 *   check a client's proof without holding a second secret, while a client host that holds it
 *   cannot work back to the server key (`nvmesh cluster client-key`). A requester that proved
 *   the client key is a client: fenced on the data path, whatever role it names, and it cannot
 *   create, delete, evict or fence through the management API.
 *
 * On the data path, HELLO/AUTH is a challenge-response in both directions with the key the
 * requester names (connection.ts, capability.ts); the management API signs each request
 * (src/toma/api-auth.ts). Every MAC here is HMAC-SHA256 over a label and length-prefixed parts.
 */
import { createHash, createHmac, timingSafeEqual } from "node:crypto";

export const CLUSTER_KEY_BYTES = 32;
export const NONCE_BYTES = 16;
export const PROOF_BYTES = 32;

export type KeyKind = "server" | "client";

/** A key and which one it is: what it proves on the wire follows from `kind`. */
export interface ClusterKey {
  readonly kind: KeyKind;
  readonly key: Uint8Array;
}

/** A client key file starts with this; a server key file is the bare hex (as written since v1). */
const CLIENT_PREFIX = "client:";

/**
 * A key file's text: 64 hex digits (the server key), or "client:" and 64 hex digits (a client
 * key); surrounding whitespace allowed. Throws saying what is wrong.
 */
export function parseKeyFile(text: string): ClusterKey {
  const t = text.trim();
  const kind: KeyKind = t.startsWith(CLIENT_PREFIX) ? "client" : "server";
  const hex = kind === "client" ? t.slice(CLIENT_PREFIX.length) : t;
  if (!/^[0-9a-fA-F]{64}$/.test(hex)) {
    throw new Error(
      `a key file holds ${CLUSTER_KEY_BYTES * 2} hex digits (a server key, from nvmesh cluster genkey) or '${CLIENT_PREFIX}' and ` +
        `${CLUSTER_KEY_BYTES * 2} hex digits (a client key, from nvmesh cluster client-key); found ${t.length} characters that are neither`,
    );
  }
  return { kind, key: Uint8Array.from(Buffer.from(hex, "hex")) };
}

export function formatKeyFile(k: ClusterKey): string {
  if (k.key.length !== CLUSTER_KEY_BYTES) throw new Error(`a cluster key is ${CLUSTER_KEY_BYTES} bytes, not ${k.key.length}`);
  return `${k.kind === "client" ? CLIENT_PREFIX : ""}${Buffer.from(k.key).toString("hex")}\n`;
}

/** HMAC-SHA256 of a label and parts, each part length-prefixed so no two lists hash alike. */
export function keyedDigest(key: Uint8Array, label: string, parts: (Uint8Array | string)[]): Uint8Array<ArrayBuffer> {
  const h = createHmac("sha256", key);
  h.update(label);
  for (const p of parts) {
    const b = typeof p === "string" ? Buffer.from(p, "utf8") : p;
    const len = Buffer.alloc(4);
    len.writeUInt32LE(b.length);
    h.update(len);
    h.update(b);
  }
  return new Uint8Array(h.digest());
}

export function sha256(bytes: Uint8Array): Uint8Array<ArrayBuffer> {
  return new Uint8Array(createHash("sha256").update(bytes).digest());
}

/** The client key of a cluster: one-way from the server key. */
export function clientKeyOf(server: Uint8Array): Uint8Array<ArrayBuffer> {
  return keyedDigest(server, "nvmesh client key v1", []);
}

/** The key a client host uses: the client key, derived when given the server key. */
export function asClientKey(k: ClusterKey): ClusterKey {
  return k.kind === "client" ? k : { kind: "client", key: clientKeyOf(k.key) };
}

/** What a server (target or TOMA) holds: its server key and the client key derived from it. */
export interface ServerKeys {
  readonly server: ClusterKey;
  readonly client: ClusterKey;
}

export function serverKeys(server: Uint8Array): ServerKeys {
  if (server.length !== CLUSTER_KEY_BYTES) throw new Error(`a cluster key is ${CLUSTER_KEY_BYTES} bytes, not ${server.length}`);
  return { server: { kind: "server", key: server }, client: { kind: "client", key: clientKeyOf(server) } };
}

export function keyOfKind(keys: ServerKeys, kind: KeyKind): ClusterKey {
  return kind === "server" ? keys.server : keys.client;
}

/**
 * The target's proof that it holds the key the requester named, over the requester's nonce and
 * its own challenge. To a client-key requester a target proves the client key: any client host
 * could make that proof too (docs/security.md says what follows from it).
 */
export function targetProof(k: ClusterKey, nonce: Uint8Array, challenge: Uint8Array): Uint8Array<ArrayBuffer> {
  return keyedDigest(k.key, "nvmesh target proof v2", [k.kind, nonce, challenge]);
}

/** The requester's proof, bound to the key kind, role and name it said HELLO with. */
export function requesterProof(k: ClusterKey, challenge: Uint8Array, nonce: Uint8Array, role: string, name: string): Uint8Array<ArrayBuffer> {
  return keyedDigest(k.key, "nvmesh requester proof v2", [k.kind, challenge, nonce, role, name]);
}

/** Constant-time comparison of two proofs or signatures. */
export function sameSecret(a: Uint8Array | string, b: Uint8Array | string): boolean {
  const x = typeof a === "string" ? Buffer.from(a, "utf8") : Buffer.from(a);
  const y = typeof b === "string" ? Buffer.from(b, "utf8") : Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}
