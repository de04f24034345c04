/**
 * Clients in a TOMA cluster (docs/toma-cluster.md, "Clients in a TOMA cluster"), on a quiet
 * network with a RAID1 volume in the workload:
 * - the leader's whole server crashes while the clients write: a new leader restores every client
 *   from the replicated state, and no client registers again (same id, no re-attach);
 * - a client cut off from the leader's TOMA alone (its requests, or the answers, for longer than
 *   client_timeout_ms), which still reaches the other TOMAs and every target: its calls relayed
 *   by its home, or (homed on the leader itself, the others answering 421) heard by the other
 *   TOMAs and reported to the leader, it is never expired or fenced, and its I/O goes on;
 * - a client's own server (its preferred home) crashes and comes back: the client moves to another
 *   TOMA, then back to its own once that serves clients again, once, without registering again.
 */
import { describe, expect, setDefaultTimeout, test } from "bun:test";
import { type ClusterSpec, MGMT_PORT, type SimCluster } from "../../sim/cluster.ts";
import type { RunResult } from "../../sim/run.ts";
import { DEFAULT_CLIENT_TIMINGS } from "../../src/toma/clients.ts";
import { inCluster, scenario, when } from "./scenario-kit.ts";

setDefaultTimeout(180_000);

const leaderServer = (c: SimCluster) => c.servers.find((s) => s.member !== null && s.member === c.leaderMember());
/** Trace lines of one node whose message matches. */
const lines = (r: RunResult, node: RegExp, msg: RegExp) => r.full_trace.filter((l) => node.test(l.trim().split(/\s+/)[1] ?? "") && msg.test(l));
const timeOf = (l: string) => Number(l.trim().split(/\s+/)[0]);

describe("clients in a TOMA cluster", () => {
  test("the leader's server crashes while the clients write: every client keeps its id, none registers again", async () => {
    let crashed_at = -1;
    const r = await scenario((c) => {
      when(c, 3000, () => leaderServer(c) !== undefined && (c.clusterState()?.clients.length ?? 0) >= 2, () => {
        const s = leaderServer(c)!;
        crashed_at = c.world.now;
        c.crashServer(s, "process");
        c.world.after(1500, () => s.node.alive || c.bootServer(s));
      });
    }, inCluster(15_000));
    expect(crashed_at).toBeGreaterThan(0);
    const terms = new Set(r.full_trace.filter((l) => l.includes("leader control starts")).map((l) => l.split("term=")[1]));
    expect(terms.size).toBeGreaterThanOrEqual(2);
    // One registration per client daemon, at the start; the new leader restored both.
    expect(lines(r, /^c\d/, /registered with the TOMA/).length).toBe(2);
    expect(lines(r, /^c\d/, /registering again/)).toEqual([]);
    const restored = lines(r, /^s\d/, /client restored from the cluster state/).filter((l) => timeOf(l) > crashed_at);
    expect(restored.length).toBeGreaterThanOrEqual(2);
    // Both clients wrote after the new leader took over.
    for (const cl of ["c1", "c2"]) expect(lines(r, new RegExp(`^${cl}$`), /write #\d+ ok/).some((l) => timeOf(l) > crashed_at + 3000)).toBe(true);
  });

  test("a client's own server crashes and restarts: the client homes elsewhere, then back on its own TOMA, once", async () => {
    let crashed_at = -1;
    let booted_at = -1;
    let own = "";
    const r = await scenario((c) => {
      when(c, 3000, () => leaderServer(c) !== undefined && (c.clusterState()?.clients.length ?? 0) >= 2, () => {
        // c1 is the first client: its preferred home is the first server's TOMA.
        const s = c.servers[0]!;
        own = c.mgmtAddresses[0]!;
        crashed_at = c.world.now;
        c.crashServer(s, "process");
        c.world.after(1500, () => {
          booted_at = c.world.now;
          if (!s.node.alive) c.bootServer(s);
        });
      });
    }, inCluster(25_000));
    expect(crashed_at).toBeGreaterThan(0);
    const away = lines(r, /^c1$/, /homed on another TOMA/).filter((l) => timeOf(l) > crashed_at);
    expect(away.length).toBeGreaterThanOrEqual(1);
    const back = lines(r, /^c1$/, /homed back on/);
    expect(back.length).toBe(1);
    expect(back[0]).toContain(`homed back on ${own}`);
    const back_at = timeOf(back[0]!);
    expect(back_at).toBeGreaterThan(booted_at);
    // Not homed away again once back (no flapping), no new registration, and it writes on.
    expect(lines(r, /^c1$/, /homed on another TOMA/).filter((l) => timeOf(l) > back_at)).toEqual([]);
    expect(lines(r, /^c\d/, /registered with the TOMA/).length).toBe(2);
    expect(lines(r, /^c\d/, /registering again/)).toEqual([]);
    expect(lines(r, /^c1$/, /write #\d+ ok/).some((l) => timeOf(l) > back_at + 1000)).toBe(true);
  });

  // Relayed (the default), or homed on the leader itself with the other TOMAs answering 421
  // (`clients_on_leader`): then nothing of it reaches the leader during the cut, and only the
  // other TOMAs' reports that they heard it keep it from being expired.
  for (const [dir, on_leader] of [["to", false], ["from", false], ["to", true], ["from", true]] as const) {
    test(`a client cut off from the leader's TOMA alone (${dir === "to" ? "its requests" : "the answers"}${on_leader ? ", homed on the leader" : ""}) for longer than client_timeout_ms keeps its I/O`, async () => {
      const cut_ms = DEFAULT_CLIENT_TIMINGS.client_timeout_ms + 5000;
      let cut_at = -1;
      let leader = "";
      const r = await scenario((c) => {
        when(c, 2000, () => leaderServer(c) !== undefined && (c.clusterState()?.clients.length ?? 0) >= 2, () => {
          leader = leaderServer(c)!.name;
          cut_at = c.world.now;
          c.net.cutService("c1", `${leader}:${MGMT_PORT}`, dir, true);
          c.world.after(cut_ms, () => c.net.cutService("c1", `${leader}:${MGMT_PORT}`, dir, false));
        });
      }, { ...inCluster(cut_ms + 8000), tweak: (spec: ClusterSpec) => {
        inCluster(0).tweak(spec);
        spec.clients_on_leader = on_leader;
      } });
      expect(cut_at).toBeGreaterThan(0);
      // The leader did not change (a client's cut moves nothing between the TOMAs)...
      const starts = r.full_trace.filter((l) => l.includes("leader control starts"));
      expect(starts.length).toBe(1);
      // ...never expired a client, and c1 never registered again.
      expect(lines(r, /^s\d/, /client expired|client left/)).toEqual([]);
      expect(lines(r, /^c1$/, /registered with the TOMA/).length).toBe(1);
      // c1 wrote all along the cut, past the client timeout.
      const writes = lines(r, /^c1$/, /write #\d+ ok/).map(timeOf).filter((t) => t > cut_at && t < cut_at + cut_ms);
      expect(writes.some((t) => t > cut_at + DEFAULT_CLIENT_TIMINGS.client_timeout_ms + 1000)).toBe(true);
      expect(writes.length).toBeGreaterThan(20);
    });
  }
});
