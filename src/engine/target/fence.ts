/**
 * Fencing (DESIGN.md §3): the one place where a data-path request's client_id and topology
 * generation are checked against the drive's registrations, which the drive's TOMA sets with
 * FENCE. A target refuses a request whose client is not registered on that drive, or whose
 * generation is older than the client's min_generation there, so a client working from a stale
 * topology can never write where the current topology does not expect it.
 *
 * By the role the connection is served as (capability.ts: with a cluster key, the one the key it
 * proved gives): "toma" is the authority and is never fenced; "admin" may not
 * send data-path requests at all; "client" is checked when enforcement is on.
 *
 * Registrations live in RAM only: after a target restart (or the drive being unplugged and
 * plugged) every client is refused until its TOMA sends FENCE again.
 *
 * With enforcement on, FENCE is answered only once every client request that was admitted
 * before it and that its new table refuses has finished on the drive (AdmittedRequests); such
 * requests still waiting for a lock are failed REFUSED at once, holding nothing.
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

/** Whether the drive's table refuses a client request of this generation. */
export function refuses(d: ServedDrive, client_id: number, generation: number): boolean {
  const min = d.registrations.get(client_id);
  return min === undefined || generation < min;
}

/**
 * The client requests executing on one drive, by client id and generation, so that a FENCE can
 * wait for the ones its new table refuses: once FENCE is answered, no request the drive would
 * now refuse is still running there (a stale-lock recovery or a rebuild that follows cannot be
 * overtaken by a write of a fenced-out client that was admitted just before).
 */
export class AdmittedRequests {
  /** client_id → generation → requests executing. */
  private readonly running = new Map<number, Map<number, number>>();
  private waiters: { pairs: [number, number][]; resolve: () => void }[] = [];

  enter(client_id: number, generation: number): void {
    let gens = this.running.get(client_id);
    if (gens === undefined) {
      gens = new Map();
      this.running.set(client_id, gens);
    }
    gens.set(generation, (gens.get(generation) ?? 0) + 1);
  }

  leave(client_id: number, generation: number): void {
    const gens = this.running.get(client_id);
    const n = gens?.get(generation);
    if (gens === undefined || n === undefined) return;
    if (n > 1) {
      gens.set(generation, n - 1);
      return;
    }
    gens.delete(generation);
    if (gens.size === 0) this.running.delete(client_id);
    if (this.waiters.length > 0) this.wake();
  }

  /**
   * Resolves once no request of a (client, generation) that `refused` names, executing now, is
   * still executing; null when there is none. New requests of such a pair are refused by the
   * table already, so the wait ends.
   */
  drain(refused: (client_id: number, generation: number) => boolean): Promise<void> | null {
    const pairs: [number, number][] = [];
    for (const [client_id, gens] of this.running) {
      for (const generation of gens.keys()) if (refused(client_id, generation)) pairs.push([client_id, generation]);
    }
    if (pairs.length === 0) return null;
    return new Promise((resolve) => this.waiters.push({ pairs, resolve }));
  }

  private wake(): void {
    const still: typeof this.waiters = [];
    for (const w of this.waiters) {
      if (w.pairs.some(([c, g]) => this.running.get(c)?.has(g) === true)) still.push(w);
      else w.resolve();
    }
    this.waiters = still;
  }
}
