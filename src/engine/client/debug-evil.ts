/**
 * TEST-ONLY "evil client" switches: a client daemon started with one of them corrupts its own
 * writes to a debug-format volume in one precise way, so that the tests can prove that forensics
 * finds each kind of corruption and names this client and the reason. `client serve` turns one on
 * from NVMESH_EVIL only when NVMESH_TEST_EVIL=1 is set too (src/cmd/client.ts), and says so loudly.
 *
 *   | switch           | what the client does to every `every`-th write I/O                        |
 *   | ---------------- | ------------------------------------------------------------------------- |
 *   | legs-differ      | sends different data to leg 1+ than to leg 0, under one seq (mirrors)     |
 *   | skip-leg         | does not send the write to the last leg; its header says so (mirrors)     |
 *   | stale-generation | records the topology generation before the one it runs (header only: the  |
 *   |                  | request itself carries the real one, or the target's fence would refuse)  |
 *   | no-lock          | writes without taking the mirror locks; its header says so (mirrors)      |
 *   | torn             | the last sector of the I/O lands only its first 1024 bytes (data, header) |
 *   | misdirect        | the I/O lands half the volume away from its LBAs                          |
 *
 * Every other header field stays honest: forensics must find the corruption from what the client
 * did, not from a confession.
 */

export const EVIL_KINDS = ["legs-differ", "skip-leg", "stale-generation", "no-lock", "torn", "misdirect"] as const;
export type EvilKind = (typeof EVIL_KINDS)[number];

export interface EvilSwitch {
  kind: EvilKind;
  /** Sabotage every n-th write I/O of the volume (1: every one). */
  every: number;
}

/** What the debug volume does differently for one write (debug-volume.ts applies it). */
export interface Sabotage {
  /** Legs 1+ receive data that differs from leg 0's (one byte per sector). */
  alter_other_legs?: true;
  skip_last_leg?: true;
  /** Subtracted from the topology generation recorded in the headers. */
  generation_lag?: number;
  skip_lock?: true;
  tear_last_sector?: true;
  /** The I/O lands half the volume further on (modulo the volume), its headers unchanged. */
  misdirect_by_half?: true;
}

/** "skip-leg" or "skip-leg:every=3" → the switch, or why it is not one. */
export function parseEvil(text: string): EvilSwitch | string {
  const [kind, ...opts] = text.trim().split(":");
  if (!EVIL_KINDS.includes(kind as EvilKind)) return `unknown evil switch '${kind}': one of ${EVIL_KINDS.join(", ")}`;
  let every = 1;
  for (const o of opts) {
    const m = /^every=(\d{1,9})$/.exec(o);
    if (!m || Number(m[1]) < 1) return `bad evil option '${o}': every=N with N ≥ 1`;
    every = Number(m[1]);
  }
  return { kind: kind as EvilKind, every };
}

/** Decides, write by write, which writes are sabotaged and how. One per attached volume. */
export class EvilSchedule {
  private writes = 0;

  constructor(readonly sw: EvilSwitch) {}

  /** The sabotage of the next write I/O, or null for an honest one. */
  next(): Sabotage | null {
    this.writes++;
    if (this.writes % this.sw.every !== 0) return null;
    switch (this.sw.kind) {
      case "legs-differ":
        return { alter_other_legs: true };
      case "skip-leg":
        return { skip_last_leg: true };
      case "stale-generation":
        return { generation_lag: 1 };
      case "no-lock":
        return { skip_lock: true };
      case "torn":
        return { tear_last_sector: true };
      case "misdirect":
        return { misdirect_by_half: true };
    }
  }

  /** Switches that mean nothing without mirror legs. */
  needsMirror(): boolean {
    return this.sw.kind === "legs-differ" || this.sw.kind === "skip-leg" || this.sw.kind === "no-lock";
  }
}
