import type { VolumeRecord } from "./cluster-state.ts";
/**
 * JSON shapes of the management API, shared by the server (./api.ts) and the client
 * (./api-client.ts). Requests are defined with their valibot schema beside them.
 */
import * as v from "valibot";
import type { DriveView, TargetView, VolumeState } from "./toma.ts";

export const CreateVolumeBody = v.strictObject({
  name: v.string("name must be a string"),
  capacity_bytes: v.pipe(
    v.number("capacity_bytes must be a number"),
    v.safeInteger("capacity_bytes must be an integer"),
  ),
  raid_level: v.picklist(["concatenated", "0"], 'raid_level must be "concatenated" or "0"'),
  stripe_width: v.optional(v.pipe(v.number("stripe_width must be a number"), v.safeInteger("stripe_width must be an integer"))),
  stripe_size_bytes: v.optional(
    v.pipe(v.number("stripe_size_bytes must be a number"), v.safeInteger("stripe_size_bytes must be an integer")),
  ),
});
export type CreateVolumeBody = v.InferOutput<typeof CreateVolumeBody>;

export interface ClusterJson {
  cluster_uuid: string | null;
  generation: number | null;
  /** False until the state was recovered from a majority of drives: mutations answer 503. */
  ready: boolean;
  readiness: string;
  targets: { total: number; up: number; down: number };
  drives: { total: number; ok: number; missing: number; foreign: number; error: number };
  capacity: { total_bytes: number; used_bytes: number; free_bytes: number };
  volumes: number;
}

export type TargetJson = TargetView;
export type DriveJson = DriveView;

/** A volume as the API shows it: the persisted record plus its state, derived at read time. */
export type VolumeJson = VolumeRecord & { state: VolumeState };

export interface ErrorJson {
  error: string;
}
