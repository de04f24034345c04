/** Resolving a route's volume name, shared by every management API (api.ts, cluster/cluster-api.ts, client-routes.ts). */
import type { ApiResponse } from "./api-auth.ts";
import { type VolumeRecord, VOLUME_NAME_RE } from "./cluster-state.ts";

const err = (status: number, error: string): ApiResponse => ({ status, body: { error } });

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

/**
 * The volume a path's :name names, among the volumes `known` gives (or the response it gives when
 * there are none to look in); a response when the name is bad or unknown.
 */
export function volumeNamed(raw: string, known: () => readonly VolumeRecord[] | ApiResponse): VolumeRecord | ApiResponse {
  const name = volumeNameOf(raw);
  if (typeof name !== "string") return name;
  const vols = known();
  if ("status" in vols) return vols;
  return vols.find((x) => x.name === name) ?? err(404, `no volume named '${name}' ('nvmesh volume show' lists them)`);
}
