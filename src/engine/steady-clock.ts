/**
 * A clock that never runs backward. Env clocks are local and may jump (the design's failure model;
 * the simulator jumps them by up to an hour either way). A backward jump read raw would make every
 * "silent for longer than T" test false until the clock caught up again: a dead client would hold
 * the cluster back for that long. Read through this, a backward jump counts as no time passing; a
 * forward jump stays, which only makes us suspect sooner, and suspicion is all local time decides.
 */
import type { Clock, Env } from "./env.ts";

/**
 * A clock read through steadyClock: it never runs backward. The mark is a real property, so that
 * what must read a steady clock (ListeningClock) can check it when it starts, not only the
 * compiler: only steadyClock makes one.
 */
export interface SteadyClock extends Clock {
  readonly steady: true;
}

export function steadyClock(clock: Clock): SteadyClock {
  let last = -Infinity;
  let offset = 0;
  return {
    steady: true,
    now_ms() {
      const t = clock.now_ms() + offset;
      if (t < last) {
        offset += last - t;
        return last;
      }
      last = t;
      return t;
    },
  };
}

/** The same environment, its clock read through steadyClock. */
export function withSteadyClock(env: Env): Env & { clock: SteadyClock } {
  return { ...env, clock: steadyClock(env.clock) };
}
