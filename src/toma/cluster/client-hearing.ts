/**
 * When this TOMA last heard each client daemon, by its own steady clock: a request signed with
 * that client's secret (any route, even one this TOMA answers 421). Every TOMA sends these ages in
 * its drive report to the leader, which expires a client only when neither it nor any TOMA's fresh
 * report heard it within client_timeout_ms (clients.ts heardVia): a client cut off from the
 * leader alone, one way or both, still reaches another TOMA and is not fenced out.
 *
 * Runtime knowledge, never replicated; an age crosses the wire, never a timestamp.
 */
import * as v from "valibot";
import { Count } from "../consensus/types.ts";

/** Hearings older than this are not reported (far beyond any client timeout). */
const KEEP_MS = 120_000;
/** At most this many clients per report (the cluster state holds at most 256). */
export const MAX_HEARD = 1024;

export const HeardClientSchema = v.strictObject({ id: Count, heard_ms_ago: Count });
export type HeardClient = v.InferOutput<typeof HeardClientSchema>;

export class ClientHearing {
  /** Client id → when it was last heard, on this TOMA's steady clock. */
  private readonly at = new Map<number, number>();

  constructor(private readonly now: () => number) {}

  heard(id: number): void {
    this.at.delete(id); // re-inserted last: the map stays in hearing order
    this.at.set(id, this.now());
    if (this.at.size > MAX_HEARD) this.at.delete(this.at.keys().next().value!);
  }

  /** Every client heard lately, with how long ago. */
  report(): HeardClient[] {
    const now = this.now();
    const out: HeardClient[] = [];
    for (const [id, t] of this.at) {
      if (now - t > KEEP_MS) this.at.delete(id);
      else out.push({ id, heard_ms_ago: Math.max(0, Math.round(now - t)) });
    }
    return out;
  }
}
