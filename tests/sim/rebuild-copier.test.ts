/**
 * Who copies a rebuilding leg in a TOMA cluster (docs/toma-cluster.md, "Who copies a rebuilding
 * leg"), in the simulator with a RAID1 volume written by the clients:
 * - a leg's server (not the leader's) crashes and comes back: the leader hands the copy to that
 *   server's own TOMA, which copies it; Normal again, legs equal;
 * - that server's TOMA dies once it was handed the copy, its target living on: the leader takes
 *   the order back as silent, the leg goes out and back, and the leader copies it itself; Normal
 *   again, legs equal (the run's own checks).
 */
import { describe, expect, setDefaultTimeout, test } from "bun:test";
import type { ServerSim, SimCluster } from "../../sim/cluster.ts";
import type { RunResult } from "../../sim/run.ts";
import { boot, inCluster, leaderServer, legServer, mirror, scenario, steps, when } from "./scenario-kit.ts";

setDefaultTimeout(180_000);

/** Trace lines of one node whose message matches. */
const lines = (r: RunResult, node: string, msg: RegExp) => r.full_trace.filter((l) => l.trim().split(/\s+/)[1] === node && msg.test(l));

/** Crashes the server of a leg that is not the leader's, and boots it again 1.5 s later; answers it. */
function crashLegServer(c: SimCluster, then: (s: ServerSim) => void = () => {}): { server: ServerSim | null } {
  const out: { server: ServerSim | null } = { server: null };
  when(c, 3000, () => leaderServer(c) !== undefined && mirror(c) !== undefined && mirror(c)!.legs.every((l) => l === "ok"), () => {
    const lead = leaderServer(c)!;
    const column = legServer(c, 0) !== lead ? 0 : 1;
    const s = legServer(c, column);
    out.server = s;
    c.crashServer(s, "process");
    c.world.after(1500, () => {
      boot(c, s);
      then(s);
    });
  });
  return out;
}

describe("rebuild copies in a TOMA cluster", () => {
  test("a leg's server crashes and comes back: its own TOMA copies the leg on the leader's order", async () => {
    let crashed: { server: ServerSim | null } = { server: null };
    const r = await scenario((c) => {
      crashed = crashLegServer(c);
    }, inCluster(30_000));
    const name = crashed.server!.name;
    expect(steps(r).at(-1)).toBe("ok,ok");
    const handed = r.full_trace.filter((l) => l.includes("rebuild handed to the TOMA serving the leg's drive") && l.includes(`server=${name}`));
    expect(handed.length).toBeGreaterThanOrEqual(1);
    expect(lines(r, name, /rebuild copy done for the leader/).length).toBeGreaterThanOrEqual(1);
    expect(r.full_trace.some((l) => l.includes("rebuild copied by the TOMA serving the leg's drive") && l.includes(`server=${name}`))).toBe(true);
    // The leader did not copy that leg itself.
    expect(r.full_trace.filter((l) => / rebuild started volume=mirror/.test(l))).toEqual([]);
  });

  test("the TOMA handed the copy dies, its target living on: the leader takes the order back and copies the leg itself", async () => {
    let victim = "";
    let stopped_at = -1;
    const r = await scenario((c) => {
      crashLegServer(c, (s) => {
        victim = s.name;
        // Once the leader has handed this server the copy, its TOMA dies (the target stays).
        const ordered = () => (leaderServer(c)?.member?.control.active()?.delegation.ordersFor(s.name).length ?? 0) > 0;
        const poll = () => {
          if (!ordered() || s.member === null) return void c.world.after(1, poll);
          stopped_at = c.world.now;
          s.member.stop();
        };
        poll();
      });
    }, inCluster(40_000));
    expect(stopped_at).toBeGreaterThan(0);
    const at = (l: string | undefined) => (l === undefined ? NaN : Number(l.trim().split(/\s+/)[0]));
    const taken = r.full_trace.find((l) => l.includes("the TOMA copying a rebuilding leg is silent"));
    const normal = r.full_trace.filter((l) => l.includes("topology step volume=mirror") && l.endsWith("legs=ok,ok")).at(-1);
    console.log(`TOMA of ${victim} stopped at ${stopped_at.toFixed(0)} ms; order taken back ${(at(taken) - stopped_at).toFixed(0)} ms later; Normal ${(at(normal) - stopped_at).toFixed(0)} ms later; steps ${steps(r).join(" → ")}`);
    expect(steps(r).at(-1)).toBe("ok,ok");
    const silent = r.full_trace.filter((l) => l.includes("the TOMA copying a rebuilding leg is silent") && l.includes(`server=${victim}`));
    expect(silent.length).toBeGreaterThanOrEqual(1);
    // The leader copied it itself, after taking it back.
    const self = r.full_trace.filter((l) => / rebuild started volume=mirror/.test(l));
    expect(self.length).toBeGreaterThanOrEqual(1);
    expect(r.full_trace.some((l) => / rebuild done volume=mirror/.test(l))).toBe(true);
    expect(lines(r, victim, /rebuild copy done for the leader/)).toEqual([]);
  });
});
