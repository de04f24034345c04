import type { VolumeRecord } from "./cluster-state.ts";
/**
 * JSON shapes of the management API, shared by the server (./api.ts) and the client
 * (./api-client.ts). Requests are defined with their valibot schema beside them.
 */
import * as v from "valibot";
import type { DriveView, TargetView, VolumeState } from "./toma.ts";
import type { NodeView } from "./cluster/node.ts";
import type { MembershipResult } from "./cluster/membership-ops.ts";

export const CreateVolumeBody = v.strictObject({
  name: v.string("name must be a string"),
  capacity_bytes: v.pipe(
    v.number("capacity_bytes must be a number"),
    v.safeInteger("capacity_bytes must be an integer"),
  ),
  raid_level: v.picklist(["concatenated", "0", "1", "10"], 'raid_level must be "concatenated", "0", "1" or "10"'),
  mirrors: v.optional(v.pipe(v.number("mirrors must be a number"), v.safeInteger("mirrors must be an integer"))),
  allow_same_server: v.optional(v.boolean("allow_same_server must be true or false")),
  debug_format: v.optional(v.boolean("debug_format must be true or false")),
  stripe_width: v.optional(v.pipe(v.number("stripe_width must be a number"), v.safeInteger("stripe_width must be an integer"))),
  stripe_size_bytes: v.optional(
    v.pipe(v.number("stripe_size_bytes must be a number"), v.safeInteger("stripe_size_bytes must be an integer")),
  ),
});
export type CreateVolumeBody = v.InferOutput<typeof CreateVolumeBody>;

export interface ClusterJson {
  cluster_uuid: string | null;
  generation: number | null;
  /** The TOMA's term (taken at each start; docs/toma.md, "Fenced at the drives"). */
  term: number | null;
  /**
   * The control-plane version its requests to targets carry: term × 2^32 + generation; 0 while
   * not ready (deposed included).
   */
  version: number;
  /** False until the state was recovered from a majority of drives: mutations answer 503. */
  ready: boolean;
  readiness: string;
  targets: { total: number; up: number; down: number };
  drives: { total: number; ok: number; missing: number; foreign: number; error: number };
  capacity: { total_bytes: number; used_bytes: number; free_bytes: number };
  volumes: number;
  /**
   * The TOMA cluster as this TOMA sees it (`toma run --peers`): its role, the term, the leader by
   * its management address, and each other member as heard from here. Absent in the single-TOMA mode.
   */
  consensus?: NodeView;
}

/** The answer to `cluster server add/remove` (POST, DELETE /v1/cluster/servers). */
export type ServerChangeJson = MembershipResult;

export type TargetJson = TargetView;
export type DriveJson = DriveView;

/** A volume as the API shows it: the persisted record plus its state, derived at read time. */
export type VolumeJson = VolumeRecord & {
  state: VolumeState;
  /** Mirrored volumes: per leg, where it is and how its rebuild goes. */
  leg_views: LegView[];
};

export interface LegView {
  column: number;
  set: number;
  drive_uuid: string;
  state: VolumeRecord["legs"][number];
  reachable: boolean;
  rebuild: { done_bytes: number; total_bytes: number } | null;
}

export const ClientRegisterBody = v.strictObject({ name: v.pipe(v.string(), v.maxLength(256)) });
export const ClientAckBody = v.strictObject({ generation: v.pipe(v.number(), v.safeInteger(), v.minValue(0)) });
/**
 * Attach: with `volume_uuid`, only that volume (a daemon refreshing what it attached: a newer
 * volume that took the name is not the one it serves, and the answer is 404).
 */
export const ClientAttachBody = v.strictObject({
  volume_uuid: v.optional(v.pipe(v.string(), v.regex(/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/, "volume_uuid must be a uuid"))),
});
export const ClientReportBody = v.strictObject({
  volume: v.string(),
  /** The volume the report is about; a newer volume of that name is not it. */
  volume_uuid: v.optional(v.string()),
  column: v.pipe(v.number(), v.safeInteger(), v.minValue(0)),
  error: v.pipe(v.string(), v.maxLength(4096)),
});

/** What a client's watch returns: the generation, how far every client switched, its volumes. */
export interface WatchJson {
  generation: number;
  stable_generation: number;
  /** The generation this TOMA holds as the client's acknowledgement: below `generation`, ack again. */
  acked?: number;
  volumes: import("../engine/layout/types.ts").AttachInfo[];
}

export interface ErrorJson {
  error: string;
}
