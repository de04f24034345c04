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
 * A TOMA becomes the home only once it answered a call; one that was only tried (or that
 * answered 421, naming the leader) is not, so that the next calls do not queue behind a TOMA
 * nobody reached.
 *
 * Homed elsewhere than the first address (its preferred home: its own server's TOMA), it asks
 * that TOMA every few seconds whether it serves client daemons again (GET /v1/cluster: running,
 * with a leader it can relay to), and goes back once it answered so twice in a row: after a
 * server restart its clients return to it rather than crowd the TOMA they fled to, and one answer
 * from a TOMA still starting (or about to fail again) does not move them. The home changes for
 * the next call only; a call in flight (a held watch) finishes where it went. The registration is
 * replicated, so nothing is registered again.
 */
import type { MgmtCall } from "../engine/client/toma-link.ts";
import type { Env, TimerHandle } from "../engine/env.ts";
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
/** How often a caller homed away from its preferred TOMA asks whether it is back. */
export const HOME_PROBE_MS = 3000;
/** Ready answers in a row before it goes back (one answer may come from a TOMA still settling). */
export const HOME_PROBES_NEEDED = 2;

export interface Homing {
  call: MgmtCall;
  /** The TOMA calls go to now. */
  home(): string;
  /** Every TOMA known. */
  known(): string[];
  /** Stops asking whether the preferred home is back (the caller shuts down). */
  stop(): void;
}

export interface HomingOptions {
  /** Who calls, for the log. */
  who?: string;
  /**
   * Whether to ask TOMAs GET /v1/cluster (default true): to learn the other TOMAs from a home's
   * view, and to go back to the preferred home once it is ready again. Off for a caller that was
   * given every TOMA already and whose `callAt` makes one kind of call only, whatever the method
   * and path (the drive reporter's: it POSTs a report).
   */
  learn_peers?: boolean;
  /**
   * Whether to go back to the preferred home once it is ready again (default: as `learn_peers`).
   * Off where a TOMA other than the leader does not serve client daemons (a simulated cluster
   * without the relay answers them 421): there the preferred home is never where calls are served.
   */
  return_home?: boolean;
}

/**
 * Whether a TOMA's GET /v1/cluster says it serves client daemons now: a single TOMA that is ready;
 * a cluster member running with its state, a leader it can relay to (a follower), or the leader's
 * control running (the leader: its fence version is 0 until then).
 */
export function servesClients(view: unknown): boolean {
  const c = view as Partial<ClusterJson> | null;
  if (c === null || typeof c !== "object" || c.ready !== true) return false;
  const n = c.consensus;
  if (n === undefined) return true;
  if (n.phase !== "running" || n.leader === null || n.leader.address === "") return false;
  return n.role !== "leader" || (typeof c.version === "number" && c.version > 0);
}

export function homedCall(env: Env, addresses: readonly string[], callAt: CallAt, opts: HomingOptions = {}): Homing {
  const who = opts.who ?? "client daemon";
  if (addresses.length === 0) throw new Error("homedCall needs at least one TOMA address");
  const known = [...new Set(addresses)];
  const preferred = known[0]!;
  let home = preferred;
  let learned_for: string | null = null;
  const return_home = opts.return_home ?? opts.learn_peers !== false;
  /** The armed probe of the current chain (null while none is armed, or one is in flight). */
  let probe: TimerHandle | null = null;
  let probe_chain = 0;
  let ready_in_a_row = 0;
  let stopped = false;

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
    if (home === preferred) endProbes();
    else if (return_home && probe === null && !stopped) {
      const chain = ++probe_chain;
      probe = env.timers.after(HOME_PROBE_MS, () => void probeHome(chain));
    }
  };

  const endProbes = () => {
    probe?.cancel();
    probe = null;
    probe_chain++; // a probe still in flight is ignored when it answers
    ready_in_a_row = 0;
  };

  // One probe at a time: the next is armed only once this one answered (or failed).
  const probeHome = async (chain: number) => {
    let ready = false;
    try {
      ready = servesClients(await callAt(preferred, "GET", "/v1/cluster"));
    } catch {
      // Not answering is not ready.
    }
    if (chain !== probe_chain || stopped || home === preferred) return; // ended meanwhile
    ready_in_a_row = ready ? ready_in_a_row + 1 : 0;
    if (ready_in_a_row < HOME_PROBES_NEEDED) {
      probe = env.timers.after(HOME_PROBE_MS, () => void probeHome(chain));
      return;
    }
    endProbes();
    env.log.info(`${who} homed back on ${preferred}`, { from: home, to: preferred });
    home = preferred;
  };

  const call: MgmtCall = async (method, path, body) => {
    let last: unknown = null;
    let hops = 0;
    // The TOMA this attempt goes to. It becomes the home only once it answered: a TOMA tried
    // after the home failed may be as unreachable as the home (the server that was cut off), and
    // the other calls must not follow this one there before it is known to answer.
    let at = home;
    let home_then = home;
    let moved = false;
    for (let tried = 0; tried < known.length; ) {
      try {
        const out = await callAt(at, method, path, body);
        // Answered where the home failed it (or where a 421 pointed): the home is there now. An
        // answer of the home itself moves nothing (the home may have changed while it was held).
        if (moved) moveTo(at);
        if (opts.learn_peers !== false && learned_for !== at) void learn(at);
        return out;
      } catch (e) {
        last = e;
        const { status, leader } = e as Refusal;
        if (typeof status !== "number") throw e;
        if (status === 421 && typeof leader === "string" && leader !== "" && hops < MAX_HOPS) {
          hops++;
          if (!known.includes(leader)) known.push(leader);
          at = leader;
          moved = true;
          continue;
        }
        if (status !== 0 && status !== 503 && status !== 421) {
          // Its own answer (a refusal, 410, ...): it answered, so it serves; the caller decides.
          if (moved) moveTo(at);
          throw e;
        }
        // Unreachable, no leader there, or hops exhausted: the next known TOMA (unless the home
        // changed meanwhile, another call having found one that answers: then that one next).
        tried++;
        at = home !== home_then ? home : known[(known.indexOf(at) + 1) % known.length]!;
        home_then = home;
        moved = true;
      }
    }
    // Several TOMAs, none answering: a breath before the caller's own retry asks them all again.
    if (known.length > 1) await sleep(env, 200);
    throw last;
  };

  const stop = () => {
    stopped = true;
    endProbes();
  };
  return { call, home: () => home, known: () => [...known], stop };
}
