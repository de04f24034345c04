/**
 * The management API as a plain function: (method, path, parsed JSON body, who signed it) →
 * {status, body}. Sans-I/O, so tests and the simulator call it directly; ./runtime/http-server.ts
 * puts it on HTTP behind the signature check (api-auth.ts). Every refusal is {error: "..."} with
 * the status below, and changes nothing.
 *
 * What each signer may do is decided here, route by route (docs/protocol.md, "Management API
 * requests"): reads by anyone who holds a key; volume creation and deletion and drive eviction by
 * the server key only; registering a client daemon by the client key too; a client daemon's own
 * routes by the secret it was given at registration (or the server key), never by another's.
 */
import * as v from "valibot";
import type { Env } from "../engine/env.ts";
import type { AttachInfo } from "../engine/layout/types.ts";
import { toRuns } from "../engine/layout/extent-runs.ts";
import { serverKeys } from "../engine/wire/cluster-key.ts";
import { type ApiHandler, type ApiResponse, type Caller, ManagementGuard, type Transport } from "./api-auth.ts";
import {
  ClientAckBody,
  ClientAttachBody,
  ClientRegisterBody,
  ClientReportBody,
  type ClusterJson,
  CreateVolumeBody,
  type DriveJson,
  type LegView,
  type TargetJson,
  type VolumeJson,
  type WatchJson,
} from "./api-types.ts";
import { type ClientHost, clientRoutes, signedWith } from "./client-routes.ts";
import type { RefusalCode, VolumeRecord } from "./cluster-state.ts";
import { volumeNamed } from "./volume-lookup.ts";
import type { Refusal, Toma, VolumeState } from "./toma.ts";

export type { ApiHandler, ApiResponse } from "./api-auth.ts";

/**
 * The whole API as a transport serves it: nonces, signatures, then the routes. `server_key`
 * null: a TOMA started --insecure, every request is served.
 */
export function managementApi(env: Env, toma: Toma, server_key: Uint8Array | null): Transport {
  const guard = new ManagementGuard(env, server_key === null ? null : serverKeys(server_key), (id) => toma.mirror.clients.live(id)?.secret);
  const handler = makeApiHandler(toma);
  return (req) => guard.serve(req, handler);
}


/** Null when the caller may do `what`, which needs the server key; else the 403 answer. */
export function adminOnly(c: Caller, what: string): ApiResponse | null {
  if (c.kind === "server" || c.kind === "insecure") return null;
  return err(403, `${what} needs the server key (an administrator's); this request was signed with ${signedWith(c)}`);
}

export const STATUS: Record<RefusalCode | "unavailable", number> = {
  invalid: 400,
  not_found: 404,
  name_taken: 409,
  no_space: 507,
  in_use: 409,
  unavailable: 503,
};

const err = (status: number, error: string): ApiResponse => ({ status, body: { error } });
const ok = (body: unknown, status = 200): ApiResponse => ({ status, body });
const refused = (r: Refusal): ApiResponse => err(STATUS[r.code], r.error);

/** A volume as the API shows it: its record, its state now, and its legs' views (mirrored only). */
export function volumeJsonOf(vol: VolumeRecord, state: VolumeState, leg_views: LegView[]): VolumeJson {
  return {
    uuid: vol.uuid,
    name: vol.name,
    capacity_bytes: vol.capacity_bytes,
    raid_level: vol.raid_level,
    stripe_width: vol.stripe_width,
    stripe_size_bytes: vol.stripe_size_bytes,
    extent_size_bytes: vol.extent_size_bytes,
    state,
    created_seq: vol.created_seq,
    columns: vol.columns.map((c) => ({ drive_uuid: c.drive_uuid, runs: toRuns(c.extents) })),
    mirrors: vol.mirrors,
    legs: [...vol.legs],
    rebuild_blank: [...vol.rebuild_blank],
    topology_seq: vol.topology_seq,
    leg_views,
    debug_format: vol.debug_format,
  };
}

export function makeApiHandler(toma: Toma): ApiHandler {
  const host: ClientHost = {
    mirror: toma.mirror,
    state: () => (toma.ready ? toma.state : null),
    notReady: () => toma.readiness(),
    kick: () => toma.kick(),
    attachInfo: (vol) => toma.attachInfo(vol),
  };
  const volumeJson = (vol: VolumeRecord): VolumeJson => volumeJsonOf(vol, toma.volumeState(vol), vol.mirrors > 1 ? toma.legViews(vol) : []);

  const cluster = (): ClusterJson => {
    const targets = toma.targetViews();
    const drives = toma.driveViews();
    const members = drives.filter((d) => d.member);
    const size = (d: DriveJson, n: number) => n * (d.extent_size_bytes ?? 0);
    const total = members.reduce((n, d) => n + size(d, d.extents_total), 0);
    const used = members.reduce((n, d) => n + size(d, d.extents_used), 0);
    const count = (s: DriveJson["state"]) => drives.filter((d) => d.state === s).length;
    return {
      cluster_uuid: toma.cluster_uuid,
      generation: toma.state?.generation ?? null,
      term: toma.state?.term ?? null,
      version: toma.version(),
      ready: toma.ready,
      readiness: toma.readiness(),
      targets: {
        total: targets.length,
        up: targets.filter((t) => t.state === "up").length,
        down: targets.filter((t) => t.state === "down").length,
      },
      drives: { total: drives.length, ok: count("ok"), missing: count("missing"), foreign: count("foreign"), error: count("error") },
      capacity: { total_bytes: total, used_bytes: used, free_bytes: total - used },
      volumes: toma.state?.volumes.length ?? 0,
    };
  };

  /** Resolves :name; a response when the name is bad, unknown, or no state is known yet. */
  const findVolume = (raw: string): VolumeRecord | ApiResponse =>
    volumeNamed(raw, () => (toma.state ? toma.state.volumes : err(503, `TOMA not ready: ${toma.readiness()}`)));

  return async (method, path, body, caller) => {
    const parts = path.split("?")[0]!.split("/").filter((p) => p !== "");
    if (parts[0] !== "v1") return err(404, `no such route: ${method} ${path}`);
    const route = parts.slice(1);
    const m = method.toUpperCase();
    const only = (allowed: string, fn: () => ApiResponse | Promise<ApiResponse>) =>
      m === allowed ? fn() : err(405, `${m} not allowed on ${path}; use ${allowed}`);

    if (route.length === 1 && route[0] === "cluster") return only("GET", () => ok(cluster()));
    if (route[0] === "cluster" && route[1] === "servers") {
      return err(409, "this TOMA runs alone (toma run without --peers): 'cluster server add/remove' changes the membership of a TOMA cluster (toma run --peers on every server)");
    }
    if (route.length === 1 && route[0] === "targets") return only("GET", () => ok(toma.targetViews() satisfies TargetJson[]));
    if (route.length === 1 && route[0] === "drives") return only("GET", () => ok(toma.driveViews() satisfies DriveJson[]));
    if (route.length === 1 && route[0] === "volumes") {
      if (m === "GET") {
        if (!toma.state) return err(503, `TOMA not ready: ${toma.readiness()}`);
        return ok(toma.state.volumes.map(volumeJson));
      }
      if (m === "POST") {
        const no = adminOnly(caller, "creating a volume");
        if (no) return no;
        const r = v.safeParse(CreateVolumeBody, body);
        if (!r.success) return err(400, `invalid volume request: ${r.issues.map((i) => i.message).join("; ")}`);
        const out = await toma.createVolume(r.output);
        return out.ok ? ok(volumeJson(out.value), 201) : refused(out);
      }
      return err(405, `${m} not allowed on ${path}; use GET or POST`);
    }
    if (route.length === 2 && route[0] === "volumes") {
      if (m === "GET") {
        const vol = findVolume(route[1]!);
        return "status" in vol ? vol : ok(volumeJson(vol));
      }
      if (m === "DELETE") {
        const no = adminOnly(caller, "deleting a volume");
        if (no) return no;
        const vol = findVolume(route[1]!);
        if ("status" in vol) return vol;
        const force = new URLSearchParams(path.split("?")[1] ?? "").get("force");
        if (force !== null && force !== "true" && force !== "false") return err(400, `force must be true or false, not '${force}'`);
        const out = await toma.deleteVolume(vol.name, force === "true");
        return out.ok ? ok({ deleted: vol.name }) : refused(out);
      }
      return err(405, `${m} not allowed on ${path}; use GET or DELETE`);
    }
    if (route[0] === "clients") return clientRoutes(host, m, path, route.slice(1), body, caller);
    if (route.length === 3 && route[0] === "drives" && route[2] === "evict") {
      if (m !== "POST") return err(405, `${m} not allowed on ${path}; use POST`);
      const no = adminOnly(caller, "evicting a drive");
      if (no) return no;
      const out = toma.evictDrive(route[1]!.toLowerCase());
      return out.ok ? ok({ evicted: route[1] }) : refused(out);
    }
    if (route.length === 3 && route[0] === "volumes" && route[2] === "attach") {
      return only("GET", () => {
        const vol = findVolume(route[1]!);
        return "status" in vol ? vol : ok(toma.attachInfo(vol) satisfies AttachInfo);
      });
    }
    return err(404, `no such route: ${method} ${path}`);
  };

}
