/**
 * What the soak checks of a TOMA cluster's leadership, from the `cluster status` polls of every
 * TOMA: never two different leaders claiming one term (Raft's election safety, as seen from
 * outside), and the leaders over time, for the log and the summary.
 */

/** One TOMA's answer, reduced to what is checked (null: it did not answer). */
export interface LeaderView {
  /** The server index of the TOMA asked. */
  server: number;
  role: string | null;
  term: number | null;
  /** Its own management address (a leader's claim is about itself). */
  address: string | null;
}

/** Two TOMAs that each claimed to lead in one term. */
export interface LeaderConflict {
  at_ms: number;
  term: number;
  addresses: [string, string];
}

export class LeaderWatch {
  /** The address that claimed each term, as first seen. */
  private readonly claims = new Map<number, string>();
  readonly conflicts: LeaderConflict[] = [];
  /** Each change of the newest leader seen: when, who, which term. */
  readonly changes: { at_ms: number; term: number; address: string }[] = [];
  polls = 0;

  /**
   * Takes one round of polls; returns the leadership changes it shows (for the log). A claim is a
   * TOMA whose role is leader; a TOMA claims only its own leadership, so two addresses claiming one
   * term are two leaders in that term, whenever each was seen.
   */
  observe(at_ms: number, views: readonly (LeaderView | null)[]): string[] {
    this.polls++;
    const lines: string[] = [];
    for (const v of views) {
      if (v === null || v.role !== "leader" || v.term === null || v.address === null) continue;
      const first = this.claims.get(v.term);
      if (first === undefined) this.claims.set(v.term, v.address);
      else if (first !== v.address) {
        if (!this.conflicts.some((c) => c.term === v.term && c.addresses.includes(v.address!))) {
          this.conflicts.push({ at_ms, term: v.term, addresses: [first, v.address] });
          lines.push(`TWO LEADERS in term ${v.term}: ${first} and ${v.address}`);
        }
        continue;
      }
      const last = this.changes.at(-1);
      if (!last || v.term > last.term) {
        this.changes.push({ at_ms, term: v.term, address: v.address });
        lines.push(`leader ${v.address} in term ${v.term}`);
      }
    }
    return lines;
  }

  /** Terms with a leader claim seen. */
  terms(): number {
    return this.claims.size;
  }
}
