/**
 * Two mirror legs' copies of one block, compared: are they the same write, which is newer, and
 * when they differ, whose fault it is. Generations and histories decide, never clocks.
 *
 * Which copy is newer (first rule that applies):
 *   | case                                              | newer                              |
 *   | ------------------------------------------------- | ---------------------------------- |
 *   | same write (client, seq, data CRC)                | — (legs agree)                     |
 *   | one leg empty                                     | the other                          |
 *   | X's history holds Y's write                       | X                                  |
 *   | neither history holds the other (diverged):       |                                    |
 *   |   same verify worker                              | higher step (the pattern's order)  |
 *   |   different generations                           | higher generation                  |
 *   |   same client                                     | higher seq                         |
 *   |   otherwise                                       | undecided                          |
 *
 * What the difference means (N newer, O older or empty, o = O's leg), first rule that applies:
 *   | case                                                      | class            | culprit       |
 *   | --------------------------------------------------------- | ---------------- | ------------- |
 *   | same client and seq, different data                       | legs_differ      | that client   |
 *   | diverged, generations differ                              | stale_generation | lower gen.    |
 *   | N's generation below O's                                  | stale_generation | N's writer    |
 *   | diverged, no order                                        | legs_differ      | —             |
 *   | N targeted leg o                                          | write_hole       | N's writer    |
 *   | N left o out, its topology state degraded                 | legs_differ      | — (rebuild)   |
 *   | N left o out in any other state (normal, rebuild, ...)    | skipped_leg      | N's writer    |
 */
import { type DebugSector, hex, legsText } from "./sector.ts";
import { headerRecord, historyIndexOf, writeText } from "./timeline.ts";

export type LegVerdictClass = "same" | "write_hole" | "skipped_leg" | "stale_generation" | "legs_differ";

export interface Culprit {
  client_id: number;
  client_name: string;
}

export interface LegVerdict {
  class: LegVerdictClass;
  /** Which side holds the newer write ("a", "b"), or null (same, or undecided). */
  newer: "a" | "b" | null;
  culprit: Culprit | null;
  reason: string;
}

export interface LegCopy {
  /** The decoded copy, or null when that leg's sector is empty. */
  sector: DebugSector | null;
  /** The leg this side is; for an empty side, what the caller knows (or null). */
  leg: number | null;
}

function culpritOf(s: DebugSector): Culprit {
  return { client_id: s.client_id, client_name: s.client_name };
}

function who(s: DebugSector): string {
  return s.client_name ? `client ${s.client_id} (${s.client_name})` : `client ${s.client_id}`;
}

/** Compares the copies of one block (same volume and LBA) on two legs. */
export function compareLegs(a: LegCopy, b: LegCopy): LegVerdict {
  const sa = a.sector;
  const sb = b.sector;
  if (sa === null && sb === null) return { class: "same", newer: null, culprit: null, reason: "both legs empty" };
  if (sa !== null && sb !== null) {
    const ra = headerRecord(sa);
    const rb = headerRecord(sb);
    if (ra.client_id === rb.client_id && ra.seq === rb.seq && ra.data_crc === rb.data_crc) {
      return { class: "same", newer: null, culprit: null, reason: "same write on both legs" };
    }
    if (ra.client_id === rb.client_id && ra.seq === rb.seq) {
      return {
        class: "legs_differ",
        newer: null,
        culprit: culpritOf(sa),
        reason: `${who(sa)} wrote different data to the legs under one seq ${sa.seq} (data checksum ${hex(sa.data_crc)} on leg ${sa.leg_index}, ${hex(sb.data_crc)} on leg ${sb.leg_index})`,
      };
    }
    // A rebuild copies raw sectors leg to leg, so a copy may name the leg it was copied from. In a
    // two-leg mirror the other side is then the other leg; with more legs nobody can tell which.
    if (sa.leg_index === sb.leg_index && (sa.leg_count !== 2 || sb.leg_count !== 2)) {
      return {
        class: "legs_differ",
        newer: null,
        culprit: null,
        reason: `both copies say they are leg ${sa.leg_index} (one was copied by a rebuild, or they are not legs of one mirror), and with ${sa.leg_count} legs which leg the other is cannot be told: ${writeText(ra)} against ${writeText(rb)}`,
      };
    }
    const aHasB = historyIndexOf(sa, rb) >= 0;
    const bHasA = historyIndexOf(sb, ra) >= 0;
    if (aHasB && !bHasA) return explained("a", a, b);
    if (bHasA && !aHasB) return explained("b", b, a);
    return diverged(a, b);
  }
  return sa !== null ? explained("a", a, b) : explained("b", b, a);
}

/** N is newer than O (or O is empty): say what the difference means. */
function explained(side: "a" | "b", n: LegCopy, o: LegCopy): LegVerdict {
  const N = n.sector!;
  const O = o.sector;
  if (O !== null && N.generation < O.generation) {
    return {
      class: "stale_generation",
      newer: side,
      culprit: culpritOf(N),
      reason: `${who(N)} wrote seq ${N.seq} with topology generation ${N.generation} while the other leg's record shows ${O.generation} (${who(O)} seq ${O.seq})`,
    };
  }
  return byMask(side, N, O, legOf(N, O, o), copiedNote(N, O));
}

/** The leg of the older (or empty) side: its record's, unless both name one leg (a rebuild's copy). */
function legOf(N: DebugSector, O: DebugSector | null, o: LegCopy): number | null {
  if (O !== null && O.leg_index !== N.leg_index) return O.leg_index;
  return o.leg ?? otherLeg(N);
}

function copiedNote(N: DebugSector, O: DebugSector | null): string {
  return O !== null && O.leg_index === N.leg_index ? `one copy was made by a rebuild (both say leg ${N.leg_index}): ` : "";
}

function otherLeg(N: DebugSector): number | null {
  return N.leg_count === 2 ? 1 - N.leg_index : null;
}

function byMask(side: "a" | "b", N: DebugSector, O: DebugSector | null, oLeg: number | null, prefix: string): LegVerdict {
  const older = O === null ? "is empty" : `still holds the older write (${writeText(headerRecord(O))})`;
  if (oLeg === null) {
    return { class: "legs_differ", newer: side, culprit: null, reason: `${prefix}the other leg ${older}; ${who(N)} seq ${N.seq} is newer (leg unknown, cannot tell a hole from a skip)` };
  }
  if ((N.legs_mask & (1 << oLeg)) !== 0) {
    return {
      class: "write_hole",
      newer: side,
      culprit: culpritOf(N),
      reason: `${prefix}write hole: ${who(N)} seq ${N.seq} targeted legs ${legsText(N.legs_mask)} but leg ${oLeg} ${older}: the write to leg ${oLeg} was lost or interrupted`,
    };
  }
  if (N.topo_state === "degraded") {
    return {
      class: "legs_differ",
      newer: side,
      culprit: null,
      reason: `${prefix}leg ${oLeg} was out of the topology (degraded, generation ${N.generation}) when ${who(N)} wrote seq ${N.seq}; it ${older} and awaits rebuild`,
    };
  }
  return {
    class: "skipped_leg",
    newer: side,
    culprit: culpritOf(N),
    reason: `${prefix}${who(N)} skipped leg ${oLeg}: seq ${N.seq} targeted only legs ${legsText(N.legs_mask)} in topology state ${N.topo_state} (generation ${N.generation}); leg ${oLeg} ${older}`,
  };
}

/** Neither leg's history holds the other's write. */
function diverged(a: LegCopy, b: LegCopy): LegVerdict {
  const A = a.sector!;
  const B = b.sector!;
  const prefix = "diverged (neither history holds the other's write): ";
  if (A.generation !== B.generation) {
    const [low, high, side] = A.generation < B.generation ? [A, B, "b" as const] : [B, A, "a" as const];
    return {
      class: "stale_generation",
      newer: side,
      culprit: culpritOf(low),
      reason: `${prefix}${who(low)} wrote seq ${low.seq} with topology generation ${low.generation} while the other leg's record shows ${high.generation} (${who(high)} seq ${high.seq})`,
    };
  }
  let newer: "a" | "b" | null = null;
  if (A.pattern && B.pattern && A.pattern.seed_id === B.pattern.seed_id && A.pattern.worker === B.pattern.worker && A.pattern.step !== B.pattern.step) {
    newer = A.pattern.step > B.pattern.step ? "a" : "b";
  } else if (A.client_id === B.client_id && A.seq !== B.seq) {
    newer = A.seq > B.seq ? "a" : "b";
  }
  if (newer === null) {
    return {
      class: "legs_differ",
      newer: null,
      culprit: null,
      reason: `${prefix}leg ${A.leg_index} has ${writeText(headerRecord(A))}, leg ${B.leg_index} has ${writeText(headerRecord(B))}`,
    };
  }
  const [n, o] = newer === "a" ? [a, b] : [b, a];
  return byMask(newer, n.sector!, o.sector, legOf(n.sector!, o.sector, o), prefix + copiedNote(n.sector!, o.sector));
}
