/**
 * Fencing (DESIGN.md §3): the one place where a data-path request's client_id and topology
 * generation are checked against the drive's registrations, which the drive's TOMA sets with
 * FENCE. A target refuses a request whose client is not registered on that drive, or whose
 * generation is older than the client's min_generation there, so a client working from a stale
 * topology can never write where the current topology does not expect it.
 *
 * By role of the connection's HELLO: "toma" is the authority and is never fenced; "admin" may not
 * send data-path requests at all; "client" is checked when enforcement is on.
 *
 * Registrations live in RAM only: after a target restart (or the drive being unplugged and
 * plugged) every client is refused until its TOMA sends FENCE again.
 */
import type { FenceRequest, HelloRequest } from "../wire/control.ts";
import { MAX_REGISTRATIONS } from "../wire/control.ts";
import { type Header, Op } from "../wire/header.ts";
import type { ServedDrive } from "./drive-table.ts";

export type Role = HelloRequest["role"];

/** Returns null when the request may proceed, or the reason to answer REFUSED. */
export function fenceCheck(d: ServedDrive, h: Header, role: Role, enforce: boolean): string | null {
  if (role === "toma") return null;
  if (role === "admin") return `${Op[h.opcode]} is a data-path request, refused on an admin connection`;
  if (!enforce) return null;
  const min = d.registrations.get(h.client_id);
  if (min === undefined) return `client ${h.client_id} is not registered on drive ${d.drive.info.drive_uuid}`;
  if (h.generation < min) {
    return `generation ${h.generation} is older than ${min}, the minimum for client ${h.client_id} on drive ${d.drive.info.drive_uuid}`;
  }
  return null;
}

/**
 * Applies a FENCE body to the drive's registrations, all or nothing. Returns null, or why the
 * body is refused (INVALID) with the table unchanged.
 */
export function applyFence(d: ServedDrive, body: FenceRequest): string | null {
  const removed = new Set(body.remove);
  for (const r of body.set) {
    if (removed.has(r.client_id)) return `client ${r.client_id} is both set and removed`;
  }
  const next = body.replace ? new Map<number, number>() : new Map(d.registrations);
  for (const r of body.set) {
    const held = next.get(r.client_id);
    // Raise only: a FENCE delayed behind a newer one must not reopen the door to old generations.
    if (held === undefined || r.min_generation > held) next.set(r.client_id, r.min_generation);
  }
  for (const id of removed) next.delete(id);
  if (next.size > MAX_REGISTRATIONS) {
    return `${next.size} registrations on one drive, at most ${MAX_REGISTRATIONS}`;
  }
  d.registrations = next;
  return null;
}
