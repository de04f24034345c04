/**
 * The switched report: how a TOMA tells the leader how far its own client daemons switched
 * (DESIGN §3: "each TOMA sends SWITCH_TOPO to its own clients, a client acknowledges once no I/O
 * of an older topology is in flight, each TOMA reports to the leader"). A home TOMA
 * (home-clients.ts) serves its clients' watches and acknowledgements from its own applied state
 * and sends the leader, at once after an acknowledgement and at least every watch hold, one
 * report: every client it holds an acknowledgement of, with that generation. The leader answers
 * with its term, generation and stable generation, the answer held (`known_stable`) until the
 * stable generation moves past what the TOMA knows, so that its clients learn it as soon as the
 * leader does.
 *
 * What a report may change on the leader, and why it is safe (docs/toma-cluster.md, "The
 * switched report"):
 * - An acknowledgement is a client's own statement that it has no I/O of an older topology in
 *   flight; it stays true (a client never goes back to an older topology, and ids are never
 *   reused), so the leader takes the highest it heard from anyone: a report repeated, late, or
 *   crossing another TOMA's about the same client (it re-homed) counts nothing twice, and one
 *   about a generation older than what the leader holds changes nothing.
 * - A report of another term than the leader's changes nothing (409 naming the leader's term, or
 *   503 for a later one: this leader is being replaced).
 * - It never counts as hearing the client (a repeated report would keep a dead one alive): the
 *   drive reports' ages do that (client-hearing.ts). An expired client's acknowledgement is not
 *   taken, as the leader's own ack route refuses it (410).
 * - An acknowledgement above the leader's generation (the TOMA applied an entry the leader has not
 *   applied yet) is taken as the leader's generation: acknowledging a generation acknowledges
 *   every older one.
 */
import * as v from "valibot";
import type { ApiResponse } from "../api-auth.ts";
import { TOMA_ID_RE } from "../consensus/hard-state-record.ts";
import { Count } from "../consensus/types.ts";
import type { ControlTerm } from "./leader-control.ts";

/** POST a TOMA's switched report to the leader (server key only). */
export const SWITCHED_PATH = "/v1/cluster/switched";

/** At most this many clients per report (the cluster state holds at most 256). */
const MAX_CLIENTS = 1024;

export const SwitchedReportSchema = v.strictObject({
  server: v.pipe(v.string(), v.regex(TOMA_ID_RE, "server must be 1 to 64 of [A-Za-z0-9._-]")),
  /** The reporting TOMA's term when it sent the report. */
  term: Count,
  /** Every client this TOMA holds an acknowledgement of, with the highest generation acknowledged. */
  clients: v.pipe(v.array(v.strictObject({ id: v.pipe(Count, v.minValue(1)), acked: Count })), v.maxLength(MAX_CLIENTS, `at most ${MAX_CLIENTS} clients`)),
  /** Present: hold the answer until the leader's stable generation is above it (or a watch hold passed). */
  known_stable: v.optional(v.pipe(v.number(), v.safeInteger(), v.minValue(-1))),
});
export type SwitchedReport = v.InferOutput<typeof SwitchedReportSchema>;

export const SwitchedAnswerSchema = v.strictObject({ term: Count, generation: Count, stable: Count });
export type SwitchedAnswer = v.InferOutput<typeof SwitchedAnswerSchema>;

const err = (status: number, error: string, extra: Record<string, unknown> = {}): ApiResponse => ({ status, body: { error, ...extra } });

/**
 * On the leader: takes a TOMA's report into the control's client registry, then answers (held
 * while `known_stable` is given and the stable generation is not above it). `now` reads a steady
 * clock.
 */
export async function receiveSwitched(ctl: ControlTerm, r: SwitchedReport, now: () => number): Promise<ApiResponse> {
  if (r.term < ctl.term) return err(409, `a switched report of term ${r.term}, older than the leader's term ${ctl.term}: nothing changed`, { term: ctl.term });
  if (r.term > ctl.term) return err(503, `a switched report of term ${r.term}: this TOMA leads term ${ctl.term} only, and is being replaced`);
  const st = ctl.state();
  if (!st) return err(503, ctl.notReady());
  const registry = ctl.mirror.clients;
  let moved = false;
  for (const { id, acked } of r.clients) {
    const c = registry.live(id);
    const g = Math.min(acked, st.generation);
    if (!c || g <= c.acked) continue;
    registry.ack(c, g, false);
    moved = true;
  }
  // A step may be computed now: not a pass period later.
  if (moved) ctl.kick();
  if (r.known_stable !== undefined) {
    const until = now() + registry.timings.watch_hold_ms;
    while (ctl.state() !== null && ctl.mirror.stable() <= r.known_stable && now() < until) await registry.changed(until - now());
  }
  const after = ctl.state();
  if (!after) return err(503, ctl.notReady());
  return { status: 200, body: { term: ctl.term, generation: after.generation, stable: ctl.mirror.stable() } satisfies SwitchedAnswer };
}
