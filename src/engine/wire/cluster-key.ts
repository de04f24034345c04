/**
 * The cluster key: a 32-byte secret every daemon and admin of one cluster shares (a file written
 * by `nvmesh cluster genkey`). Nothing here reads files or draws random numbers: callers pass the
 * key and the nonces in, so the same code runs under the simulator.
 *
 * - Data path: a HELLO/AUTH challenge-response in both directions (docs/protocol.md,
 *   "Authentication"). The key never crosses the wire, and a recorded exchange cannot be
 *   replayed: each side's proof covers the other side's fresh nonce.
 * - Management API: a bearer token derived from the key. Over plain HTTP a listener on the
 *   network can replay it; confidentiality and replay protection there need TLS, not built.
 */
import { createHmac, timingSafeEqual } from "node:crypto";

export const CLUSTER_KEY_BYTES = 32;
export const NONCE_BYTES = 16;
export const PROOF_BYTES = 32;

/** A key file's text: 64 hex digits, surrounding whitespace allowed. Throws saying what is wrong. */
export function parseClusterKey(text: string): Uint8Array {
  const t = text.trim();
  if (!/^[0-9a-fA-F]{64}$/.test(t)) {
    throw new Error(`a cluster key is ${CLUSTER_KEY_BYTES * 2} hex digits (nvmesh cluster genkey writes one); found ${t.length} characters that are not`);
  }
  return Uint8Array.from(Buffer.from(t, "hex"));
}

export function formatClusterKey(key: Uint8Array): string {
  return `${Buffer.from(key).toString("hex")}\n`;
}

function mac(key: Uint8Array, label: string, parts: (Uint8Array | string)[]): Uint8Array {
  const h = createHmac("sha256", key);
  h.update(label);
  for (const p of parts) {
    // Length-prefixed, so that no two different lists of parts hash alike.
    const b = typeof p === "string" ? Buffer.from(p, "utf8") : p;
    const len = Buffer.alloc(4);
    len.writeUInt32LE(b.length);
    h.update(len);
    h.update(b);
  }
  return new Uint8Array(h.digest());
}

/** The target's proof that it holds the key: over the requester's nonce and its own challenge. */
export function targetProof(key: Uint8Array, nonce: Uint8Array, challenge: Uint8Array): Uint8Array {
  return mac(key, "nvmesh target proof v1", [nonce, challenge]);
}

/** The requester's proof, bound to the role and name it said HELLO with. */
export function requesterProof(key: Uint8Array, challenge: Uint8Array, nonce: Uint8Array, role: string, name: string): Uint8Array {
  return mac(key, "nvmesh requester proof v1", [challenge, nonce, role, name]);
}

/** The management API's bearer token. */
export function managementToken(key: Uint8Array): string {
  return Buffer.from(mac(key, "nvmesh management token v1", [])).toString("hex");
}

/** Constant-time comparison of two proofs or tokens. */
export function sameSecret(a: Uint8Array | string, b: Uint8Array | string): boolean {
  const x = typeof a === "string" ? Buffer.from(a, "utf8") : Buffer.from(a);
  const y = typeof b === "string" ? Buffer.from(b, "utf8") : Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}
