/**
 * The management API of a TOMA that runs as a member of a TOMA cluster (member.ts): the cluster
 * view with the consensus state, the targets, and the routes between TOMAs (identity, raft
 * messages). Volume, drive and client routes are refused with 503 and the reason: this mode does
 * not manage them yet. Sans-I/O like ../api.ts; behind the same signature check.
 */
import * as v from "valibot";
import type { Env } from "../../engine/env.ts";
import { serverKeys } from "../../engine/wire/cluster-key.ts";
import { type ApiHandler, type ApiResponse, type Caller, ManagementGuard, type Transport } from "../api-auth.ts";
import type { ClusterJson, TargetJson } from "../api-types.ts";
import { targetView } from "../toma.ts";
import type { ClusterMember } from "./member.ts";
import { MembershipError, type MembershipResult } from "./membership-ops.ts";

export const RAFT_PATH = "/v1/raft";
export const IDENTITY_PATH = "/v1/raft/identity";
/** POST {name, address}: add a server; DELETE /NAME: remove one. Leader only (421 elsewhere). */
export const SERVERS_PATH = "/v1/cluster/servers";

/** The body of POST /v1/cluster/servers. */
export const AddServerSchema = v.strictObject({
  name: v.pipe(v.string("name must be a string"), v.regex(/^[A-Za-z0-9._-]{1,64}$/, "name must be 1 to 64 of [A-Za-z0-9._-]")),
  address: v.pipe(
    v.string("address must be a string"),
    v.maxLength(256, "address is too long"),
    v.regex(/^(?:[^:\s[\]]+|\[[0-9a-fA-F:]+\]):(?:[1-9]\d{0,4})$/, "address must be HOST:PORT (the TOMA's management address)"),
    v.check((a) => Number(a.slice(a.lastIndexOf(":") + 1)) <= 65535, "address: port above 65535"),
  ),
});

export const NOT_MANAGED_YET =
  "this TOMA runs in the multi-TOMA mode (toma run --peers), which so far elects a leader, replicates the cluster-state log and changes membership only: " +
  "drives, volumes and clients are not managed in this mode yet (run one TOMA without --peers for that)";

const err = (status: number, error: string): ApiResponse => ({ status, body: { error } });

export function clusterMemberApi(env: Env, m: ClusterMember, server_key: Uint8Array | null): Transport {
  // No client daemon registers with this mode: no client secrets to look up.
  const guard = new ManagementGuard(env, server_key === null ? null : serverKeys(server_key), () => undefined);
  const handler = makeClusterMemberHandler(env, m);
  return (req) => guard.serve(req, handler);
}

/** Messages between TOMAs are signed with the server key; a client key must never move Raft. */
function serverOnly(c: Caller): ApiResponse | null {
  if (c.kind === "server" || c.kind === "insecure") return null;
  return err(403, "messages between TOMAs need the server key; this request was signed with a client's key");
}

export function makeClusterMemberHandler(env: Env, m: ClusterMember): ApiHandler {
  const cluster = (): ClusterJson => {
    const view = m.node.view();
    const up = m.links.filter((l) => l.up).length;
    const lead = view.leader ? `leader ${view.leader.address || view.leader.node_id}` : "no leader known";
    return {
      cluster_uuid: view.cluster_uuid,
      generation: view.applied,
      term: view.term,
      // No duty of a cluster member writes to targets yet: it stamps no control-plane version.
      version: 0,
      ready: false,
      readiness:
        view.phase === "running"
          ? `TOMA cluster member, ${view.role} in term ${view.term}, ${lead}; drives, volumes and clients are not managed in this mode yet`
          : `TOMA cluster member ${view.phase}: ${view.reason ?? ""}`,
      targets: { total: m.links.length, up, down: m.links.length - up },
      drives: { total: 0, ok: 0, missing: 0, foreign: 0, error: 0 },
      capacity: { total_bytes: 0, used_bytes: 0, free_bytes: 0 },
      volumes: 0,
      consensus: view,
    };
  };

  const answer = async (op: () => Promise<MembershipResult>): Promise<ApiResponse> => {
    try {
      return { status: 200, body: await op() };
    } catch (e) {
      if (!(e instanceof MembershipError)) throw e;
      return { status: e.status, body: e.leader === null ? { error: e.message } : { error: e.message, leader: e.leader } };
    }
  };

  // Membership changes move Raft: the server key only, like the messages between TOMAs.
  const servers = (mth: string, route: string, body: unknown, caller: Caller): Promise<ApiResponse> | ApiResponse => {
    const no = serverOnly(caller);
    if (no) return no;
    if (route === SERVERS_PATH) {
      if (mth !== "POST") return err(405, `${mth} not allowed on ${route}; use POST to add a server, DELETE ${SERVERS_PATH}/NAME to remove one`);
      const b = v.safeParse(AddServerSchema, body);
      if (!b.success) return err(400, `invalid body: ${b.issues.map((i) => i.message).join("; ")} (expected {name, address})`);
      return answer(() => m.membership.add(b.output.name, b.output.address));
    }
    if (mth !== "DELETE") return err(405, `${mth} not allowed on ${route}; use DELETE`);
    let name: string;
    try {
      name = decodeURIComponent(route.slice(SERVERS_PATH.length + 1));
    } catch {
      return err(400, "the server's name is not valid percent-encoding");
    }
    if (!/^[A-Za-z0-9._-]{1,64}$/.test(name)) return err(400, `invalid server name '${name.slice(0, 80)}': 1 to 64 of [A-Za-z0-9._-]`);
    return answer(() => m.membership.remove(name));
  };

  return async (method, path, body, caller) => {
    const route = path.split("?")[0]!;
    const mth = method.toUpperCase();
    if (route === "/v1/cluster") return mth === "GET" ? { status: 200, body: cluster() } : err(405, `${mth} not allowed on ${route}; use GET`);
    if (route === "/v1/targets") {
      if (mth !== "GET") return err(405, `${mth} not allowed on ${route}; use GET`);
      const now = env.clock.now_ms();
      return { status: 200, body: m.links.map((l) => targetView(l, now)) satisfies TargetJson[] };
    }
    if (route === IDENTITY_PATH) {
      if (mth !== "GET") return err(405, `${mth} not allowed on ${route}; use GET`);
      return serverOnly(caller) ?? { status: 200, body: m.node.identity() };
    }
    if (route === RAFT_PATH) {
      if (mth !== "POST") return err(405, `${mth} not allowed on ${route}; use POST`);
      const no = serverOnly(caller);
      if (no) return no;
      const b64 = (body as { envelope?: unknown } | null)?.envelope;
      if (typeof b64 !== "string" || !/^[A-Za-z0-9+/]*={0,2}$/.test(b64)) return err(400, "body must be {envelope: the CBOR envelope in base64}");
      const r = m.node.receive(Buffer.from(b64, "base64"));
      // Answered at once: answers to the messages travel as messages the other way.
      return r.ok ? { status: 204, body: null } : err(r.status, r.error);
    }
    if (route === SERVERS_PATH || route.startsWith(`${SERVERS_PATH}/`)) return servers(mth, route, body, caller);
    if (route.startsWith("/v1/")) return err(503, NOT_MANAGED_YET);
    return err(404, `no such route: ${method} ${path}`);
  };
}
