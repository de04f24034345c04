/**
 * Mirror topologies (DESIGN.md §3), pure. The persisted leg states of a volume give the roles
 * clients use; `nextLegs` gives the one next step the TOMA may commit, given which drives are
 * reachable now. One step per generation, and the TOMA commits a step only once every client
 * switched to the previous one, so two adjacent topologies may coexist and never two steps apart:
 *
 *   Normal (ok, ok)  →  Degraded (ok, dead)  →  Rebuild (ok, syncing)  →  Dual lock (ok, synced)
 *   →  Normal (ok, ok).   A syncing or synced leg that fails again goes back to dead.
 *
 * Why each step is safe next to its neighbour is written in docs/mirroring.md.
 */
import type { LegRole, SetTopology } from "../engine/layout/types.ts";
import type { LegState, VolumeRecord } from "./cluster-state.ts";

const ROLE: Record<LegState, LegRole> = { ok: "RWL", dead: "DEAD", syncing: "W", synced: "WL" };

export function isMirrored(vol: VolumeRecord): boolean {
  return vol.mirrors > 1;
}

/** The legs (column indices) of mirror set `set`. */
export function setColumns(vol: VolumeRecord, set: number): number[] {
  return Array.from({ length: vol.mirrors }, (_, i) => set * vol.mirrors + i);
}

export function setTopologies(vol: VolumeRecord): SetTopology[] {
  if (!isMirrored(vol)) return [];
  const out: SetTopology[] = [];
  for (let set = 0; set < vol.stripe_width; set++) {
    const legs = setColumns(vol, set).map((c) => vol.legs[c]!);
    out.push({
      legs: legs.map((l) => ROLE[l]),
      interleaved: legs.every((l) => l === "ok"),
      dirty: legs.includes("dead"),
    });
  }
  return out;
}

export type MirrorState = "normal" | "degraded" | "rebuilding" | "dual_lock";

/** What `volume show` says of a mirrored volume. */
export function mirrorState(vol: VolumeRecord): MirrorState {
  if (vol.legs.includes("dead")) return "degraded";
  if (vol.legs.includes("syncing")) return "rebuilding";
  if (vol.legs.includes("synced")) return "dual_lock";
  return "normal";
}

export interface StepInputs {
  /** The leg's drive is served by a reachable target right now. */
  reachable: (column: number) => boolean;
  /** A client or the TOMA found the leg failing since it was last brought back: keep it out. */
  failed: (column: number) => boolean;
  /** Every region of the syncing leg has been copied (rebuild.ts). */
  copied: (column: number) => boolean;
}

/**
 * The next leg states, or null when nothing is to change. Failures are handled first (a leg that
 * cannot be reached goes dead, whatever it was doing); then one leg at a time moves forward.
 */
export function nextLegs(vol: VolumeRecord, inp: StepInputs): VolumeRecord["legs"] | null {
  if (!isMirrored(vol)) return null;
  const legs = [...vol.legs];
  const down = (c: number) => !inp.reachable(c) || inp.failed(c);
  // A set's last ok leg never goes dead: with nothing to fail over to, I/O waits instead.
  let changed = false;
  for (let set = 0; set < vol.stripe_width; set++) {
    for (const c of setColumns(vol, set)) {
      if (legs[c] === "dead" || !down(c)) continue;
      const okLeft = setColumns(vol, set).filter((x) => x !== c && legs[x] === "ok").length;
      if (legs[c] === "ok" && okLeft === 0) continue;
      legs[c] = "dead";
      changed = true;
    }
  }
  if (changed) return legs;
  // Forward moves: one leg per step, so each commit is one adjacent transition.
  for (let c = 0; c < legs.length; c++) {
    if (legs[c] === "synced") return legs.with(c, "ok");
  }
  for (let c = 0; c < legs.length; c++) {
    if (legs[c] === "syncing" && inp.copied(c)) return legs.with(c, "synced");
  }
  for (let c = 0; c < legs.length; c++) {
    if (legs[c] === "dead" && !down(c) && !legs.includes("syncing")) return legs.with(c, "syncing");
  }
  return null;
}
