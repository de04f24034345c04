/**
 * Mirror scenarios on a quiet network and quiet drives, with a RAID1 volume in the workload: the
 * B-writes-D1 / A-reads-D2 hazard, and a process crash of each party (the TOMA's server, either
 * leg's server, a client) at each step of the return of a leg (Degraded, Rebuild, Dual lock).
 * Each run then heals and passes the full checks of every seed (sim/run.ts): every read correct,
 * nothing failing after healing, every leg byte-equal at the end (sim/leg-check.ts).
 */
import { describe, expect, setDefaultTimeout, test } from "bun:test";
import { type ClusterSpec, MIRROR_VOLUME, type ServerSim, type SimCluster } from "../../sim/cluster.ts";
import { boot, leaderServer, legAwayFromToma, legServer, mirror, scenario, steps, when } from "./scenario-kit.ts";

setDefaultTimeout(120_000);

const withMirror = { fault_ms: 20_000, tweak: (spec: ClusterSpec) => spec.volumes.push(MIRROR_VOLUME) };

/** The column to take out and bring back: a leg not on the TOMA's server. */
const returning = legAwayFromToma;

/**
 * At 2 s into the fault phase, the returning leg's server stops (process crash) and boots again
 * `down_ms` later. Returns the leg's column once chosen (-1 before).
 */
function takeOutReturning(c: SimCluster, down_ms: number): () => number {
  let leg = -1;
  when(c, 2000, () => mirror(c) !== undefined, () => {
    leg = returning(c);
    const s = legServer(c, leg);
    c.crashServer(s, "process");
    c.world.after(down_ms, () => boot(c, s));
  });
  return () => leg;
}


describe("mirror scenarios", () => {
  test("hazard: B cannot reach leg 1 and writes while A, which cannot reach leg 0, reads", async () => {
    const r = await scenario((c) => {
      c.world.after(2000, () => {
        c.net.partition(["c2"], [legServer(c, 1).name]);
        c.net.partition(["c1"], [legServer(c, 0).name]);
      });
      c.world.after(8000, () => c.net.heal());
    }, withMirror);
    // Every read of both clients was right (scenario), and the set is Normal at the end.
    expect(steps(r).at(-1) ?? "ok,ok").toBe("ok,ok");
  });

  // The server of a leg not on the TOMA's server is stopped for 5 s: the volume goes Degraded,
  // then the leg comes back through each step. At each step, one party crashes (process) and
  // restarts 1.5 s later.
  // A server already down (the returning leg's, in Degraded) is booted and crashed again.
  const restart = (c: SimCluster, s: ServerSim) => {
    const down = !s.node.alive;
    if (down) c.bootServer(s);
    c.world.after(down ? 300 : 0, () => {
      c.crashServer(s, "process");
      c.world.after(1500, () => boot(c, s));
    });
  };
  const parties: [string, (c: SimCluster) => void][] = [
    ["the TOMA's server", (c) => restart(c, c.tomaServer)],
    ["the source leg's server", (c) => restart(c, legServer(c, 1 - returning(c)))],
    ["the returning leg's server", (c) => restart(c, legServer(c, returning(c)))],
    [
      "client c1",
      (c) => {
        const k = c.clients[0]!;
        c.crashClient(k);
        c.world.after(1500, () => c.bootClient(k));
      },
    ],
  ];
  const at: [string, string][] = [
    ["Degraded", "dead"],
    ["Rebuild", "syncing"],
    ["Dual lock", "synced"],
  ];
  for (const [step, state] of at) {
    for (const [who, crash] of parties) {
      test(`${who} crashes in ${step}: the leg still comes back, legs equal`, async () => {
        let crashed = false;
        const r = await scenario((c) => {
          const leg = takeOutReturning(c, 5000);
          when(c, 2001, () => leg() >= 0 && mirror(c)?.legs[leg()] === state, () => {
            crashed = true;
            crash(c);
          });
        }, withMirror);
        expect(crashed).toBe(true);
        expect(steps(r).at(-1)).toBe("ok,ok");
      });
    }
  }
});

describe("mirror scenarios: a cache lost on the last complete leg", () => {
  // Leg R's server is down; the source S, the only complete leg, loses its drive cache with
  // regions marked (a power loss of its server, back at once). When R is back, it is rebuilt from
  // S with LOSSY_COPY: R now holds all that S holds. S's cache case is then closed, not held
  // against S: taking S out to copy it back from R would gain nothing, and that copy (from a leg
  // carrying S's loss) would fail the flush of writes both legs hold (simulator seed 180).
  test("the leg every other leg was rebuilt from stays in", async () => {
    const r = await scenario((c) => {
      const leg = takeOutReturning(c, 6000);
      when(c, 4000, () => leg() >= 0 && mirror(c)?.legs[leg()] === "dead", () => {
        const s = legServer(c, 1 - leg());
        c.crashServer(s, "power");
        c.world.after(300, () => c.bootServer(s));
      });
    }, { ...withMirror, expectErrors: true });
    const seen = steps(r);
    const back = seen.indexOf("ok,ok");
    expect(back).toBeGreaterThanOrEqual(0);
    // Once both legs were complete again, neither went out.
    expect(seen.slice(back).filter((s) => s.includes("dead"))).toEqual([]);
  });
});

/**
 * The same with a TOMA on every server: the leader's whole server (its TOMA and its target) is
 * stopped at each step of the return of a leg, and restarted 1.5 s later. The leg taken out is on
 * another server than the first leader's; while it is down, the leader's crash leaves one server
 * of three, so nothing steps until one is back, and then the leg still comes back.
 */
describe("mirror scenarios with a TOMA on every server", () => {
  const inCluster = { fault_ms: 20_000, tweak: (spec: ClusterSpec) => {
    spec.volumes.push(MIRROR_VOLUME);
    spec.toma_cluster = true;
  } };
  const at: [string, string][] = [
    ["Degraded", "dead"],
    ["Rebuild", "syncing"],
    ["Dual lock", "synced"],
  ];
  for (const [step, state] of at) {
    test(`the leader's server crashes in ${step}: a new leader, the leg still comes back, legs equal`, async () => {
      let crashed = false;
      const r = await scenario((c) => {
        let leg = -1;
        when(c, 2000, () => mirror(c) !== undefined && leaderServer(c) !== undefined, () => {
          leg = legServer(c, 1) !== leaderServer(c) ? 1 : 0;
          const s = legServer(c, leg);
          c.crashServer(s, "process");
          c.world.after(5000, () => boot(c, s));
        });
        when(c, 2001, () => leg >= 0 && mirror(c)?.legs[leg] === state && leaderServer(c) !== undefined, () => {
          crashed = true;
          const s = leaderServer(c)!;
          c.crashServer(s, "process");
          c.world.after(1500, () => boot(c, s));
        });
      }, inCluster);
      expect(crashed).toBe(true);
      // A leader of a later term took over the control.
      const terms = r.full_trace.filter((l) => l.includes("leader control starts")).map((l) => Number(l.split("term=")[1]));
      expect(new Set(terms).size).toBeGreaterThanOrEqual(2);
      expect(steps(r).at(-1)).toBe("ok,ok");
    });
  }
});
