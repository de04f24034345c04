/**
 * When a requester suspects its target is gone: the session's liveness deadline.
 *
 * A connection can die without telling anyone: the target's host loses power (the connection is
 * half-open, and stays so until we send on it), the target process is paused (its kernel still
 * acknowledges our bytes), or the path to it is cut one way. A requester that only waits for
 * answers would wait for ever. So, judged only by this node's own timers and clock (never
 * compared with another machine's):
 *
 *   - requests outstanding and nothing heard for `quiet_ms`: send a PING;
 *   - nothing outstanding and nothing heard for `idle_ms`: send a PING too, so that a half-open
 *     connection is found before the next request needs it;
 *   - a PING sent and nothing at all heard for `deadline_ms` after it: the target is dead, the
 *     session closes, and its requests fail with SessionClosedError (the caller reconnects and
 *     retries, or reports the target it cannot reach);
 *   - HELLO (and AUTH) unanswered for `handshake_ms`: the same.
 *
 * The target answers PING at once, ahead of anything queued or executing on the connection
 * (target/connection.ts), so a slow drive, a long write or a lock wait never makes a live target
 * look dead. Anything heard counts, not only the PING's answer.
 *
 * What it cannot tell apart: a target that stopped reading this connection (every one of its
 * in-flight slots, or the target-wide payload budget, held by requests its drive does not finish)
 * and a paused one. A session never fills a connection's slots or bytes beyond what the target
 * admits without pausing, so this needs a drive that completes nothing for longer than the
 * deadline while other connections hold the whole budget; the session then closes and retries,
 * which costs time, not data.
 *
 * Judged on a clock that stands still while this process does not run (../listening-clock.ts):
 * a requester stopped for 10 s finds, on waking, its check due before the answers waiting in its
 * sockets, and would otherwise give up every target it had a PING out to.
 *
 * Sans-I/O: the timer and the clock come from the injected Env.
 */
import type { Env, TimerHandle } from "../env.ts";
import { LISTEN_SLACK_MS, ListeningClock } from "../listening-clock.ts";
import { steadyClock } from "../steady-clock.ts";

export interface LivenessOptions {
  /** Requests outstanding and nothing heard for this long: probe. */
  quiet_ms: number;
  /** Nothing outstanding and nothing heard for this long: probe; 0: never while idle. */
  idle_ms: number;
  /** A probe sent and nothing heard for this long after it: dead. */
  deadline_ms: number;
  /** HELLO (and AUTH) unanswered for this long: dead. */
  handshake_ms: number;
}

/**
 * A target that stopped answering is given up within quiet_ms + deadline_ms (+ one check period,
 * a quarter of the smaller): 5.5 s at most. A few seconds: long against a loaded target's answer
 * to a PING (it waits for no drive), short against a mirror's writers waiting on a dead leg.
 */
export const DEFAULT_LIVENESS: LivenessOptions = {
  quiet_ms: 2000,
  idle_ms: 10_000,
  deadline_ms: 3000,
  handshake_ms: 10_000,
};

export interface LivenessHooks {
  /** Requests are outstanding (a PING alone is not). */
  busy(): boolean;
  /** The handshake is done: a PING may be sent. */
  ready(): boolean;
  /** Send a PING (ignored while one is still on the wire). */
  probe(): void;
  /** Give the target up. */
  dead(why: string): void;
}

export class Liveness {
  private readonly clock: ListeningClock;
  private readonly timer: TimerHandle;
  private readonly started: number;
  private lastHeard: number;
  /** When the current probe went out; -1: none outstanding. */
  private probeSentAt = -1;
  /** Set per frame received (no clock read per frame); folded into lastHeard at the next check. */
  private heardSinceCheck = false;
  private stopped = false;

  constructor(
    env: Env,
    private readonly opts: LivenessOptions,
    private readonly hooks: LivenessHooks,
  ) {
    for (const [k, v] of Object.entries(opts)) {
      if (!Number.isFinite(v) || v < 0 || (v === 0 && k !== "idle_ms")) throw new RangeError(`liveness ${k} must be positive, got ${v}`);
    }
    const period = Math.max(10, Math.min(opts.quiet_ms, opts.deadline_ms) / 4);
    this.clock = new ListeningClock(steadyClock(env.clock), period, LISTEN_SLACK_MS);
    this.clock.tick();
    this.started = this.lastHeard = this.clock.now_ms();
    this.timer = env.timers.every(period, () => this.check());
  }

  /** A frame arrived from the target. */
  heard(): void {
    this.heardSinceCheck = true;
  }

  stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    this.timer.cancel();
  }

  private check(): void {
    if (this.stopped) return;
    this.clock.tick();
    const now = this.clock.now_ms();
    if (this.heardSinceCheck) {
      this.heardSinceCheck = false;
      this.lastHeard = now;
      this.probeSentAt = -1;
    }
    if (!this.hooks.ready()) {
      if (now - this.started >= this.opts.handshake_ms) {
        this.hooks.dead(`no answer to HELLO within ${this.opts.handshake_ms} ms`);
      }
      return;
    }
    if (this.probeSentAt >= 0) {
      if (now - this.probeSentAt >= this.opts.deadline_ms) {
        this.hooks.dead(`target answered nothing for ${Math.round(now - this.lastHeard)} ms, a PING included (deadline ${this.opts.deadline_ms} ms)`);
      }
      return;
    }
    const limit = this.hooks.busy() ? this.opts.quiet_ms : this.opts.idle_ms;
    if (limit > 0 && now - this.lastHeard >= limit) {
      this.probeSentAt = now;
      this.hooks.probe();
    }
  }
}
