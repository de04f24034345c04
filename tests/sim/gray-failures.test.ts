/**
 * Gray failures of one mirror leg, on a quiet network and quiet drives, with a RAID1 volume in the
 * workload, each then healed and put through the full checks of every seed (sim/run.ts): every
 * read correct, no operation failed (no EIO at any time), every leg byte-equal at the end.
 *
 * - A leg's target *paused* (SIGSTOP: alive, its connections open, its kernel acknowledging
 *   everything, answering nothing) for longer than every timeout, then resumed with the stale
 *   requests it had received still queued.
 * - A path cut *one way* from a client to a leg's target, while the TOMA still reaches it: only
 *   that client's own timer can find it.
 * In both the client gives the leg up by its session's deadline, reports it, the TOMA drops it
 * from the topology, and writes go on on the other leg; the leg is rebuilt after.
 */
import { describe, expect, setDefaultTimeout, test } from "bun:test";
import { type ClusterSpec, MIRROR_VOLUME } from "../../sim/cluster.ts";
import type { RunResult } from "../../sim/run.ts";
import { legAwayFromToma, legServer, mirror, scenario, steps, when } from "./scenario-kit.ts";

setDefaultTimeout(180_000);

/** A leg whose server is not the TOMA's (the TOMA must stay healthy). */
const victim = legAwayFromToma;

const at = (line: string) => Number(line.trim().split(/\s+/)[0]);

const FAULT_AT = 2000;

/** The mirror alone: a striped volume on the faulty target has no other copy, and must fail. */
const onlyMirror = (spec: ClusterSpec) => {
  spec.volumes = [MIRROR_VOLUME];
};

/** The mirror alone, written busily (4 lanes per client, little think time). */
const busyMirror = (spec: ClusterSpec) => {
  onlyMirror(spec);
  spec.workload = { ...spec.workload, lanes: 4, think_ms: [1, 10] };
};

/** How many times the leg went out (a leg that flaps goes out again after each return). */
const outages = (r: RunResult, leg: number) => steps(r).filter((s) => s.split(",")[leg] === "dead").length;

describe("gray failures of a mirror leg", () => {
  for (const seed of [1, 2, 3]) {
    test(`seed ${seed}: a leg's target paused for 35 s: no EIO, the leg goes out and is rebuilt, legs equal`, async () => {
      let leg = -1;
      const r = await scenario(
        (c) => {
          when(c, FAULT_AT, () => mirror(c) !== undefined, () => {
            leg = victim(c);
            const s = legServer(c, leg);
            s.node.pause();
            c.world.after(35_000, () => s.node.resume());
          });
        },
        { seed, fault_ms: 45_000, tweak: busyMirror },
      );
      expect(leg).toBeGreaterThanOrEqual(0);
      expect(outages(r, leg)).toBeGreaterThanOrEqual(1);
      expect(steps(r).at(-1)).toBe("ok,ok");
      const paused = r.full_trace.find((l) => l.includes(" PAUSE #"))!;
      const dead = r.full_trace.find((l) => l.includes("topology step volume=mirror") && l.split("legs=")[1]!.split(",")[leg] === "dead")!;
      console.log(`seed ${seed}: paused at ${at(paused)} ms; the leg out of the topology ${(at(dead) - at(paused)).toFixed(0)} ms later`);
      // Whoever finds it first (the TOMA's own link to the target, or a client's session
      // deadline), within a few seconds.
      expect(at(dead) - at(paused)).toBeLessThan(8000);
    });

    test(`seed ${seed}: a one-way cut from a client to a leg's target for 30 s, the TOMA still reaching it: no EIO, the leg out once, legs equal`, async () => {
      let leg = -1;
      let server = "";
      const r = await scenario(
        (c) => {
          when(c, FAULT_AT, () => mirror(c) !== undefined, () => {
            leg = victim(c);
            server = legServer(c, leg).name;
            c.net.setDirection("c1", server, false);
            c.world.after(30_000, () => c.net.setDirection("c1", server, true));
          });
        },
        { seed, fault_ms: 40_000, tweak: busyMirror },
      );
      expect(leg).toBeGreaterThanOrEqual(0);
      // Out while the client cannot reach it, and not brought back before: the client keeps
      // reporting it (brought back while still cut, it went out again, and writes waiting on it
      // failed with EIO).
      expect(outages(r, leg)).toBe(1);
      expect(steps(r).at(-1)).toBe("ok,ok");
      const cut = r.full_trace.find((l) => l.includes(`link c1→${server} down`))!;
      const reported = r.full_trace.find((l) => l.includes("leg reported failing") && l.includes("client"))!;
      const back = r.full_trace.find((l) => l.includes(`link c1→${server} up`))!;
      const returned = r.full_trace.find((l) => l.includes("topology step volume=mirror") && l.split("legs=")[1]!.split(",")[leg] === "syncing")!;
      console.log(`seed ${seed}: cut at ${at(cut)} ms; reported by the client ${(at(reported) - at(cut)).toFixed(0)} ms later; the leg back (syncing) ${(at(returned) - at(back)).toFixed(0)} ms after the heal`);
      expect(at(reported) - at(cut)).toBeLessThan(8000);
      expect(at(returned)).toBeGreaterThan(at(back));
    });
  }
});
