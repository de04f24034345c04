/**
 * The size bounds of a TOMA cluster's commands and state (cluster/volume-ops.ts tooLarge,
 * cluster-state.ts): a command whose legs are scattered over too many runs, a state beyond what a
 * hard-state record may hold, and a state listing more extents than a TOMA holds in memory are
 * each refused with a 507 saying why, before anything is proposed or applied.
 */
import { expect, test } from "bun:test";
import { apply, type ClusterState, type Command, emptyState } from "../../src/toma/cluster-state.ts";
import { MAX_DECODED_EXTENTS } from "../../src/toma/extent-runs.ts";
import { encodeProposal, MAX_STATE_BYTES } from "../../src/toma/consensus/proposal.ts";
import { LeaderOpError } from "../../src/toma/cluster/leader-gate.ts";
import { MAX_COMMAND_BYTES, tooLarge } from "../../src/toma/cluster/volume-ops.ts";
import { STATUS } from "../../src/toma/api.ts";

const MiB = 1 << 20;
const uuid = (n: number) => `00000000-0000-4000-8000-${n.toString(16).padStart(12, "0")}`;

function withDrives(n: number, extent_count: number): ClusterState {
  let s = emptyState(uuid(0xc1));
  for (let i = 0; i < n; i++) {
    const r = apply(s, { kind: "add_drive", drive: { drive_uuid: uuid(0xd00 + i), extent_size_bytes: 16 * MiB, extent_count } });
    if (!r.ok) throw new Error(r.error);
    s = r.state;
  }
  return s;
}

const raid1 = (name: string, n: number, legs: number[][]): Extract<Command, { kind: "create_volume" }> => ({
  kind: "create_volume",
  uuid: uuid(0x1000 + n),
  name,
  capacity_bytes: legs[0]!.length * 16 * MiB,
  raid_level: "1",
  stripe_width: 1,
  stripe_size_bytes: 0,
  extent_size_bytes: 16 * MiB,
  columns: legs.map((extents, i) => ({ drive_uuid: uuid(0xd00 + i), extents })),
  mirrors: 2,
});

function refusal(state: ClusterState, cmd: Command): LeaderOpError {
  const data = encodeProposal({ computed_at: state.generation, cmd });
  try {
    tooLarge("create volume", state, cmd, data);
  } catch (e) {
    expect(e).toBeInstanceOf(LeaderOpError);
    return e as LeaderOpError;
  }
  throw new Error("not refused");
}

test("a leg of any size in one run is a command of a few hundred bytes; legs scattered over too many runs are refused (507), saying why", () => {
  const s = withDrives(2, 1 << 20);
  const contiguous = Array.from({ length: 640 * 1024 }, (_, i) => i);
  const ten = raid1("ten", 1, [contiguous, contiguous]);
  expect(encodeProposal({ computed_at: 2, cmd: ten }).length).toBeLessThan(400);
  expect(() => tooLarge("create volume 'ten'", s, ten, encodeProposal({ computed_at: 2, cmd: ten }))).not.toThrow();
  // Every other extent: one run each.
  const scattered = Array.from({ length: 600 }, (_, i) => 2 * i);
  const e = refusal(s, raid1("sc", 2, [scattered, scattered]));
  expect(e.status).toBe(507);
  expect(e.message).toMatch(new RegExp(`scattered over 1200 runs\\), above the ${MAX_COMMAND_BYTES} a TOMA cluster's log entry may hold`));
});

test("a state beyond what a TOMA cluster's state may take is refused (507), saying why", () => {
  // Many volumes with scattered legs: each adds about 2.2 KiB to the state.
  let s = withDrives(2, 1 << 20);
  let n = 0;
  let e: LeaderOpError | null = null;
  for (; e === null; n++) {
    const legs = Array.from({ length: 200 }, (_, i) => 400 * n + 2 * i);
    const cmd = raid1(`v${n}`, n, [legs, legs]);
    try {
      tooLarge(`create volume 'v${n}'`, s, cmd, encodeProposal({ computed_at: s.generation, cmd }));
    } catch (x) {
      e = x as LeaderOpError;
      break;
    }
    const r = apply(s, cmd);
    if (!r.ok) throw new Error(r.error);
    s = r.state;
  }
  expect(n).toBeGreaterThan(200);
  expect(e.status).toBe(507);
  expect(e.message).toMatch(new RegExp(`the cluster state would take \\d+ bytes, above the ${MAX_STATE_BYTES} a TOMA cluster's state may take`));
});

test("a state listing more extents than a TOMA holds in memory is refused by the state machine (no_space: 507)", () => {
  const s = withDrives(2, 2 ** 30);
  // Not iterated: the count is checked first.
  const huge = new Array<number>(MAX_DECODED_EXTENTS / 2 + 1);
  const r = apply(s, raid1("huge", 3, [huge, huge]));
  expect(r.ok).toBe(false);
  if (r.ok) return;
  expect(r.code).toBe("no_space");
  expect(STATUS[r.code]).toBe(507);
  expect(r.error).toMatch(/would list 16777218 extents, above the 16777216 it may hold/);
});
