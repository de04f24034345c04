/**
 * What tools read from a drive's metadata slot (src/toma/slot-contents.ts): the records the
 * members of a TOMA cluster wrote (over the simulator's Env with formatted in-memory drives,
 * cluster-fixture.ts) show their TOMA, and the state at their commit is what the members applied
 * (snapshot plus committed entries through applyProposal); damaged records are named, never
 * crash the tool.
 */
import { expect, test } from "bun:test";
import { emptyState, encodeState } from "../../src/toma/cluster-state.ts";
import { DrivePool } from "../../src/toma/cluster/drive-pool.ts";
import { VolumeOps } from "../../src/toma/cluster/volume-ops.ts";
import { votersConfig } from "../../src/toma/consensus/config.ts";
import type { HardStateRecord } from "../../src/toma/consensus/hard-state-record.ts";
import { encodeProposal } from "../../src/toma/consensus/proposal.ts";
import { describeContents, recordContents, slotContents, stateOf } from "../../src/toma/slot-contents.ts";
import { steadyClock } from "../../src/engine/steady-clock.ts";
import { agreedLeader, cluster, driveReport, running, settle } from "./cluster-fixture.ts";

const MiB = 1 << 20;

test("each member's drives hold its record; the state at its commit is what the members applied", async () => {
  const c = await cluster(801, 3, 3);
  for (const s of c.servers) c.boot(s);
  expect(await c.world.run(() => running(c).length === 3 && agreedLeader(c) !== null, 30_000)).toBe("done");
  const leader = c.servers.find((s) => s.name === agreedLeader(c)!.toma)!;
  const clock = steadyClock(leader.env!.clock);
  const pool = new DrivePool(() => clock.now_ms());
  const uuid = leader.toma!.view().cluster_uuid!;
  for (const s of c.servers) pool.report(driveReport(s, uuid));
  const ops = new VolumeOps(leader.env!, leader.toma!, pool);
  ops.addReported();
  expect(await c.world.run(() => running(c).every((s) => s.toma!.appliedState()?.drives.length === 6), c.world.now + 20_000)).toBe("done");
  for (const name of ["m1", "m2"]) {
    const r = await settle(c, ops.create({ name, capacity_bytes: 2 * MiB, raid_level: "1" }), 15_000);
    if (!r.ok) throw r.error;
  }
  // One more change after m2, so that every record's persisted commit covers it.
  const r = await settle(c, ops.create({ name: "m3", capacity_bytes: MiB, raid_level: "0" }), 15_000);
  if (!r.ok) throw r.error;
  await c.world.run(() => false, c.world.now + 2000);
  const applied = leader.toma!.appliedState()!;
  for (const s of c.servers) {
    for (const d of s.drives) {
      const slot = await d.metaRead();
      const got = slotContents({ drive_uuid: d.info.drive_uuid, ...slot });
      expect(got.kind).toBe("hard_state");
      if (got.kind !== "hard_state") continue;
      expect(got.record.toma_id).toBe(s.name);
      expect(`${got.record.toma_id}#${got.record.incarnation}`).toBe(s.toma!.view().node_id!);
      expect(got.record.seq).toBe(slot.generation);
      expect(got.record.config.members.length).toBe(3);
      expect(got.refused).toEqual([]);
      const st = got.state!;
      expect(st.generation).toBeLessThanOrEqual(applied.generation);
      for (const name of ["m1", "m2"]) expect(st.volumes.find((v) => v.name === name)).toEqual(applied.volumes.find((v) => v.name === name));
      expect(describeContents(got)).toContain(`the hard-state record of TOMA ${s.name}`);
    }
  }
  expect(c.world.failure).toBeNull();
});

function record(over: Partial<HardStateRecord> = {}): HardStateRecord {
  const state = { ...emptyState("00000000-0000-4000-8000-0000000000c1"), generation: 0 };
  return {
    kind: "nvmesh.toma.hard-state",
    format: 1,
    cluster_uuid: state.cluster_uuid,
    toma_id: "s1",
    incarnation: "00000000000000a1",
    seq: 3,
    drives: ["00000000-0000-4000-8000-0000000000d1"],
    anchor_seq: 0,
    term: 2,
    vote: null,
    commit: 1,
    snapshot: { index: 1, term: 1, config: votersConfig(["s1#00000000000000a1"]), data: encodeState(state) },
    entries: [],
    ...over,
  };
}

test("a joined member never sent the snapshot has no state; damaged snapshots and entries are named; entries after the commit are not applied", () => {
  const joined = recordContents(record({ snapshot: { index: 0, term: 0, config: { members: [] }, data: new Uint8Array() }, commit: 0, term: 0 }));
  expect(joined.kind === "hard_state" && joined.state).toBeNull();
  expect(stateOf(joined)).toBeNull();
  const bad = recordContents(record({ snapshot: { ...record().snapshot, data: new Uint8Array([1, 2, 3]) } }));
  expect(bad.kind).toBe("unknown");
  const forged = recordContents(
    record({ snapshot: { ...record().snapshot, data: encodeState({ ...emptyState(record().cluster_uuid), generation: 5 }) }, commit: 2, entries: [{ kind: "normal", term: 2, index: 2, data: encodeProposal({ computed_at: 5, cmd: { kind: "set_cache_epoch", drive_uuid: record().drives[0]!, cache_epoch: 1 } }) }] }),
  );
  expect(forged.kind === "unknown" && forged.error).toContain("at or below its state's generation");
  // A committed entry the state machine refuses is listed; one after the commit is not applied.
  const add = (computed_at: number) => encodeProposal({ computed_at, cmd: { kind: "add_drive", drive: { drive_uuid: record().drives[0]!, extent_size_bytes: MiB, extent_count: 4 } } });
  const two = recordContents(
    record({
      commit: 3,
      entries: [
        { kind: "normal", term: 2, index: 2, data: add(0) },
        { kind: "normal", term: 2, index: 3, data: add(0) },
        { kind: "normal", term: 2, index: 4, data: new Uint8Array() },
      ],
    }),
  );
  expect(two.kind).toBe("hard_state");
  if (two.kind !== "hard_state") return;
  expect(two.state!.drives.length).toBe(1);
  expect(two.state!.generation).toBe(2);
  expect(two.refused.map((x) => x.index)).toEqual([3]);
  expect([two.record.entries, two.record.committed_entries]).toEqual([3, 2]);
});

test("a single-TOMA state and a blank slot", () => {
  const s = { ...emptyState("00000000-0000-4000-8000-0000000000c1"), generation: 4, term: 2 };
  const got = slotContents({ drive_uuid: "00000000-0000-4000-8000-0000000000d1", generation: 4, payload: encodeState(s) });
  expect(got).toEqual({ kind: "single_toma", state: s });
  expect(describeContents(got)).toContain("the single-TOMA cluster state");
  expect(slotContents({ drive_uuid: "00000000-0000-4000-8000-0000000000d1", generation: 0, payload: null }).kind).toBe("blank");
});
