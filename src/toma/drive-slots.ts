/**
 * What the TOMA knows about each drive it has seen: where it is served, whose cluster it is in,
 * and what its metadata slot held when last read or written. Plain data, updated by toma.ts.
 */
import type { DriveInfo } from "../engine/wire/control.ts";
import type { ClusterState } from "./cluster-state.ts";

export type SlotKnowledge =
  /** Not read since the drive (re)appeared. */
  | { kind: "unread" }
  /** Generation 0, nothing ever written. */
  | { kind: "empty" }
  | { kind: "valid"; generation: number; state: ClusterState }
  /** Read, but the payload fails decoding or validation: reported, never overwritten. */
  | { kind: "corrupt"; generation: number; error: string }
  /** Known to hold `generation` because this TOMA wrote it and the drive acknowledged. */
  | { kind: "written"; generation: number };

export interface DriveSeen {
  info: DriveInfo;
  /** Address of the target that listed it last; null once no up target lists it. */
  target: string | null;
  slot: SlotKnowledge;
  /** Last error talking to this drive's slot (read/write/claim), for the drives API. */
  error: string | null;
}

/** Generation the drive is known to hold, or null if unknown/corrupt. */
export function knownGeneration(slot: SlotKnowledge): number | null {
  switch (slot.kind) {
    case "empty":
      return 0;
    case "valid":
    case "written":
      return slot.generation;
    default:
      return null;
  }
}

/** A drive whose answer counts towards "heard from": its slot was read and is not corrupt. */
export function heard(slot: SlotKnowledge): boolean {
  return slot.kind === "empty" || slot.kind === "valid" || slot.kind === "written";
}
