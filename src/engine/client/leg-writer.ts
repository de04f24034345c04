/**
 * The contract of a write whose bytes are made per piece and per leg, at the moment the piece is
 * planned: what the debug format needs (each mirror copy records its own leg, the topology the
 * piece was planned with, and whether the writer held the lock). VolumeDevice.writeLegs and
 * MirrorIo.writeLegs call it; debug-volume.ts implements it.
 */
import type { SetTopology } from "../layout/types.ts";

/** One piece of a volume write as the volume's data path planned it. */
export interface LegPiece {
  /** Offset and length of the piece within the write (bytes of the volume's address space). */
  request_offset: number;
  length: number;
  /** The mirror set's topology the piece was planned with; null for an unmirrored volume. */
  topology: SetTopology | null;
  /** The volume's topology generation the piece was planned with. */
  generation: number;
}

/** What goes where for one planned piece (one attempt of it: a retry plans again). */
export interface LegPlan {
  /**
   * The bytes leg `leg` receives at the piece's place; `locked`: every lock the topology
   * prescribes for the piece is held (always false unmirrored). At most `length` bytes: fewer
   * write only a prefix (the evil client's torn write).
   */
  bytes(leg: number, locked: boolean): Uint8Array;
  /** Test-only sabotage (debug-evil.ts): legs (bit mask) that are not written. */
  skip_legs?: number;
  /** Test-only sabotage: write without taking the locks. */
  skip_lock?: boolean;
}

export interface LegWriter {
  /** Called once per attempt of each piece, synchronously when the piece is planned. */
  plan(piece: LegPiece): LegPlan;
}
