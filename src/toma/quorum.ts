/**
 * Deciding a commit from the drives' answers as they come: a write of the cluster state is sent
 * to several drives at once, and its outcome is known as soon as every drive list it must reach
 * has a majority of acknowledgements (committed), or some list can no longer get one (refused).
 * The drives that have not answered by then are not waited for. Plain promise logic, no I/O.
 */
import { majority } from "./cluster-state.ts";

export interface QuorumOutcome {
  /** A majority of every non-empty list acknowledged. */
  ok: boolean;
  /** The drives that had acknowledged when the outcome was decided. */
  acks: Set<string>;
  /** The drives whose write had failed (refused, timed out, not sent) when it was decided. */
  failed: Set<string>;
  /** Writes still unanswered when the outcome was decided (they go on: stragglers). */
  pending: number;
}

/**
 * Resolves once `writes` (drive uuid → resolves true when the drive acknowledged, false or a
 * rejection when it did not) decide the outcome for `lists`. A drive of a list with no write in
 * `writes` counts as not acknowledging. An empty list (a cluster with no drives yet) needs nothing.
 */
export function awaitQuorum(writes: ReadonlyMap<string, Promise<boolean>>, lists: readonly (readonly string[])[]): Promise<QuorumOutcome> {
  const acks = new Set<string>();
  const failed = new Set<string>();
  let pending = writes.size;
  return new Promise((resolve) => {
    let decided = false;
    const decide = () => {
      if (decided) return;
      const counts = lists.map((list) => ({
        need: list.length === 0 ? 0 : majority(list.length),
        acked: list.filter((u) => acks.has(u)).length,
        // What may still acknowledge: the acks so far and the writes not answered yet.
        possible: list.filter((u) => writes.has(u) && !failed.has(u)).length,
      }));
      const lost = counts.some((c) => c.possible < c.need);
      const won = counts.every((c) => c.acked >= c.need);
      if (!lost && !won) return;
      decided = true;
      resolve({ ok: won && !lost, acks: new Set(acks), failed: new Set(failed), pending });
    };
    for (const [uuid, w] of writes) {
      const settle = (ok: boolean) => {
        pending--;
        (ok ? acks : failed).add(uuid);
        decide();
      };
      w.then(settle, () => settle(false));
    }
    // Nothing to wait for (no writes, or lists already decided by who is missing from `writes`).
    decide();
  });
}
