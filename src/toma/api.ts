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
import { type RefusalCode, type VolumeRecord, VOLUME_NAME_RE } from "./cluster-state.ts";
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

const signedWith = (c: Caller): string =>
  c.kind === "client-id" ? `the secret of client ${c.id}` : c.kind === "client" ? "the client key" : `the ${c.kind} key`;

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
    columns: vol.columns.map((c) => ({ drive_uuid: c.drive_uuid, extents: [...c.extents] })),
    mirrors: vol.mirrors,
    legs: [...vol.legs],
    rebuild_blank: [...vol.rebuild_blank],
    topology_seq: vol.topology_seq,
    leg_views,
    debug_format: vol.debug_format,
  };
}

/**
 * The volume a path's :name names, among the volumes `known` gives (or the response it gives when
 * there are none to look in); a response when the name is bad or unknown.
 */
/** The volume name a route's path segment holds, or the 400 for one that is not a volume name. */
export function volumeNameOf(raw: string): string | ApiResponse {
  let name: string;
  try {
    name = decodeURIComponent(raw);
  } catch {
    return err(400, `bad volume name in path: '${raw.slice(0, 80)}'`);
  }
  if (!VOLUME_NAME_RE.test(name)) return err(400, `bad volume name '${name.slice(0, 80)}': use 1 to 64 of [A-Za-z0-9._-]`);
  return name;
}

export function volumeNamed(raw: string, known: () => readonly VolumeRecord[] | ApiResponse): VolumeRecord | ApiResponse {
  const name = volumeNameOf(raw);
  if (typeof name !== "string") return name;
  const vols = known();
  if ("status" in vols) return vols;
  return vols.find((x) => x.name === name) ?? err(404, `no volume named '${name}' ('nvmesh volume show' lists them)`);
}

export function makeApiHandler(toma: Toma): ApiHandler {
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
    if (route[0] === "clients") return clients(m, path, route.slice(1), body, caller);
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

  /**
   * The client daemons' routes: register (one id per daemon incarnation), attach (registers it on
   * the volume's drives first), watch (long poll for new generations), ack, report a failing leg,
   * leave (DELETE: it has no volume attached any more).
   * An unknown or expired client id is answered 410: the daemon registers again.
   *
   * Registering takes the client key (or the server key); the answer carries the new client's
   * secret, sealed for the signer. A client's own routes then take that secret: the client key
   * alone cannot act for (e.g. fence out) another client; the server key can.
   */
  async function clients(m: string, path: string, route: string[], body: unknown, caller: Caller): Promise<ApiResponse> {
    const mc = toma.mirror;
    if (route.length === 0) {
      if (m !== "POST") return err(405, `${m} not allowed on ${path}; use POST`);
      if (caller.kind === "client-id") return err(403, `register with the client key, not with ${signedWith(caller)}`);
      const r = v.safeParse(ClientRegisterBody, body);
      if (!r.success) return err(400, `invalid client registration: ${r.issues.map((i) => i.message).join("; ")}`);
      if (!toma.state || !toma.ready) return err(503, `TOMA not ready: ${toma.readiness()}`);
      const c = mc.register(r.output.name);
      const secret = caller.kind === "insecure" ? {} : { secret: caller.seal(c.secret, c.id) };
      return ok({ client_id: c.id, generation: c.acked, ...secret }, 201);
    }
    const id = Number(route[0]);
    if (caller.kind === "client" || (caller.kind === "client-id" && caller.id !== id)) {
      return err(403, `only client ${route[0]} itself (with the secret it was given when it registered) or an administrator may do this; this request was signed with ${signedWith(caller)}`);
    }
    const c = Number.isSafeInteger(id) ? mc.clients.live(id) : undefined;
    if (!c) return err(410, `client ${route[0]} is not registered (expired or TOMA restarted): register again`);
    mc.clients.heard(c);
    if (route.length === 1) {
      if (m !== "DELETE") return err(405, `${m} not allowed on ${path}; use DELETE`);
      // The daemon detached its last volume or stops: fenced out now, not after client_timeout_ms
      // of holding every topology step back.
      const state = toma.state;
      const drives = [...c.volumes].flatMap((u) => state?.volumes.find((x) => x.uuid === u)?.columns.map((k) => k.drive_uuid) ?? []);
      mc.clients.expire(c, drives, "client left: fencing it out");
      toma.kick();
      return ok({ left: c.id });
    }
    if (route.length === 3 && route[1] === "attach") {
      if (m !== "POST") return err(405, `${m} not allowed on ${path}; use POST`);
      const r = v.safeParse(ClientAttachBody, body ?? {});
      if (!r.success) return err(400, `invalid attach: ${r.issues.map((i) => i.message).join("; ")}`);
      const vol = findVolume(route[2]!);
      if ("status" in vol) return vol;
      const want = r.output.volume_uuid;
      if (want !== undefined && vol.uuid !== want) {
        return err(404, `volume ${want} no longer exists (the volume named '${vol.name}' now is ${vol.uuid}, another one)`);
      }
      if (mc.isDeleting(vol.uuid)) return err(409, `volume '${vol.name}' is being deleted`);
      // Without a volume it has no I/O at all: it is switched to the current generation already
      // (so counting it from now on never takes the stable generation back).
      if (c.volumes.size === 0 && toma.state) mc.clients.ack(c, toma.state.generation);
      await mc.attach(c, vol.uuid);
      // Looked up again, by uuid: the volume may have been deleted while the registration awaited
      // the drives (attachInfo itself answers the state's current record of it).
      const now = toma.state?.volumes.find((x) => x.uuid === vol.uuid);
      if (!now) {
        c.volumes.delete(vol.uuid);
        return err(404, `volume '${vol.name}' was deleted while being attached`);
      }
      return ok(toma.attachInfo(now) satisfies AttachInfo);
    }
    if (route.length === 2 && route[1] === "watch") {
      if (m !== "GET") return err(405, `${m} not allowed on ${path}; use GET`);
      const q = new URLSearchParams(path.split("?")[1] ?? "");
      const known = Number(q.get("known") ?? "-1");
      const known_stable = Number(q.get("stable") ?? "-1");
      // Held until something the client does not know yet happens (or a heartbeat's time).
      if ((toma.state?.generation ?? 0) <= known && mc.stable() <= known_stable) await mc.clients.changed();
      mc.clients.heard(c);
      const state = toma.state;
      // By uuid: a volume deleted (or taken out of this client by a forced delete) is absent, and
      // a newer one that took its name is not it. The daemon tears down what is absent.
      const vols = state ? [...c.volumes].map((u) => state.volumes.find((x) => x.uuid === u)).filter((x) => x !== undefined) : [];
      return ok({
        generation: state?.generation ?? 0,
        stable_generation: mc.stable(),
        volumes: vols.map((x) => toma.attachInfo(x)),
      } satisfies WatchJson);
    }
    if (route.length === 2 && route[1] === "ack") {
      if (m !== "POST") return err(405, `${m} not allowed on ${path}; use POST`);
      const r = v.safeParse(ClientAckBody, body);
      if (!r.success) return err(400, `invalid ack: ${r.issues.map((i) => i.message).join("; ")}`);
      if (r.output.generation > (toma.state?.generation ?? 0)) return err(400, `generation ${r.output.generation} does not exist yet`);
      mc.clients.ack(c, r.output.generation);
      toma.kick();
      return ok({ acked: c.acked });
    }
    if (route.length === 2 && route[1] === "report") {
      if (m !== "POST") return err(405, `${m} not allowed on ${path}; use POST`);
      const r = v.safeParse(ClientReportBody, body);
      if (!r.success) return err(400, `invalid report: ${r.issues.map((i) => i.message).join("; ")}`);
      const vol = findVolume(r.output.volume);
      if ("status" in vol) return vol;
      if (r.output.volume_uuid !== undefined && r.output.volume_uuid !== vol.uuid) return err(404, `volume ${r.output.volume_uuid} no longer exists`);
      if (r.output.column >= vol.columns.length) return err(400, `volume ${vol.name} has ${vol.columns.length} legs`);
      mc.reportFailure(vol, r.output.column, `client ${c.id}: ${r.output.error}`);
      toma.kick();
      return ok({ reported: true });
    }
    return err(404, `no such route: ${m} ${path}`);
  }
}
