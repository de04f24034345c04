/**
 * Management requests that cannot be replayed (docs/protocol.md, "Management API requests").
 *
 * Every request is signed with a key over (signer, nonce, method, path with its query, SHA-256 of
 * the body), the nonce a single-use one this TOMA issued (GET /v1/nonce) moments before: a
 * request seen on the wire cannot be sent again (its nonce is spent), nor altered (its signature
 * covers every part the TOMA acts on), nor sent to another TOMA or to this one after a restart
 * (their nonces are not this one's). No wall clock is involved: nonces age on the TOMA's own
 * steady clock only.
 *
 * Who signed decides what the request may do (api.ts checks it route by route):
 * - the server key: an administrator (or a TOMA), everything;
 * - the client key: a client host; read-only routes and registering a client daemon;
 * - the secret this TOMA gave one client daemon when it registered (sealed in the answer with
 *   the key that signed the registration, so no listener learns it): that client's own routes
 *   (attach, watch, ack, report, leave), and no other client's.
 *
 * Sans-I/O: the HTTP glue (runtime/http-server.ts, api-client.ts) and the simulator's management
 * links (sim/mgmt-rpc.ts) carry a RawRequest each way and run this same code.
 */
import type { Env } from "../engine/env.ts";
import { withSteadyClock } from "../engine/steady-clock.ts";
import { type ClusterKey, type ServerKeys, keyOfKind, keyedDigest, sameSecret, sha256 } from "../engine/wire/cluster-key.ts";

/** A management request as the transport carries it: the body is the exact text that was signed. */
export interface RawRequest {
  method: string;
  /** Path and query string, as signed. */
  path: string;
  body: string;
  /** The Authorization header, or null. */
  authorization: string | null;
}

export interface ApiResponse {
  status: number;
  body: unknown;
}

/** Carries one RawRequest to a TOMA and its answer back (HTTP, or the simulator's links). */
export type Transport = (req: RawRequest) => Promise<ApiResponse>;

/** Seals the secret of client `id` for the one who signed its registration (see sealSecret). */
export type Sealer = (secret: Uint8Array, client_id: number) => string;

/** Who signed a request, as far as the TOMA could verify. */
export type Caller =
  /** The TOMA runs without a key (--insecure): anyone may do anything. */
  | { readonly kind: "insecure" }
  | { readonly kind: "server"; readonly seal: Sealer }
  | { readonly kind: "client"; readonly seal: Sealer }
  /** Signed with the secret of this registered client daemon. */
  | { readonly kind: "client-id"; readonly id: number };

export const INSECURE_CALLER: Caller = { kind: "insecure" };

export const NONCE_PATH = "/v1/nonce";
const SCHEME = "nvmesh-v1";
const NONCE_BYTES = 16;
/** Nonces issued and not yet used; beyond this the oldest are forgotten (their requests get 401). */
export const MAX_OUTSTANDING_NONCES = 16384;
/** A nonce unused for this long on the TOMA's own clock is forgotten. */
export const NONCE_TTL_MS = 30_000;

const hex = (b: Uint8Array) => Buffer.from(b).toString("hex");

/** The signature of one request (the signer label is "server", "client" or "client-id:N"). */
export function requestSignature(key: Uint8Array, signer: string, nonce: string, method: string, path: string, body: string): Uint8Array {
  return keyedDigest(key, "nvmesh management request v1", [signer, nonce, method.toUpperCase(), path, sha256(Buffer.from(body, "utf8"))]);
}

export function formatAuthorization(signer: string, nonce: string, signature: Uint8Array): string {
  return `${SCHEME} ${signer} ${nonce} ${hex(signature)}`;
}

export interface ParsedAuthorization {
  signer: string;
  /** The key kind, or the client id whose secret signed. */
  by: { kind: "server" | "client" } | { kind: "client-id"; id: number };
  nonce: string;
  signature: Uint8Array;
}

/** Parses an Authorization header; a string says why it is not one of ours. */
export function parseAuthorization(header: string): ParsedAuthorization | string {
  const m = /^nvmesh-v1 (server|client|client-id:(\d{1,16})) ([0-9a-f]{32}) ([0-9a-f]{64})$/.exec(header);
  if (!m) return `the Authorization header is not a '${SCHEME} SIGNER NONCE SIGNATURE' signature`;
  const id = m[2] === undefined ? null : Number(m[2]);
  if (id !== null && !Number.isSafeInteger(id)) return `client id ${m[2]} is out of range`;
  return {
    signer: m[1]!,
    by: id === null ? { kind: m[1] as "server" | "client" } : { kind: "client-id", id },
    nonce: m[3]!,
    signature: Uint8Array.from(Buffer.from(m[4]!, "hex")),
  };
}

/**
 * The pad that seals (and unseals: XOR) a client's secret in the answer to its registration:
 * derived from the key that signed the registration and that request's nonce, which is used
 * once, so no pad is ever used twice.
 */
export function sealSecret(key: Uint8Array, nonce: string, client_id: number, secret: Uint8Array): Uint8Array {
  const pad = keyedDigest(key, "nvmesh client secret v1", [nonce, String(client_id)]);
  if (secret.length !== pad.length) throw new Error(`a client secret is ${pad.length} bytes, not ${secret.length}`);
  return secret.map((b, i) => b ^ pad[i]!);
}

/**
 * The secret of client daemon `client_id` in a TOMA cluster: derived from the server key and the
 * id, so that every TOMA holding the key can check that client's signature (whichever TOMA it is
 * homed on, whichever leads) and none has to store or replicate it. Only the TOMAs (and the
 * administrators) hold the server key; a client host learns its own secret, sealed, when it
 * registers, and cannot derive another's (HMAC). The single TOMA keeps random secrets in memory.
 */
export function clientSecret(server_key: Uint8Array, client_id: number): Uint8Array {
  return keyedDigest(server_key, "nvmesh client secret by id v1", [String(client_id)]);
}

/**
 * The nonces this TOMA issued and that are still unused: each is accepted once, within
 * NONCE_TTL_MS of its issue on this TOMA's own steady clock, and only while among the
 * MAX_OUTSTANDING_NONCES most recent. A restarted TOMA knows none of its predecessor's.
 */
export class NonceBook {
  /** Nonce → when it was issued; insertion order is issue order. */
  private readonly issued = new Map<string, number>();
  private readonly env: Env;

  constructor(env: Env) {
    this.env = withSteadyClock(env);
  }

  issue(): string {
    const b = new Uint8Array(NONCE_BYTES);
    this.env.random.fill(b);
    const n = hex(b);
    const now = this.env.clock.now_ms();
    for (const [old, at] of this.issued) {
      if (this.issued.size < MAX_OUTSTANDING_NONCES && now - at <= NONCE_TTL_MS) break;
      this.issued.delete(old);
    }
    this.issued.set(n, now);
    return n;
  }

  /** Spends a nonce: true once for each nonce issued here recently, false ever after. */
  consume(nonce: string): boolean {
    const at = this.issued.get(nonce);
    if (at === undefined) return false;
    this.issued.delete(nonce);
    return this.env.clock.now_ms() - at <= NONCE_TTL_MS;
  }

  get outstanding(): number {
    return this.issued.size;
  }
}

/** The API's routes, called once the request's signer is known (api.ts). */
export type ApiHandler = (method: string, path: string, body: unknown, caller: Caller) => Promise<ApiResponse>;

const denied = (status: number, error: string, code?: string): ApiResponse => ({ status, body: code ? { error, code } : { error } });

/**
 * The TOMA's side: hands out nonces, checks each request's signature and nonce, and calls the
 * routes with who signed. A refused request changes nothing.
 */
export class ManagementGuard {
  private readonly nonces: NonceBook;
  private readonly log: Env["log"];

  constructor(
    env: Env,
    /** The server key and the client key derived from it; null: --insecure, nothing is checked. */
    private readonly keys: ServerKeys | null,
    /** The secret of a registered, live client daemon. */
    private readonly secretOf: (client_id: number) => Uint8Array | undefined,
    /**
     * A TOMA that does not serve client daemons (a follower of a TOMA cluster): its answer to a
     * request signed by a client id, or null when it serves them (an unknown id is then gone).
     */
    private readonly clientsElsewhere: () => ApiResponse | null = () => null,
  ) {
    this.nonces = new NonceBook(env);
    this.log = env.log;
  }

  async serve(req: RawRequest, handler: ApiHandler): Promise<ApiResponse> {
    const method = req.method.toUpperCase();
    if (req.path.split("?")[0] === NONCE_PATH) {
      if (method !== "GET") return denied(405, `${method} not allowed on ${NONCE_PATH}; use GET`);
      return { status: 200, body: { nonce: this.nonces.issue() } };
    }
    const caller = this.keys === null ? INSECURE_CALLER : this.authenticate(this.keys, req);
    if ("status" in caller) {
      if (caller.status === 401) this.log.warn("management request refused", { method, path: req.path, reason: (caller.body as { error: string }).error });
      return caller;
    }
    let body: unknown = undefined;
    if (req.body.length > 0) {
      try {
        body = JSON.parse(req.body);
      } catch {
        return denied(400, "request body is not valid JSON");
      }
    }
    return await handler(method, req.path, body, caller);
  }

  private authenticate(keys: ServerKeys, req: RawRequest): Caller | ApiResponse {
    const need = "this TOMA requires the cluster key";
    if (req.authorization === null) return denied(401, `${need}: the request carried no signature (--key-file FILE or NVMESH_KEY_FILE)`);
    const a = parseAuthorization(req.authorization);
    if (typeof a === "string") return denied(401, `${need}: ${a}`);
    let key: ClusterKey | null = null;
    if (a.by.kind === "client-id") {
      const secret = this.secretOf(a.by.id);
      // Not known here because client daemons are served elsewhere (421 naming the leader, or
      // 503 while none is known): the daemon keeps its registration and goes there. A 410 would
      // make it register again at the leader, which still holds the first registration (its
      // locks, its acknowledgement) until that one expires.
      const away = secret === undefined ? this.clientsElsewhere() : null;
      if (away !== null) return away;
      // The daemon's cue to register again (as the routes answer an unknown id), not a refusal.
      if (secret === undefined) return denied(410, `client ${a.by.id} is not registered (expired or TOMA restarted): register again`);
      key = { kind: "client", key: secret };
    } else {
      key = keyOfKind(keys, a.by.kind);
    }
    if (!sameSecret(a.signature, requestSignature(key.key, a.signer, a.nonce, req.method, req.path, req.body))) {
      return denied(401, `${need}: the request's signature is not this cluster's (another cluster's key, or a request altered on the way)`);
    }
    // Checked after the signature, so that nobody but the signer can spend its nonce.
    if (!this.nonces.consume(a.nonce)) {
      return denied(401, "the request's nonce was not issued by this TOMA, was used already, or is too old: a request is accepted once (replayed?)", "nonce");
    }
    if (a.by.kind === "client-id") return { kind: "client-id", id: a.by.id };
    const k = key;
    const seal: Sealer = (secret, id) => hex(sealSecret(k.key, a.nonce, id, secret));
    return a.by.kind === "server" ? { kind: "server", seal } : { kind: "client", seal };
  }
}

/**
 * The requester's side: fetches a nonce, signs, sends; learns the secret the TOMA gives a client
 * daemon when it registers, and signs that client's own routes with it. Without a key it signs
 * nothing (a TOMA started --insecure).
 */
export class ManagementSigner {
  /** Client id → the secret the TOMA sealed for it (a few: a daemon registers again after 410). */
  private readonly secrets = new Map<number, Uint8Array>();

  constructor(readonly key: ClusterKey | null) {}

  async call(send: Transport, method: string, path: string, body?: unknown): Promise<ApiResponse> {
    const text = body === undefined ? "" : JSON.stringify(body);
    const key = this.key;
    if (key === null) return await send({ method, path, body: text, authorization: null });
    for (let attempt = 1; ; attempt++) {
      const n = await send({ method: "GET", path: NONCE_PATH, body: "", authorization: null });
      const nonce = (n.body as { nonce?: unknown } | null)?.nonce;
      if (n.status !== 200 || typeof nonce !== "string") return n;
      const s = this.signerFor(path);
      const authorization = formatAuthorization(s.signer, nonce, requestSignature(s.key, s.signer, nonce, method, path, text));
      const res = await send({ method, path, body: text, authorization });
      // The nonce was forgotten between issue and use (a TOMA restart, a flood of nonce
      // requests): once more with a fresh one.
      if (res.status === 401 && (res.body as { code?: unknown } | null)?.code === "nonce" && attempt < 2) continue;
      this.learn(method, path, key, nonce, res);
      return res;
    }
  }

  private signerFor(path: string): { signer: string; key: Uint8Array } {
    const id = /^\/v1\/clients\/(\d+)(?:[/?]|$)/.exec(path)?.[1];
    const secret = id === undefined ? undefined : this.secrets.get(Number(id));
    if (secret !== undefined) return { signer: `client-id:${id}`, key: secret };
    return { signer: this.key!.kind, key: this.key!.key };
  }

  private learn(method: string, path: string, key: ClusterKey, nonce: string, res: ApiResponse): void {
    if (method.toUpperCase() !== "POST" || path !== "/v1/clients" || res.status !== 201) return;
    const b = res.body as { client_id?: unknown; secret?: unknown } | null;
    if (typeof b?.client_id !== "number" || typeof b.secret !== "string" || !/^[0-9a-f]{64}$/.test(b.secret)) return;
    this.secrets.set(b.client_id, sealSecret(key.key, nonce, b.client_id, Uint8Array.from(Buffer.from(b.secret, "hex"))));
    for (const old of this.secrets.keys()) {
      if (this.secrets.size <= 8) break;
      this.secrets.delete(old);
    }
  }
}
