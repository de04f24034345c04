/**
 * The management API as a plain function: (method, path, parsed JSON body) → {status, body}.
 * Sans-I/O, so tests and the simulator call it directly; ./runtime/http-server.ts puts it on HTTP.
 * Every refusal is {error: "..."} with the status below, and changes nothing.
 */
import * as v from "valibot";
import type { AttachInfo } from "../engine/layout/types.ts";
import { type ClusterJson, CreateVolumeBody, type DriveJson, type TargetJson, type VolumeJson } from "./api-types.ts";
import { type RefusalCode, type VolumeRecord, VOLUME_NAME_RE } from "./cluster-state.ts";
import type { Refusal, Toma } from "./toma.ts";

export interface ApiResponse {
  status: number;
  body: unknown;
}

export type ApiHandler = (method: string, path: string, body: unknown) => Promise<ApiResponse>;

const STATUS: Record<RefusalCode | "unavailable", number> = {
  invalid: 400,
  not_found: 404,
  name_taken: 409,
  no_space: 507,
  unavailable: 503,
};

const err = (status: number, error: string): ApiResponse => ({ status, body: { error } });
const ok = (body: unknown, status = 200): ApiResponse => ({ status, body });
const refused = (r: Refusal): ApiResponse => err(STATUS[r.code], r.error);

export function makeApiHandler(toma: Toma): ApiHandler {
  const volumeJson = (vol: VolumeRecord): VolumeJson => ({
    uuid: vol.uuid,
    name: vol.name,
    capacity_bytes: vol.capacity_bytes,
    raid_level: vol.raid_level,
    stripe_width: vol.stripe_width,
    stripe_size_bytes: vol.stripe_size_bytes,
    extent_size_bytes: vol.extent_size_bytes,
    state: toma.volumeState(vol),
    created_seq: vol.created_seq,
    columns: vol.columns.map((c) => ({ drive_uuid: c.drive_uuid, extents: [...c.extents] })),
  });

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
  const findVolume = (raw: string): VolumeRecord | ApiResponse => {
    let name: string;
    try {
      name = decodeURIComponent(raw);
    } catch {
      return err(400, `bad volume name in path: '${raw}'`);
    }
    if (!VOLUME_NAME_RE.test(name)) return err(400, `bad volume name '${name}': use 1 to 64 of [A-Za-z0-9._-]`);
    if (!toma.state) return err(503, `TOMA not ready: ${toma.readiness()}`);
    return toma.state.volumes.find((x) => x.name === name) ?? err(404, `no volume named '${name}'`);
  };

  return async (method, path, body) => {
    const parts = path.split("?")[0]!.split("/").filter((p) => p !== "");
    if (parts[0] !== "v1") return err(404, `no such route: ${method} ${path}`);
    const route = parts.slice(1);
    const m = method.toUpperCase();
    const only = (allowed: string, fn: () => ApiResponse | Promise<ApiResponse>) =>
      m === allowed ? fn() : err(405, `${m} not allowed on ${path}; use ${allowed}`);

    if (route.length === 1 && route[0] === "cluster") return only("GET", () => ok(cluster()));
    if (route.length === 1 && route[0] === "targets") return only("GET", () => ok(toma.targetViews() satisfies TargetJson[]));
    if (route.length === 1 && route[0] === "drives") return only("GET", () => ok(toma.driveViews() satisfies DriveJson[]));
    if (route.length === 1 && route[0] === "volumes") {
      if (m === "GET") {
        if (!toma.state) return err(503, `TOMA not ready: ${toma.readiness()}`);
        return ok(toma.state.volumes.map(volumeJson));
      }
      if (m === "POST") {
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
        const vol = findVolume(route[1]!);
        if ("status" in vol) return vol;
        const out = await toma.deleteVolume(vol.name);
        return out.ok ? ok({ deleted: vol.name }) : refused(out);
      }
      return err(405, `${m} not allowed on ${path}; use GET or DELETE`);
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
