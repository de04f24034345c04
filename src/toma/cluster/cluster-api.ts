/**
 * The management API of a TOMA that runs as a member of a TOMA cluster (member.ts): the cluster
 * view with the consensus state, the targets, and the routes between TOMAs (identity, raft
 * messages), the membership changes, the servers' drive reports, and the pool and volumes: reads
 * answered from the state applied here (any TOMA), volume creation and deletion on the leader (a
 * follower answers 421 naming it), and the client daemons' routes on any TOMA: the leader's mirror
 * control serves them (leader-control.ts); any other TOMA serves its own clients' watches and
 * acknowledgements (home-clients.ts, reported to the leader: switched.ts) and relays the rest
 * there (client-relay.ts).
 * Sans-I/O like ../api.ts; behind the same signature check.
 */
import { ExtentSet } from "../extent-set.ts";
import { TOMA_ID_RE } from "../consensus/hard-state-record.ts";
import * as v from "valibot";
import { type Env, sleep } from "../../engine/env.ts";
import { serverKeys } from "../../engine/wire/cluster-key.ts";
import { type ApiHandler, type ApiResponse, type Caller, clientSecret, ManagementGuard, type Transport } from "../api-auth.ts";
import { NIL_UUID } from "../../engine/uuid.ts";
import { adminOnly, volumeJsonOf } from "../api.ts";
import { volumeNamed, volumeNameOf } from "../volume-lookup.ts";
import type { AttachInfo } from "../../engine/layout/types.ts";
import { clientRoutes } from "../client-routes.ts";
import { relayClientRoute } from "./client-relay.ts";
import { receiveSwitched, SWITCHED_PATH, SwitchedReportSchema } from "./switched.ts";
import { steadyClock } from "../../engine/steady-clock.ts";
import { type ClusterJson, CreateVolumeBody, type DriveJson, type LegView, type TargetJson, type VolumeJson } from "../api-types.ts";
import { type ClusterState, retiredCounts, usedExtents, type VolumeRecord } from "../cluster-state.ts";
import { targetView, volumeStateOf } from "../toma.ts";
import { DriveReportSchema } from "./drive-pool.ts";
import { LeaderOpError, leaderOnly, notLeader } from "./leader-gate.ts";
import type { ClusterMember } from "./member.ts";

export const RAFT_PATH = "/v1/raft";
export const IDENTITY_PATH = "/v1/raft/identity";
/** POST {name, address}: add a server; DELETE /NAME: remove one. Leader only (421 elsewhere). */
export const SERVERS_PATH = "/v1/cluster/servers";
/** POST a server's drive report (drive-pool.ts) to the leader; answered with the pool. */
export const DRIVE_REPORT_PATH = "/v1/cluster/drives";

/** The body of POST /v1/cluster/servers. */
export const AddServerSchema = v.strictObject({
  name: v.pipe(v.string("name must be a string"), v.regex(TOMA_ID_RE, "name must be 1 to 64 of [A-Za-z0-9._-]")),
  address: v.pipe(
    v.string("address must be a string"),
    v.maxLength(256, "address is too long"),
    v.regex(/^(?:[^:\s[\]]+|\[[0-9a-fA-F:]+\]):(?:[1-9]\d{0,4})$/, "address must be HOST:PORT (the TOMA's management address)"),
    v.check((a) => Number(a.slice(a.lastIndexOf(":") + 1)) <= 65535, "address: port above 65535"),
  ),
});

const err = (status: number, error: string): ApiResponse => ({ status, body: { error } });

export function clusterMemberApi(env: Env, m: ClusterMember, server_key: Uint8Array | null): Transport {
  // Every TOMA checks the signature of a client daemon its applied state lists: the secret is
  // derived from the server key and the id (api-auth.ts clientSecret). One it does not list (not
  // registered, or this TOMA lags) is sent on to the leader (421), keeping its registration.
  const guard = new ManagementGuard(
    env,
    server_key === null ? null : serverKeys(server_key),
    (id) => (server_key !== null && m.node.appliedState()?.clients.some((c) => c.id === id) ? clientSecret(server_key, id) : undefined),
    () => clientsElsewhere(m),
  );
  const handler = makeClusterMemberHandler(env, m, server_key);
  return (req) => guard.serve(req, handler);
}

/**
 * Where a client daemon's signed request goes when this TOMA's control does not serve clients:
 * null while it does (an unknown id is gone: 410), 503 while it was just elected, else the
 * follower's refusal (421 naming the leader, 503 when none is known).
 */
function clientsElsewhere(m: ClusterMember): ApiResponse | null {
  if (m.control.active()) return null;
  if (m.node.view().role === "leader") return err(503, "this TOMA was just elected and does not serve client daemons yet; retry in a moment");
  const e = notLeader(m.node);
  return { status: e.status, body: e.leader === null ? { error: e.message } : { error: e.message, leader: e.leader } };
}

/** Messages between TOMAs are signed with the server key; a client key must never move Raft. */
function serverOnly(c: Caller): ApiResponse | null {
  if (c.kind === "server" || c.kind === "insecure") return null;
  return err(403, "messages between TOMAs need the server key; this request was signed with a client's key");
}

export function makeClusterMemberHandler(env: Env, m: ClusterMember, server_key: Uint8Array | null): ApiHandler {
  const steady = steadyClock(env.clock);
  // A client daemon's call during an election waits for its outcome (ELECTED_WAIT_MS).
  const untilLeaderKnown = async (): Promise<void> => {
    for (let waited = 0; waited < ELECTED_WAIT_MS; waited += ELECTED_POLL_MS) {
      if (m.control.active()) return;
      const lead = m.node.leader();
      if (m.node.view().role !== "leader" && lead !== null && lead.address !== "") return;
      await sleep(env, ELECTED_POLL_MS);
    }
  };
  const cluster = (): ClusterJson => {
    const view = m.node.view();
    const up = m.links.filter((l) => l.up).length;
    const lead = view.leader ? `leader ${view.leader.address || view.leader.node_id}` : "no leader known";
    const state = m.node.appliedState();
    const drives = driveViews(m, state);
    const members = drives.filter((d) => d.member);
    const size = (d: DriveJson, n: number) => n * (d.extent_size_bytes ?? 0);
    const total = members.reduce((n, d) => n + size(d, d.extents_total), 0);
    const used = members.reduce((n, d) => n + size(d, d.extents_used), 0);
    const count = (s: DriveJson["state"]) => drives.filter((d) => d.state === s).length;
    const report = m.reporter.last_error === null ? "" : `; this TOMA's drive report did not reach the leader: ${m.reporter.last_error}`;
    return {
      cluster_uuid: view.cluster_uuid,
      // The state's generation: the index of the last command applied here.
      generation: state?.generation ?? null,
      term: view.term,
      // The version the leader's control stamps on targets; 0 on a follower (it writes none).
      version: m.control.active()?.version() ?? 0,
      ready: view.phase === "running" && state !== null && view.leader !== null,
      readiness:
        view.phase === "running"
          ? `TOMA cluster member, ${view.role} in term ${view.term}, ${lead}${m.control.active() ? "; this TOMA runs the mirror control and serves the client daemons" : ""}${report}`
          : `TOMA cluster member ${view.phase}: ${view.reason ?? ""}`,
      targets: { total: m.links.length, up, down: m.links.length - up },
      drives: { total: drives.length, ok: count("ok"), missing: count("missing"), foreign: count("foreign"), error: count("error") },
      capacity: { total_bytes: total, used_bytes: used, free_bytes: total - used },
      volumes: state?.volumes.length ?? 0,
      consensus: view,
    };
  };

  const volumeJson = (vol: VolumeRecord): VolumeJson => {
    const ctl = m.control.active();
    if (ctl) return volumeJsonOf(vol, ctl.volumeState(vol), vol.mirrors > 1 ? ctl.legViews(vol) : []);
    const cluster_uuid = m.node.appliedState()?.cluster_uuid ?? null;
    const up = (d: string) => cluster_uuid !== null && m.pool.usable(d, cluster_uuid);
    const legs: LegView[] = vol.mirrors > 1 ? vol.columns.map((c, i) => ({ column: i, set: Math.floor(i / vol.mirrors), drive_uuid: c.drive_uuid, state: vol.legs[i]!, reachable: up(c.drive_uuid), rebuild: null })) : [];
    return volumeJsonOf(vol, volumeStateOf(vol, up), legs);
  };

  /** The applied state, or the 503 that says why there is none here yet. */
  const applied = (): ClusterState | ApiResponse => {
    const st = m.node.appliedState();
    if (st !== null) return st;
    const view = m.node.view();
    return err(503, `this TOMA has no cluster state applied yet (${view.phase}${view.reason ? `: ${view.reason}` : ""})`);
  };

  /** Resolves :name in the applied state; a response when bad, unknown, or no state yet. */
  const findVolume = (raw: string): VolumeRecord | ApiResponse =>
    volumeNamed(raw, () => {
      const st = applied();
      return "status" in st ? st : st.volumes;
    });

  /** A leader-only operation: its LeaderOpError becomes the answer (421 with the leader). */
  const onLeader = async (op: () => Promise<unknown>, status = 200): Promise<ApiResponse> => {
    try {
      return { status, body: await op() };
    } catch (e) {
      if (!(e instanceof LeaderOpError)) throw e;
      return { status: e.status, body: e.leader === null ? { error: e.message } : { error: e.message, leader: e.leader } };
    }
  };

  const volumes = async (mth: string, path: string, body: unknown, caller: Caller): Promise<ApiResponse> => {
    const route = path.split("?")[0]!;
    const parts = route.split("/").slice(3);
    if (parts.length === 0) {
      if (mth === "GET") {
        const st = applied();
        return "status" in st ? st : { status: 200, body: st.volumes.map(volumeJson) };
      }
      if (mth !== "POST") return err(405, `${mth} not allowed on ${route}; use GET or POST`);
      const no = adminOnly(caller, "creating a volume");
      if (no) return no;
      const r = v.safeParse(CreateVolumeBody, body);
      if (!r.success) return err(400, `invalid volume request: ${r.issues.map((i) => i.message).join("; ")}`);
      return onLeader(async () => volumeJson(await m.volumes.create(r.output)), 201);
    }
    if (parts.length === 2 && parts[1] === "attach") {
      if (mth !== "GET") return err(405, `${mth} not allowed on ${route}; use GET`);
      return onLeader(async () => {
        const ctl = m.control.activeOrRefuse();
        const vol = findVolume(parts[0]!);
        if ("status" in vol) throw new LeaderOpError(vol.status, (vol.body as { error: string }).error);
        return ctl.attachInfo(vol) satisfies AttachInfo;
      });
    }
    if (parts.length !== 1) return err(404, `no such route: ${mth} ${route}`);
    if (mth === "GET") {
      const vol = findVolume(parts[0]!);
      return "status" in vol ? vol : { status: 200, body: volumeJson(vol) };
    }
    if (mth !== "DELETE") return err(405, `${mth} not allowed on ${route}; use GET or DELETE`);
    const no = adminOnly(caller, "deleting a volume");
    if (no) return no;
    // Looked up on the leader (ControlTerm.deleteVolume), not in this TOMA's applied state, which may lag.
    const name = volumeNameOf(parts[0]!);
    if (typeof name !== "string") return name;
    const force = new URLSearchParams(path.split("?")[1] ?? "").get("force");
    if (force !== null && force !== "true" && force !== "false") return err(400, `force must be true or false, not '${force}'`);
    return onLeader(async () => {
      await m.control.activeOrRefuse().deleteVolume(name, force === "true");
      return { deleted: name };
    });
  };

  // Membership changes move Raft: the server key only, like the messages between TOMAs.
  const servers = (mth: string, route: string, body: unknown, caller: Caller): Promise<ApiResponse> | ApiResponse => {
    const no = serverOnly(caller);
    if (no) return no;
    if (route === SERVERS_PATH) {
      if (mth !== "POST") return err(405, `${mth} not allowed on ${route}; use POST to add a server, DELETE ${SERVERS_PATH}/NAME to remove one`);
      const b = v.safeParse(AddServerSchema, body);
      if (!b.success) return err(400, `invalid body: ${b.issues.map((i) => i.message).join("; ")} (expected {name, address})`);
      return onLeader(() => m.membership.add(b.output.name, b.output.address));
    }
    if (mth !== "DELETE") return err(405, `${mth} not allowed on ${route}; use DELETE`);
    let name: string;
    try {
      name = decodeURIComponent(route.slice(SERVERS_PATH.length + 1));
    } catch {
      return err(400, "the server's name is not valid percent-encoding");
    }
    if (!TOMA_ID_RE.test(name)) return err(400, `invalid server name '${name.slice(0, 80)}': 1 to 64 of [A-Za-z0-9._-]`);
    return onLeader(() => m.membership.remove(name));
  };

  return async (method, path, body, caller) => {
    const route = path.split("?")[0]!;
    const mth = method.toUpperCase();
    // Heard, whatever this TOMA answers: the leader learns it from the next drive report. Without
    // a key (--insecure) anyone may act for any client anyway: the route's id is taken as said.
    const own = /^\/v1\/clients\/(\d{1,16})(?:\/|$)/.exec(route)?.[1];
    if (caller.kind === "client-id") m.hearing.heard(caller.id);
    else if (caller.kind === "insecure" && own !== undefined && Number.isSafeInteger(Number(own))) m.hearing.heard(Number(own));
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
    if (route === DRIVE_REPORT_PATH) {
      if (mth !== "POST") return err(405, `${mth} not allowed on ${route}; use POST`);
      const no = serverOnly(caller);
      if (no) return no;
      const r = v.safeParse(DriveReportSchema, body);
      if (!r.success) return err(400, `invalid drive report: ${r.issues.map((i) => `${i.path?.map((p) => String(p.key)).join(".") ?? ""}: ${i.message}`).join("; ")}`);
      return onLeader(async () => {
        leaderOnly(m.node);
        return m.received(r.output);
      });
    }
    if (route === SWITCHED_PATH) {
      if (mth !== "POST") return err(405, `${mth} not allowed on ${route}; use POST`);
      const no = serverOnly(caller);
      if (no) return no;
      const r = v.safeParse(SwitchedReportSchema, body);
      if (!r.success) return err(400, `invalid switched report: ${r.issues.map((i) => `${i.path?.map((p) => String(p.key)).join(".") ?? ""}: ${i.message}`).join("; ")}`);
      const ctl = m.control.active();
      return ctl ? receiveSwitched(ctl, r.output, () => steady.now_ms()) : onLeader(async () => m.control.activeOrRefuse());
    }
    if (route === "/v1/drives") {
      if (mth !== "GET") return err(405, `${mth} not allowed on ${route}; use GET`);
      return { status: 200, body: driveViews(m, m.node.appliedState()) satisfies DriveJson[] };
    }
    if (route === "/v1/volumes" || route.startsWith("/v1/volumes/")) return volumes(mth, path, body, caller);
    if (route === "/v1/clients" || route.startsWith("/v1/clients/")) {
      let ctl = m.control.active();
      if (!ctl) {
        await untilLeaderKnown();
        ctl = m.control.active();
      }
      // Elsewhere than on the leader's control, relayed to the leader: the daemon stays homed here.
      if (!ctl) {
        if (!m.relay) return onLeader(async () => m.control.activeOrRefuse());
        // A watch or an acknowledgement served here, its home (home-clients.ts); the rest relayed.
        const here = await m.home?.serve(mth, path, route.split("/").slice(3), body, caller);
        return here ?? relayClientRoute(env, m.node, m.relay, server_key, mth, path, body, caller);
      }
      return clientRoutes(ctl, mth, path, route.split("/").slice(3), body, caller);
    }
    if (/^\/v1\/drives\/[^/]+\/evict$/.test(route)) {
      if (mth !== "POST") return err(405, `${mth} not allowed on ${route}; use POST`);
      const no = adminOnly(caller, "evicting a drive");
      if (no) return no;
      const uuid = route.split("/")[3]!.toLowerCase();
      return onLeader(async () => {
        m.control.activeOrRefuse().evictDrive(uuid);
        return { evicted: uuid };
      });
    }
    return err(404, `no such route: ${method} ${path}`);
  };
}

/**
 * A client daemon's call that reaches a TOMA knowing no leader (an election under way) or just
 * elected (its control starts once it applied an entry of its own term: leader-control.ts) waits
 * up to this long for the outcome, rather than being answered 503 at once, which sends the daemon
 * away from its home (the home itself may be the one elected). Longer than an election, shorter
 * than the daemon's own call (10 s).
 */
const ELECTED_WAIT_MS = 4000;
const ELECTED_POLL_MS = 50;

/**
 * The pool as this TOMA knows it: every drive of the applied state and every drive a server
 * reported (claimed or not yet), each where its server last said it is served.
 */
export function driveViews(m: ClusterMember, state: ClusterState | null): DriveJson[] {
  const cluster = state?.cluster_uuid ?? m.node.view().cluster_uuid;
  const members = new Map((state?.drives ?? []).map((d) => [d.drive_uuid, d]));
  const used = state ? usedExtents(state) : new Map<string, ExtentSet>();
  const retired = state ? retiredCounts(state) : new Map<string, number>();
  const out: DriveJson[] = [];
  for (const uuid of [...new Set([...members.keys(), ...m.pool.uuids()])].sort()) {
    const rec = members.get(uuid);
    const at = m.pool.locate(uuid);
    const d = at?.drive ?? null;
    let state_: DriveJson["state"] = "ok";
    let error: string | null = d?.error ?? null;
    if (!at) [state_, error] = ["missing", "no TOMA of the cluster has reported this drive (its server or target is down, or the report did not reach this TOMA)"];
    else if (!at.fresh) [state_, error] = ["missing", `its server ${at.server} has not reported it for ${Math.round(at.heard_ms_ago / 1000)} s`];
    else if (d!.state === "error") state_ = "error";
    else if (d!.cluster_uuid !== cluster && d!.cluster_uuid !== NIL_UUID) [state_, error] = ["foreign", `claimed by cluster ${d!.cluster_uuid}`];
    const total = rec?.extent_count ?? d?.extent_count ?? 0;
    const u = used.get(uuid)?.size ?? 0;
    out.push({
      uuid,
      server: at?.server ?? null,
      target: d?.target ?? null,
      path: d?.path ?? null,
      size_bytes: d?.size_bytes ?? null,
      member: rec !== undefined,
      cluster_uuid: d?.cluster_uuid ?? null,
      extent_size_bytes: rec?.extent_size_bytes ?? d?.extent_size_bytes ?? null,
      extents_total: total,
      extents_used: u,
      extents_retired: retired.get(uuid) ?? 0,
      extents_free: rec ? total - u : 0,
      metadata_generation: null,
      state: state_,
      error,
    });
  }
  return out;
}
