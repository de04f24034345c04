/**
 * Fault schedules aimed at the consensus of a TOMA cluster, run on the whole system (real TOMA
 * members, targets and clients over the simulated network; sim/run.ts heals and checks as for every
 * seed). Each is the schedule a known consensus mistake needs to show; the checks that catch it
 * are the product's own invariants (sim/cluster.ts watches them on every TOMA-cluster run):
 * election safety, state machine safety, and, for the one-way cut, the majority side's liveness.
 * tests/sim/planted-bugs.test.ts runs each with its bug planted (the run must fail) and without
 * (the run must be clean).
 */
import type { ClusterSpec, ServerSim, SimCluster } from "../../sim/cluster.ts";
import { quietDriveProfile } from "../../sim/drive.ts";
import { encodeProposal } from "../../src/toma/consensus/proposal.ts";
import { boot, leaderServer, type ScenarioOptions, when } from "./scenario-kit.ts";

const view = (s: ServerSim) => (s.node.alive ? (s.member?.node.view() ?? null) : null);
const names = (ss: ServerSim[]) => ss.map((s) => s.name);

/**
 * Slow drives (every hard-state record is a FUA write: a write, then a flush): 100 ms between a
 * TOMA deciding something and that decision being durable, a window a scripted fault can aim at.
 * With slowDrives the first 50 ms the record is not even in the drive's cache, so a power loss
 * then loses it for certain (a write in the cache may survive one).
 */
function slowDrives(spec: ClusterSpec): void {
  spec.toma_cluster = true;
  spec.drive = { ...quietDriveProfile(), latency_ms: [50, 50], flush_ms: [50, 50] };
}

function slowFlushes(spec: ClusterSpec): void {
  spec.toma_cluster = true;
  spec.drive = { ...quietDriveProfile(), flush_ms: [100, 100] };
}

/**
 * A vote forgotten in a crash. The leader A is cut off from B and C; B stands for the next term
 * and C grants it its vote; 20 ms later, while C's vote is still on its way to C's drives (slowDrives),
 * C's server loses power. C comes back connected to A only, and A and C elect a leader
 * of the lowest term they can. A TOMA that sends its vote only once the vote is durable makes B's
 * election wait for C's record, which never lands: B never leads, and one leader of that term is
 * elected by A and C. A TOMA that sends first (raft_send_before_persist) has made B leader already,
 * and C, having forgotten its vote, votes again in the same term: two leaders in one term.
 */
export const forgottenVote: { script: (c: SimCluster) => void; options: ScenarioOptions } = {
  options: { fault_ms: 15_000, expectErrors: true, tweak: slowDrives },
  script: (c) => {
    when(c, 2000, () => leaderServer(c) !== undefined, () => {
      const a = leaderServer(c)!;
      const term = view(a)!.term!;
      const others = c.servers.filter((s) => s !== a);
      c.net.partition([a.name], names(others));
      when(c, 0, () => others.some((s) => view(s)?.role === "candidate" && view(s)!.term! > term), () => {
        const b = others.find((s) => view(s)?.role === "candidate")!;
        const voter = others.find((s) => s !== b)!;
        const t = view(b)!.term!;
        when(c, 0, () => view(voter)?.term === t, () => {
          c.world.after(20, () => {
            c.world.log("sim", `scenario: ${voter.name} loses power while its vote in term ${t} is on its way to its drives`);
            c.crashServer(voter, "power");
            c.net.heal();
            c.net.partition([b.name], [a.name, voter.name]);
            c.world.after(300, () => boot(c, voter));
          });
        });
      });
    });
  },
};

/**
 * A one-way cut into the leader: no other server reaches the leader A's server for 12 s (A's still
 * reach them). The TOMAs talk by request and answer, so A's requests arrive but their answers do
 * not: A hears from no one, and B and C soon hear nothing from A either. Two promises of a TOMA
 * cluster (docs/toma-cluster.md) are checked 6 s into the cut (six election timeouts):
 * - a leader that hears no majority steps down (CheckQuorum): A no longer says it leads. Clients
 *   are homed on the TOMA that says it leads, and a deposed leader that goes on saying so keeps
 *   them on a TOMA that can commit nothing;
 * - the side with a majority goes on: B or C leads a term above A's, an entry of its term applied.
 * Without CheckQuorum (raft_no_check_quorum) A goes on believing it leads for the whole cut.
 */
export const oneWayCutIntoLeader: { script: (c: SimCluster) => void; options: ScenarioOptions } = {
  options: { fault_ms: 15_000, tweak: (spec) => void (spec.toma_cluster = true) },
  script: (c) => {
    when(c, 2000, () => leaderServer(c) !== undefined, () => {
      const a = leaderServer(c)!;
      const term = view(a)!.term!;
      const others = c.servers.filter((s) => s !== a);
      c.net.partition(names(others), [a.name], { oneWay: "AtoB" });
      c.world.after(6000, () => {
        const says = c.servers.map((s) => `${s.name}: ${view(s)?.role ?? "down"} of term ${view(s)?.term ?? "-"}`).join(", ");
        const cut = `6 s into a one-way cut ${names(others).join(",")}→${a.name} (${says})`;
        if (view(a)?.role === "leader") c.world.fail(`a leader that lost its majority did not step down: ${a.name} still leads term ${view(a)!.term}, ${cut}`);
        else if (!others.some((s) => view(s)?.role === "leader" && view(s)!.term! > term && view(s)!.leader_ready)) {
          c.world.fail(`liveness: the majority side ${names(others).join(",")} has no leader of a term above ${term}, ${cut}`);
        }
      });
      c.world.after(12_000, () => c.net.heal());
    });
  },
};

/**
 * The Raft paper's figure 8 on three TOMAs. The leader A is cut off and appends 70 entries of its
 * term t no one else gets (proposals computed from a stale view, which every TOMA refuses when
 * applying them: the state never changes). B and C elect B in a later term; B is cut off at once,
 * before the entry of its term leaves (slowFlushes: it is first made durable). A and C, connected
 * again, elect A in a term after B's; A brings C up to date, 64 entries per append, the first of
 * them all of term t. As soon as A has C's acknowledgement of those, A→C goes down, so the entry of
 * A's own term never reaches C; a second later (or once A's commit moves) A is cut off and B and C
 * are connected. The term-t entries were on a majority (A, C) but not committed: B, whose last
 * entry's term beats C's, is elected by C and overwrites them. A TOMA that counts replicas of an
 * earlier term's entries (raft_commit_old_term_by_counting) has committed and applied them: two
 * TOMAs apply different entries at one index (state machine safety). A correct one never moved
 * its commit, and nobody applied what B overwrites.
 */
export const figure8: { script: (c: SimCluster) => void; options: ScenarioOptions } = {
  options: { fault_ms: 20_000, tweak: slowFlushes },
  script: (c) => {
    when(c, 2000, () => leaderServer(c) !== undefined && view(leaderServer(c)!)!.leader_ready, () => {
      const a = leaderServer(c)!;
      const t = view(a)!.term!;
      const others = c.servers.filter((s) => s !== a);
      c.net.partition([a.name], names(others));
      const stale = encodeProposal({ computed_at: 0, cmd: { kind: "set_cache_epoch", drive_uuid: c.uuidOf.get(c.media[0]!)!, cache_epoch: 1 } });
      for (let i = 0; i < 70; i++) a.member!.node.propose({ kind: "normal", data: stale }).catch(() => {});
      c.world.log("sim", `scenario: ${a.name}, cut off, leads term ${t} with 70 more entries`);
      when(c, 0, () => others.some((s) => view(s)?.role === "leader"), () => {
        const b = others.find((s) => view(s)?.role === "leader")!;
        const other = others.find((s) => s !== b)!;
        c.world.log("sim", `scenario: ${b.name} leads term ${view(b)!.term}: cut off before its entry leaves`);
        c.net.heal();
        c.net.partition([b.name], [a.name, other.name]);
        when(c, 0, () => view(a)?.role === "leader" && view(a)!.term! > view(b)!.term!, () => {
          const commit = view(a)!.commit!;
          const held = view(other)?.last_index ?? 0;
          c.world.log("sim", `scenario: ${a.name} leads term ${view(a)!.term} at commit ${commit}; ${other.name} holds ${held} entries`);
          // The first append that brings C entries carries only term-t entries (64 at most). As
          // soon as A has C's acknowledgement of them, A→C goes down: A's next appends (its own
          // term's entry) do not reach C (each request between TOMAs needs a fresh connection).
          const node = a.member!.node;
          const matchOfC = () => view(a)?.peers.find((p) => p.address.startsWith(`${other.name}:`))?.match ?? 0;
          node.onAdvance = () => {
            if (matchOfC() <= held) return;
            node.onAdvance = null;
            c.net.setDirection(a.name, other.name, false);
            const since = c.world.now;
            when(c, 0, () => view(a)?.role !== "leader" || view(a)!.commit! > commit || c.world.now - since >= 1000, () => {
              c.world.log("sim", `scenario: ${a.name} at commit ${view(a)?.commit}: cut off; ${b.name} and ${other.name} connected`);
              c.net.heal();
              c.net.partition([a.name], [b.name, other.name]);
            });
          };
        });
      });
    });
  },
};
