/**
 * Known bugs that tests plant on purpose, to prove that the simulator's checker finds them (a
 * checker that never fails proves nothing). Only the simulator and the tests that prove a checker
 * bites (sim/, tests/sim/, tests/toma/consensus/) set them; all are off in production, and nothing
 * else writes this object.
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
  /** Raft: grant a vote in a term where this node already voted for someone else. */
  raft_vote_twice: false,
  /** Raft: commit what half of the voters hold (a leader of three commits alone). */
  raft_commit_without_majority: false,
  /** Raft: hand a Ready's messages out one persist early (the state they depend on lags one Ready). */
  raft_send_before_persist: false,
  /** Raft: commit an entry of an earlier term by counting replicas (the paper's figure 8). */
  raft_commit_old_term_by_counting: false,
  /** Raft: no CheckQuorum; a leader that lost its majority goes on believing it leads. */
  raft_no_check_quorum: false,
  /** Raft: accept a configuration change before the leader committed an entry of its own term. */
  raft_conf_change_before_own_term: false,
  /** Raft: a leader answers a read at once, without confirming that a majority still follows it. */
  raft_read_without_confirmation: false,
  /** Hard-state record: a new record need only intersect the previous one, not the last complete one. */
  record_intersect_previous_only: false,
};

export type PlantedBug = keyof typeof plantedBugs;

export function isPlantedBug(name: string): name is PlantedBug {
  return Object.hasOwn(plantedBugs, name);
}
