/**
 * Runs async steps one at a time, in the order they were given: each starts once every earlier
 * one has settled. A step's failure is its caller's alone and never stops the steps after it.
 */
export class Serial {
  private tail: Promise<unknown> = Promise.resolve();

  run<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.tail.then(fn, fn);
    this.tail = run.catch(() => undefined);
    return run;
  }

  /**
   * A pass that many events ask for: a call queues a run of it unless one is already waiting for
   * its turn (that run serves this call too, as it starts after it). A run's failure goes to
   * `onError`.
   */
  coalesced(pass: () => Promise<void>, onError: (e: unknown) => void): () => void {
    let waiting = false;
    return () => {
      if (waiting) return;
      waiting = true;
      void this.run(async () => {
        waiting = false;
        await pass();
      }).catch(onError);
    };
  }

  /** Settles (never rejects) once every step given so far has settled. */
  async idle(): Promise<void> {
    await this.tail;
  }
}
