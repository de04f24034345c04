/**
 * A clock that never runs backward. Env clocks are local and may jump (the design's failure model;
 * the simulator jumps them by up to an hour either way). A backward jump read raw would make every
 * "silent for longer than T" test false until the clock caught up again: a dead client would hold
 * the cluster back for that long. Read through this, a backward jump counts as no time passing; a
 * forward jump stays, which only makes us suspect sooner, and suspicion is all local time decides.
 */
import type { Clock, Env } from "./env.ts";

export function steadyClock(clock: Clock): Clock {
  let last = -Infinity;
  let offset = 0;
  return {
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
export function withSteadyClock(env: Env): Env {
  return { ...env, clock: steadyClock(env.clock) };
}
