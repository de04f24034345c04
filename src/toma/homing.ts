/**
 * A client daemon's home among the TOMAs: the management calls it makes go to one TOMA, its home,
 * the first address given that answers (its own server's). In a TOMA cluster any TOMA serves it,
 * relaying to the leader (cluster/client-relay.ts). A 421 (a TOMA that has not applied its
 * registration yet, or a volume route on a follower) names the leader: the call goes there, and
 * it is the new home. A home that does not answer, or cannot reach a leader (503), is left for
 * the next known TOMA. The known TOMAs are the addresses given, and every TOMA a cluster member lists
 * in its consensus view (learned once a TOMA answered, and again after each change of home), so
 * one address is enough to find the others when it dies.
 *
 * Each call tries every known TOMA at most once, with a short pause once all failed, and then
 * fails with the last error: the daemon's own loops retry, and its I/O does not wait on them.
 */
import type { MgmtCall } from "../engine/client/toma-link.ts";
import type { Env } from "../engine/env.ts";
import { sleep } from "../engine/env.ts";
import type { ClusterJson } from "./api-types.ts";

/**
 * One management call to the TOMA at `address`. Rejects with an error carrying the HTTP `status`
 * (0: unreachable) and, for 421, the `leader`'s address (api-client.ts TomaApiError; the
 * simulator's management link the same).
 */
export type CallAt = (address: string, method: string, path: string, body?: unknown) => Promise<unknown>;

type Refusal = { status?: unknown; leader?: unknown };

/** How many 421 hops one call follows (leadership may move while it asks). */
const MAX_HOPS = 4;

export interface Homing {
  call: MgmtCall;
  /** The TOMA calls go to now. */
  home(): string;
  /** Every TOMA known. */
  known(): string[];
}

export interface HomingOptions {
  /** Who calls, for the log. */
  who?: string;
  /**
   * Whether to learn the other TOMAs from a home's GET /v1/cluster (default true). Off for a
   * caller that was given every TOMA already and whose `callAt` makes one kind of call only,
   * whatever the method and path (the drive reporter's: it POSTs a report).
   */
  learn_peers?: boolean;
}

export function homedCall(env: Env, addresses: readonly string[], callAt: CallAt, opts: HomingOptions = {}): Homing {
  const who = opts.who ?? "client daemon";
  if (addresses.length === 0) throw new Error("homedCall needs at least one TOMA address");
  const known = [...new Set(addresses)];
  let home = known[0]!;
  let learned_for: string | null = null;

  const learn = async (address: string) => {
    learned_for = address;
    try {
      const c = (await callAt(address, "GET", "/v1/cluster")) as ClusterJson;
      for (const p of c.consensus?.peers ?? []) if (p.address !== "" && !known.includes(p.address)) known.push(p.address);
      const self = c.consensus?.address;
      if (self && !known.includes(self)) known.push(self);
    } catch {
      learned_for = null; // asked again after the next success
    }
  };

  const moveTo = (address: string) => {
    if (!known.includes(address)) known.push(address);
    if (address !== home) env.log.info(`${who} homed on another TOMA`, { from: home, to: address });
    home = address;
  };

  const call: MgmtCall = async (method, path, body) => {
    let last: unknown = null;
    let hops = 0;
    for (let tried = 0; tried < known.length; ) {
      try {
        const out = await callAt(home, method, path, body);
        if (opts.learn_peers !== false && learned_for !== home) void learn(home);
        return out;
      } catch (e) {
        last = e;
        const { status, leader } = e as Refusal;
        if (typeof status !== "number") throw e;
        if (status === 421 && typeof leader === "string" && leader !== "" && hops < MAX_HOPS) {
          hops++;
          moveTo(leader);
          continue;
        }
        if (status !== 0 && status !== 503 && status !== 421) throw e;
        // Unreachable, no leader there, or hops exhausted: the next known TOMA.
        tried++;
        moveTo(known[(known.indexOf(home) + 1) % known.length]!);
      }
    }
    // Several TOMAs, none answering: a breath before the caller's own retry asks them all again.
    if (known.length > 1) await sleep(env, 200);
    throw last;
  };

  return { call, home: () => home, known: () => [...known] };
}
