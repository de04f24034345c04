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

  /** Settles (never rejects) once every step given so far has settled. */
  async idle(): Promise<void> {
    await this.tail;
  }
}
