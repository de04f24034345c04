/**
 * A client daemon's routes on a TOMA that does not run the leader's control (a follower, or a
 * leader just elected), but for the watches and acknowledgements its home serves itself
 * (home-clients.ts): relayed to the leader at once, signed with the server key, so that a
 * daemon stays homed on the TOMA it reaches (its own server's) while the leader alone decides
 * (registrations and attachments through the log; failure reports at the leader's mirror
 * control). A client cut off from the leader, one way or both, still acknowledges, reports and
 * watches through its home, and its home's drive reports carry that it was heard
 * (client-hearing.ts).
 *
 * The relay checks what the leader cannot see any more once the request is re-signed: that only
 * the client itself (with its secret) or an administrator acts on a client's routes. A
 * registration's secret is derived here from the server key and the id the leader chose
 * (api-auth.ts clientSecret) and sealed for the signer of the daemon's own request. Sans-I/O.
 */
import type { Env } from "../../engine/env.ts";
import { sleep } from "../../engine/env.ts";
import { type ApiResponse, type Caller, clientSecret } from "../api-auth.ts";
import { signedWith } from "../client-routes.ts";
import type { TomaNode } from "./node.ts";

/** One management call to the leader at `address`, signed with the server key; rejects with `status` (0: unreachable). */
export type Relay = (address: string, method: string, path: string, body?: unknown) => Promise<unknown>;

/** How long a relayed registration waits for this TOMA to apply it (so the daemon's next call is checked here). */
const APPLY_WAIT_MS = 2000;

const err = (status: number, error: string, leader?: string): ApiResponse => ({ status, body: leader === undefined ? { error } : { error, leader } });

/**
 * What the leader can no longer see once a client route is re-signed with the server key: that
 * only the client itself (with its secret) or an administrator acts on a client's routes, and
 * that a registration takes the client key. Null: allowed.
 */
export function clientRouteRefusal(route: readonly string[], caller: Caller): ApiResponse | null {
  if (route.length === 0) {
    if (caller.kind === "client-id") return err(403, `register with the client key, not with ${signedWith(caller)}`);
  } else if (caller.kind === "client" || (caller.kind === "client-id" && caller.id !== Number(route[0]))) {
    return err(403, `only client ${route[0]} itself (with the secret it was given when it registered) or an administrator may do this; this request was signed with ${signedWith(caller)}`);
  }
  return null;
}

export async function relayClientRoute(
  env: Env,
  node: TomaNode,
  relay: Relay,
  server_key: Uint8Array | null,
  method: string,
  path: string,
  body: unknown,
  caller: Caller,
): Promise<ApiResponse> {
  const route = path.split("?")[0]!.split("/").slice(3);
  const no = clientRouteRefusal(route, caller);
  if (no) return no;
  const lead = node.leader();
  const view = node.view();
  if (view.role === "leader") return err(503, "this TOMA was just elected and does not serve client daemons yet; retry in a moment");
  if (lead === null || lead.address === "") return err(503, "this TOMA knows no leader to relay the client's request to; retry in a moment");
  let out: unknown;
  try {
    out = await relay(lead.address, method, path, body);
  } catch (e) {
    const { status, leader } = e as { status?: unknown; leader?: unknown };
    const why = (e as Error).message;
    // Unreachable: 503, and the daemon tries its next TOMA. Otherwise the leader's own answer.
    if (typeof status !== "number" || status === 0) return err(503, `the leader (${lead.address}) does not answer: ${why}`);
    return err(status, why, typeof leader === "string" ? leader : undefined);
  }
  if (route.length !== 0) return { status: 200, body: out };
  const r = out as { client_id?: unknown; generation?: unknown } | null;
  const id = r?.client_id;
  if (typeof id !== "number" || !Number.isSafeInteger(id) || id <= 0 || typeof r?.generation !== "number") {
    return err(502, "the leader answered a registration without a valid client id");
  }
  // Committed at the leader: applied here moments later. Waited for, so that the daemon's next
  // call, signed with its secret, is checked here rather than sent on to the leader (421).
  for (let waited = 0; waited < APPLY_WAIT_MS && !node.appliedState()?.clients.some((c) => c.id === id); waited += 20) await sleep(env, 20);
  const secret = (caller.kind === "server" || caller.kind === "client") && server_key !== null ? { secret: caller.seal(clientSecret(server_key, id), id) } : {};
  return { status: 201, body: { client_id: id, generation: r.generation, ...secret } };
}
