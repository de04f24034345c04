/**
 * A clock that stands still while this process does not run: "silent for longer than T" must mean
 * that the other side said nothing for T while we were listening. A process (or a whole guest VM)
 * that was stopped for 10 s finds, when it runs again, its timers due and its sockets full: its
 * timers run first, and read raw, every peer looks silent for those 10 s although its words wait
 * unread. The TOMA then expired a client that had kept talking (and, with a leg's target dead, could
 * not fence it out there, so nothing could complete until that target came back).
 *
 * The owner calls `tick()` every `period_ms` from a periodic timer it runs anyway. A tick that comes
 * later than `period_ms + slack_ms` after the previous one means the process did not run for the
 * difference (or the clock jumped forward): that much is taken off every reading from then on, and
 * readings taken before the late tick stand still too. Discounting can only make us suspect later,
 * never sooner; what local time decides here is suspicion only (a suspected client is fenced out,
 * not trusted to stop), so it costs at most a later recovery, never safety.
 *
 * It reads a steady clock (steady-clock.ts), never the raw one, and asserts it: a local clock may
 * jump either way (the simulator jumps them on purpose), and a backward jump read raw would take
 * these readings back as far, so that every silence looked that much shorter until the clock
 * caught up. Only the steady clock's forward jumps reach it, and those it discounts as a stall.
 */
import type { SteadyClock } from "./steady-clock.ts";
import type { Clock } from "./env.ts";

/** A tick this much late is still a running process (a busy event loop, a garbage collection). */
export const LISTEN_SLACK_MS = 1000;

export class ListeningClock implements Clock {
  /** Time taken off: the stalls seen so far. */
  private stalled = 0;
  /** Raw reading at the last tick; NaN until the first (no stall is judged before ticking starts). */
  private last = Number.NaN;

  constructor(
    private readonly clock: SteadyClock,
    private readonly period_ms: number,
    /** Lateness of a tick that is still normal (a busy event loop, a garbage collection). */
    private readonly slack_ms: number,
  ) {
    if (clock.steady !== true) throw new Error("invariant: a ListeningClock reads a steady clock (steadyClock), never a raw one");
  }

  /** Called by the owner's periodic timer, every period_ms. */
  tick(): void {
    const now = this.clock.now_ms();
    if (now < this.last) throw new Error(`invariant: the steady clock under a ListeningClock ran backward (${this.last} → ${now} ms)`);
    this.stalled += this.overdue(now);
    this.last = now;
  }

  /** Stopped ticking (the owner stopped): readings run on with the raw clock again. */
  stop(): void {
    this.last = Number.NaN;
  }

  now_ms(): number {
    const now = this.clock.now_ms();
    return now - this.stalled - this.overdue(now);
  }

  /** How far past its due time (and the slack) the next tick is: time we were not running. */
  private overdue(now: number): number {
    if (Number.isNaN(this.last)) return 0;
    return Math.max(0, now - this.last - this.period_ms - this.slack_ms);
  }
}
