/**
 * A TOMA that missed more commands than the log keeps catches up by a snapshot sent in chunks,
 * with real processes over the real transport (HTTP requests of at most 44 KiB between TOMAs):
 * three servers on 127.0.0.1, one TOMA killed while 70 RAID1 volumes are created through the
 * leader (the leader compacts its log meanwhile), then started again. Checked: it shows exactly
 * the leader's volumes, and the leader logged a snapshot of more than one chunk to it.
 */
import { expect, test } from "bun:test";
import type { VolumeJson } from "../../src/toma/api-types.ts";
import { MAX_SNAPSHOT_CHUNK_BYTES } from "../../src/toma/consensus/types.ts";
import { tomaClusterFixture } from "../support/toma-cluster-fixture.ts";
import { NVMESH, run } from "../support/proc.ts";

const f = tomaClusterFixture({ drive_size: "256M", extent_size: "1M" });
const { volumes, until } = f;

test("a TOMA killed while 70 volumes are created catches up by a snapshot in chunks and shows the leader's volumes", async () => {
  const { c, p } = f;
  const li = (await p.agreed([0, 1, 2], () => true, 30_000)).index;
  await until("six member drives", async () => (await p.status(li))?.drives.ok === 6, 30_000);
  const away = [0, 1, 2].find((i) => i !== li)!;
  await p.tomas[away]!.stop("SIGKILL");
  const N = 70;
  for (let i = 0; i < N; i++) {
    const r = await run([NVMESH, "volume", "create", "--name", `v${i}`, "--capacity", "1M", "--raid-level", "1", "-m", p.addrs[li]!], { env: c.keyEnv });
    if (r.code !== 0) throw new Error(`volume create v${i}: ${r.stderr}${r.stdout}`);
  }
  const at_leader = (await volumes(li))!;
  expect(at_leader.length).toBe(N);
  p.start(away);
  const caught = await until("the restarted TOMA shows the leader's 70 volumes", async () => {
    const v = await volumes(away);
    return v !== null && v.length === N ? v : null;
  }, 60_000);
  const key = (v: VolumeJson) => JSON.stringify([v.uuid, v.name, v.columns, v.created_seq]);
  expect(caught.map(key).sort()).toEqual(at_leader.map(key).sort());
  // The leader sent it a snapshot, in more than one chunk (its first chunk is a full one).
  const leader_log = p.tomas[li]!.output;
  expect(leader_log).toContain("sending a snapshot");
  expect(leader_log).toMatch(new RegExp(`bytes=0\\+${MAX_SNAPSHOT_CHUNK_BYTES}/\\d+`));
}, 240_000);
