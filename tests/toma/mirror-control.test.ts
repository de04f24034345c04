/**
 * The TOMA's mirror steps (MirrorControl.tick) over a cluster state in memory: no client, no
 * target (every session is absent), so only the topology decisions show.
 */
import { expect, test } from "bun:test";
import { realEnv } from "../../src/engine/runtime/real-env.ts";
import type { Command } from "../../src/toma/cluster-state.ts";
import { applyProposal, encodeProposal } from "../../src/toma/consensus/proposal.ts";
import { MirrorControl } from "../../src/toma/mirror-control.ts";
import { MiB, quietLogger } from "./harness.ts";
import { D, withMirror } from "./mirror-state.ts";

test("a leg replaced by a blank drive is not declared dead for the failure its old drive had", async () => {
  let state = withMirror();
  const committed: Command[] = [];
  const mc = new MirrorControl({
    env: realEnv("mirror-test", quietLogger),
    state: () => state,
    propose: async (cmd, computed_at) => {
      const r = applyProposal(state, { index: state.generation + 1, data: encodeProposal({ computed_at, cmd }) });
      if (r.kind !== "applied") return { ok: false, error: r.kind === "refused" ? r.error : r.kind };
      state = r.state;
      committed.push(cmd);
      return { ok: true };
    },
    sessionOf: () => null,
    version: () => 0,
    deposed: () => {
      throw new Error("no target here to refuse anything");
    },
    regionBytes: () => MiB,
    cacheEpochOf: () => undefined,
    replacement: () => ({ drive_uuid: D(3), extents: [0, 1] }),
  });
  const reachable = (d: string) => d !== D(2);
  // A client saw leg 1 fail (its drive died): Degraded.
  mc.reportFailure(state.volumes[0]!, 1, "connection reset");
  await mc.tick(reachable);
  expect(state.volumes[0]!.legs).toEqual(["ok", "dead"]);
  // The dead drive is evicted: a blank leg on drive 3 takes its place and starts syncing.
  mc.evict(D(2));
  await mc.tick(reachable);
  expect(committed.at(-1)).toMatchObject({ kind: "replace_leg", column: 1 });
  expect(state.volumes[0]!.legs).toEqual(["ok", "syncing"]);
  // The report was about drive 2: the new leg keeps syncing (its copy cannot run here: no targets).
  const before = committed.length;
  await mc.tick(reachable);
  await mc.tick(reachable);
  expect(committed.slice(before)).toEqual([]);
  expect(state.volumes[0]!.legs).toEqual(["ok", "syncing"]);
  expect(state.volumes[0]!.rebuild_blank).toEqual([false, true]);
});
