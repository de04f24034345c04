/**
 * What crosses between the leader and a server's TOMA about a rebuild copy handed out
 * (rebuild-orders.ts): the leader's orders, riding on its answer to the server's drive report, and
 * the server's jobs, riding on the report (drive-pool.ts). Validated on arrival like every body.
 */
import * as v from "valibot";
import { Count, UuidSchema } from "../consensus/types.ts";

/** At most this many orders or jobs cross in one report or answer. */
export const MAX_REBUILD_JOBS = 256;

/** The leader's order to a server's TOMA: copy `source` into `column` of the volume. */
export const RebuildOrderSchema = v.strictObject({
  volume_uuid: UuidSchema,
  column: Count,
  source: Count,
  /** The volume's topology generation the order is for: a copy for another one is abandoned. */
  topology_seq: Count,
  term: Count,
  /** The control-plane version stamped on every request of the copy (fenceVersion). */
  version: Count,
  /** The lock owner id the copy locks under. */
  owner_id: Count,
  /** Whether the copy clears the dirty bits (no other leg of the set is dead: rebuild.ts). */
  clear_bits: v.boolean(),
});
export type RebuildOrder = v.InferOutput<typeof RebuildOrderSchema>;

/** A server's report of an order's copy. */
export const RebuildJobSchema = v.strictObject({
  volume_uuid: UuidSchema,
  column: Count,
  topology_seq: Count,
  term: Count,
  owner_id: Count,
  state: v.picklist(["running", "done", "failed"]),
  done_bytes: Count,
  total_bytes: Count,
  /** The source drive's cache epoch, when it was the same at the copy's start and end (mirror-control.ts). */
  from_epoch: v.nullable(Count),
  error: v.nullable(v.pipe(v.string(), v.maxLength(1024))),
});
export type RebuildJob = v.InferOutput<typeof RebuildJobSchema>;
