/**
 * The TOMA's mirror steps (MirrorControl.tick) over a cluster state in memory: no client, no
 * target (every session is absent), so only the topology decisions show.
 */
import { expect, test } from "bun:test";
import { realEnv } from "../../src/engine/runtime/real-env.ts";
import { apply, type ClusterState, type Command, emptyState } from "../../src/toma/cluster-state.ts";
import { MirrorControl } from "../../src/toma/mirror-control.ts";
import { MiB, quietLogger } from "./harness.ts";

const D = (i: number) => `00000000-0000-4000-8000-00000000000${i}`;

function mirrored(): ClusterState {
  let s = emptyState("11111111-1111-4111-8111-111111111111");
  const cmds: Command[] = [1, 2, 3].map((i) => ({
    kind: "add_drive",
    drive: { drive_uuid: D(i), extent_size_bytes: MiB, extent_count: 8 },
  }));
  cmds.push({
    kind: "create_volume",
    uuid: "22222222-2222-4222-8222-222222222222",
    name: "m",
    capacity_bytes: 2 * MiB,
    raid_level: "1",
    stripe_width: 1,
    stripe_size_bytes: 0,
    extent_size_bytes: MiB,
    columns: [1, 2].map((i) => ({ drive_uuid: D(i), extents: [0, 1] })),
    mirrors: 2,
  });
  for (const cmd of cmds) {
    const r = apply(s, cmd);
    if (!r.ok) throw new Error(r.error);
    s = r.state;
  }
  return s;
}

test("a leg replaced by a blank drive is not declared dead for the failure its old drive had", async () => {
  let state = mirrored();
  const committed: Command[] = [];
  const mc = new MirrorControl({
    env: realEnv("mirror-test", quietLogger),
    state: () => state,
    propose: async (cmd) => {
      const r = apply(state, cmd);
      if (!r.ok) return { ok: false, error: r.error };
      state = r.state;
      committed.push(cmd);
      return { ok: true };
    },
    sessionOf: () => null,
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
