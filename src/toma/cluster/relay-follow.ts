/**
 * A client daemon's relayed call follows the leader (client-relay.ts relays it; this wraps the
 * transport it relays with). A call relayed to a leader whose server was then cut off gets no
 * answer: left alone it would wait for the transport's whole timeout (8 s), answer the daemon
 * 503, and the daemon would leave its home for the next TOMA it knows, which may be the one cut
 * off (10 s more) — all the while the new leader, elected within about 2 s, waits for that
 * daemon's acknowledgement before it may take the dead leg out (the stable-generation rule): in a
 * soak this was a 19 s stall of every write.
 *
 * So while a call is in flight, a change of leader sends it again to the new one at once (the
 * first answer is no longer waited for), and a call the leader could not take (unreachable; 503:
 * just elected, its control not running yet; 421: no longer the leader) is sent again to the
 * leader known then, as long as the call's budget lasts. Every client route but the registration may be sent twice:
 * a watch reads; an acknowledgement, a failure report, an attachment and a leave are idempotent
 * at the leader. A registration is not (each creates a client): it is sent once. Sans-I/O.
 */
import type { Env } from "../../engine/env.ts";
import { sleep } from "../../engine/env.ts";
import { steadyClock } from "../../engine/steady-clock.ts";
import type { Relay } from "./client-relay.ts";

export interface FollowTimings {
  /** How often the leader is looked at while a call is in flight. */
  poll_ms: number;
  /** The whole call, every leader it was sent to included: shorter than a daemon's own call (10 s). */
  budget_ms: number;
  /** Pause before sending again to a leader that could not take the call. */
  retry_ms: number;
}

export const DEFAULT_FOLLOW_TIMINGS: FollowTimings = { poll_ms: 100, budget_ms: 8000, retry_ms: 200 };

/** The leader as this TOMA knows it (TomaNode.leader). */
export type LeaderOf = () => { address: string } | null;

type Outcome = { ok: true; value: unknown } | { ok: false; error: unknown };

/** A registration creates a client at the leader: never sent twice. */
function resendable(method: string, path: string): boolean {
  return !(method.toUpperCase() === "POST" && path.split("?")[0]!.replace(/\/+$/, "") === "/v1/clients");
}

/**
 * Whether the TOMA at that address could not take the call, so that another try may succeed:
 * unreachable, 503 (just elected), or 421 (no longer the leader: it names the one it knows).
 */
function notTaken(error: unknown): boolean {
  const status = (error as { status?: unknown }).status;
  return typeof status !== "number" || status === 0 || status === 503 || status === 421;
}

/** The leader a 421 names, if any. */
function named(error: unknown): string | null {
  const leader = (error as { leader?: unknown } | null)?.leader;
  return typeof leader === "string" && leader !== "" ? leader : null;
}

export function followLeader(env: Env, leaderOf: LeaderOf, relay: Relay, t: FollowTimings = DEFAULT_FOLLOW_TIMINGS): Relay {
  // A clock that jumps (NTP) must neither end a call at once nor keep it forever.
  const clock = steadyClock(env.clock);
  return async (address, method, path, body) => {
    if (!resendable(method, path)) return await relay(address, method, path, body);
    const deadline = clock.now_ms() + t.budget_ms;
    const current = () => leaderOf()?.address || null;
    let at = address;
    let last: unknown = null;
    for (;;) {
      const sent = relay(at, method, path, body).then(
        (value): Outcome => ({ ok: true, value }),
        (error): Outcome => ({ ok: false, error }),
      );
      const lead_then = current();
      // Answered, or the leader changed (the answer of the old one is not waited for), or out of time.
      let out: Outcome | null = null;
      while (out === null) {
        const left = deadline - clock.now_ms();
        if (left <= 0) break;
        const tick = sleep(env, Math.min(t.poll_ms, left)).then(() => null);
        out = await Promise.race([sent, tick]);
        const now = current();
        if (out === null && now !== null && now !== lead_then && now !== at) break;
      }
      if (out?.ok) return out.value;
      if (out !== null) {
        last = out.error;
        if (!notTaken(out.error)) throw out.error;
      }
      if (clock.now_ms() >= deadline) {
        if (last !== null) throw last;
        throw Object.assign(new Error(`no answer from the leader (${at}) within ${t.budget_ms} ms`), { status: 0 });
      }
      // Not taken, or the leader changed: to the leader known now, once there is one.
      if (out !== null) await sleep(env, Math.min(t.retry_ms, Math.max(0, deadline - clock.now_ms())));
      // Where a 421 points; else the leader this TOMA knows, if it changed since the call was sent
      // (this TOMA may learn of a new leader later than the old one does); else the same again.
      const now = current();
      at = (out !== null ? named(out.error) : null) ?? (now !== null && now !== lead_then ? now : at);
    }
  };
}
