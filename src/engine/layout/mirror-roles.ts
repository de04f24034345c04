/**
 * Which legs of a mirror set a lock unit is read from and locked on, in a topology (DESIGN.md §3):
 * the client's planner and the TOMA's lock recovery must agree on it.
 */
import type { SetTopology } from "./types.ts";

/** The read leg of a unit: in Normal it alternates between the RWL legs, else the first RWL leg. */
export function readLeg(t: SetTopology, unit: number): number {
  const rwl = t.legs.flatMap((r, i) => (r === "RWL" ? [i] : []));
  return t.interleaved ? rwl[unit % rwl.length]! : rwl[0]!;
}

/** The legs a write locks, in order: the read leg in Normal, else every L leg in leg order. */
export function lockLegsOf(t: SetTopology, unit: number): number[] {
  if (t.interleaved) return [readLeg(t, unit)];
  return t.legs.flatMap((r, i) => (r === "RWL" || r === "WL" ? [i] : []));
}
