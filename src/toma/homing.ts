/**
 * A client daemon's home among the TOMAs: the management calls it makes go to one TOMA, its home,
 * which in a TOMA cluster is the leader (the leader's mirror control serves the client daemons:
 * cluster/leader-control.ts). A follower answers 421 naming the leader: the call goes there, and
 * it is the new home. A home that does not answer, or has no leader to name (503), is left for the
 * next known TOMA. The known TOMAs are the addresses given, and every TOMA a cluster member lists
 * in its consensus view (learned once a TOMA answered, and again after each change of home), so
 * one address is enough to find the others when it dies.
 *
 * Each call tries every known TOMA at most once, with a short pause once all failed, and then
 * fails with the last error: the daemon's own loops retry, and its I/O does not wait on them.
 */
import type { MgmtCall } from "../engine/client/toma-link.ts";
import type { Env } from "../engine/env.ts";
import { sleep } from "../engine/env.ts";
import { TomaApiError, type TomaClient } from "./api-client.ts";

/** How many 421 hops one call follows (leadership may move while it asks). */
const MAX_HOPS = 4;

export interface Homing {
  call: MgmtCall;
  /** The TOMA calls go to now. */
  home(): string;
  /** Every TOMA known. */
  known(): string[];
}

export function homedCall(env: Env, addresses: readonly string[], clientOf: (address: string) => TomaClient): Homing {
  if (addresses.length === 0) throw new Error("homedCall needs at least one TOMA address");
  const known = [...new Set(addresses)];
  let home = known[0]!;
  let learned_for: string | null = null;

  const learn = async (address: string) => {
    learned_for = address;
    try {
      const c = await clientOf(address).cluster();
      for (const p of c.consensus?.peers ?? []) if (p.address !== "" && !known.includes(p.address)) known.push(p.address);
      const self = c.consensus?.address;
      if (self && !known.includes(self)) known.push(self);
    } catch {
      learned_for = null; // asked again after the next success
    }
  };

  const moveTo = (address: string) => {
    if (!known.includes(address)) known.push(address);
    if (address !== home) env.log.info("client daemon homed on another TOMA", { from: home, to: address });
    home = address;
  };

  const call: MgmtCall = async (method, path, body) => {
    let last: unknown = null;
    let hops = 0;
    for (let tried = 0; tried < known.length; ) {
      try {
        const out = await clientOf(home).call(method, path, body);
        if (learned_for !== home) void learn(home);
        return out;
      } catch (e) {
        last = e;
        if (!(e instanceof TomaApiError)) throw e;
        if (e.status === 421 && e.leader && hops < MAX_HOPS) {
          hops++;
          moveTo(e.leader);
          continue;
        }
        if (e.status !== 0 && e.status !== 503 && e.status !== 421) throw e;
        // Unreachable, no leader there, or hops exhausted: the next known TOMA.
        tried++;
        moveTo(known[(known.indexOf(home) + 1) % known.length]!);
      }
    }
    await sleep(env, 200);
    throw last;
  };

  return { call, home: () => home, known: () => [...known] };
}
