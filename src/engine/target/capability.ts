/**
 * What a requester may do on this target follows from the key it proved in AUTH, never from the
 * role its HELLO names (docs/security.md):
 *
 * | key proved | served as                  | may                                                     |
 * | ---------- | -------------------------- | ------------------------------------------------------- |
 * | server key | the role HELLO names       | toma: everything, unfenced; admin: metadata, no data     |
 * | client key | "client", whatever it said | fenced data-path requests and LIST_DRIVES, nothing else |
 *
 * A client host holds only the client key (derived one way from the server key), so one
 * compromised client host gets no raw drive access, no metadata, no CLAIM, FENCE or lock
 * recovery. Without any key (a target started --insecure) HELLO's role is taken on trust: that
 * mode is for labs only, and says so when it starts.
 */
import { type ServerKeys, keyOfKind, requesterProof, sameSecret, targetProof } from "../wire/cluster-key.ts";
import type { AuthChallenge, HelloRequest } from "../wire/control.ts";
import type { Role } from "./fence.ts";

/** A HELLO answered with a challenge, waiting for its AUTH. */
export interface PendingAuth {
  readonly hello: HelloRequest;
  readonly challenge: Uint8Array<ArrayBuffer>;
  /** The HELLO's nonce (16 zero bytes when it sent none: it then cannot check our proof). */
  readonly nonce: Uint8Array;
}

/** The HELLO answer's auth part: this target proves the key the requester named. */
export function challengeFor(keys: ServerKeys, p: PendingAuth): AuthChallenge {
  return { challenge: p.challenge, proof: targetProof(keyOfKind(keys, p.hello.key ?? "server"), p.nonce, p.challenge) };
}

export type Admission =
  /** `downgraded`: the role HELLO named, when the key proved does not give it. */
  | { role: Role; downgraded: Role | null }
  | { refused: string };

/**
 * Checks an AUTH proof against the key the HELLO named, and decides the role the connection is
 * served as: the named one with the server key, "client" with the client key.
 */
export function admission(keys: ServerKeys, p: PendingAuth, proof: Uint8Array | null): Admission {
  const k = keyOfKind(keys, p.hello.key ?? "server");
  if (proof === null || !sameSecret(proof, requesterProof(k, p.challenge, p.nonce, p.hello.role, p.hello.name))) {
    return { refused: `this target requires a cluster key, and the requester did not prove it holds the ${k.kind} key` };
  }
  if (k.kind === "server" || p.hello.role === "client") return { role: p.hello.role, downgraded: null };
  return { role: "client", downgraded: p.hello.role };
}
