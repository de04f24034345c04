/**
 * Known bugs that tests plant on purpose, to prove that the simulator's checker finds them (a
 * checker that never fails proves nothing). Only the simulator (sim/, tests/sim/) sets them; all
 * are off in production, and nothing else writes this object.
 */
export const plantedBugs = {
  /** Target: acknowledge FUA writes and FLUSH without making anything durable. */
  ack_before_durable: false,
  /** Client: acknowledge a write that spans several drives once its first segment is written. */
  skip_segment: false,
  /** Client: never report cached writes a drive may have lost (what the simulator first found). */
  ignore_cache_epoch: false,
  /** Client: a write whose target connection broke counts as written instead of being retried. */
  ack_on_connection_loss: false,
  /** Mirror client: Degraded writes set no dirty bit (the returning leg is never given them). */
  skip_dirty_bit: false,
  /** Mirror client: writes take no lock (concurrent writers may leave the legs different). */
  skip_lock: false,
  /** TOMA: steps a mirror's topology without waiting until every client switched (two apart). */
  non_adjacent_topologies: false,
};

export type PlantedBug = keyof typeof plantedBugs;

export function isPlantedBug(name: string): name is PlantedBug {
  return Object.hasOwn(plantedBugs, name);
}
