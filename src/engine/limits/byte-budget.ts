/**
 * A daemon-wide budget of payload bytes in flight (WRITE data received and not yet written, READ
 * answers allocated and not yet handed to the socket), shared by every connection of a server.
 * Per-connection bounds alone let N connections hold N times as much; this one bounds the sum.
 *
 * Fairness: a request that does not fit waits in arrival order, and nothing overtakes the oldest
 * waiter, so a large request is never starved by a stream of small ones. A connection stops
 * reading while its request waits (it has at most one waiting), so arrival order is a round
 * robin over the connections that want memory: a connection that floods gets its turn like the
 * others, never all of it.
 *
 * A request larger than the whole budget is granted alone, once nothing else is held: the
 * per-request limits of each protocol bound it.
 *
 * Grants are handed out on a microtask, never from inside give(): give() is called from a
 * connection's completion path, and a grant runs another connection's code.
 */

export type Grant = () => void;

export class ByteBudget {
  private used_bytes = 0;
  private waiters: { n: number; grant: Grant }[] = [];
  private head = 0;
  private scheduled = false;

  constructor(readonly capacity_bytes: number) {
    if (!Number.isSafeInteger(capacity_bytes) || capacity_bytes < 1) {
      throw new Error(`a byte budget must be a positive integer, got ${capacity_bytes}`);
    }
  }

  get used(): number {
    return this.used_bytes;
  }

  /** Requests waiting for their bytes. */
  get waiting(): number {
    return this.waiters.length - this.head;
  }

  /**
   * Takes n bytes now and returns true, or queues the request and returns false: `grant` then runs
   * once, later, with the n bytes already taken. cancel(grant) withdraws a queued request.
   */
  take(n: number, grant: Grant): boolean {
    if (n < 0 || !Number.isSafeInteger(n)) throw new Error(`invariant: budget take of ${n} bytes`);
    if (this.waiting === 0 && this.fits(n)) {
      this.used_bytes += n;
      return true;
    }
    this.waiters.push({ n, grant });
    return false;
  }

  /**
   * Counts n bytes that are held already and cannot wait (a request that parked, gave its bytes
   * back, and runs again), even beyond the capacity: later take()s wait until it is given back.
   */
  force(n: number): void {
    if (n < 0 || !Number.isSafeInteger(n)) throw new Error(`invariant: budget force of ${n} bytes`);
    this.used_bytes += n;
  }

  /** Withdraws a queued request (its connection ended). False if it was not queued (granted already). */
  cancel(grant: Grant): boolean {
    for (let i = this.head; i < this.waiters.length; i++) {
      if (this.waiters[i]!.grant === grant) {
        this.waiters.splice(i, 1);
        this.schedule(); // the head may have changed
        return true;
      }
    }
    return false;
  }

  give(n: number): void {
    this.used_bytes -= n;
    if (this.used_bytes < 0 || n < 0) throw new Error(`invariant: budget gave back ${n} bytes, now ${this.used_bytes} used`);
    if (this.waiting > 0) this.schedule();
  }

  private fits(n: number): boolean {
    return this.used_bytes + n <= this.capacity_bytes || this.used_bytes === 0;
  }

  private schedule(): void {
    if (this.scheduled || this.waiting === 0) return;
    this.scheduled = true;
    queueMicrotask(() => this.wake());
  }

  private wake(): void {
    this.scheduled = false;
    const granted: Grant[] = [];
    while (this.head < this.waiters.length && this.fits(this.waiters[this.head]!.n)) {
      const w = this.waiters[this.head]!;
      this.waiters[this.head++] = undefined as unknown as { n: number; grant: Grant };
      this.used_bytes += w.n;
      granted.push(w.grant);
    }
    if (this.head === this.waiters.length) {
      this.waiters = [];
      this.head = 0;
    } else if (this.head >= 1024) {
      this.waiters = this.waiters.slice(this.head);
      this.head = 0;
    }
    for (const g of granted) g();
  }
}
