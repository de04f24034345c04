/**
 * The attach information (src/toma/volume-views.ts attachInfoOf): its layout is worked out once per
 * applied state and shared by every answer from that state; a new state is answered its own.
 */
import { expect, test } from "bun:test";
import { apply, type ClusterState } from "../../src/toma/cluster-state.ts";
import { layoutOf } from "../../src/toma/volume-layout.ts";
import { attachInfoOf } from "../../src/toma/volume-views.ts";
import { D, withMirror } from "./mirror-state.ts";

const where = (d: string) => `target-of-${d}`;

function step(s: ClusterState, cmd: Parameters<typeof apply>[1]): ClusterState {
  const r = apply(s, cmd);
  if (!r.ok) throw new Error(r.error);
  return r.state;
}

test("every answer from one state shares one layout, equal to the record's and frozen", () => {
  const s = withMirror();
  const vol = s.volumes[0]!;
  const a = attachInfoOf(vol, s, where, 0);
  const b = attachInfoOf(vol, s, where, 0);
  expect(b.layout).toBe(a.layout);
  expect(a.layout).toEqual(layoutOf(vol));
  expect(a.layout.columns.map((c) => c.runs)).toEqual([[0, 2], [0, 2]]);
  // Shared by every client's answer: changing it would change it for all, so it cannot be changed.
  expect(() => {
    a.layout.capacity_bytes = 1;
  }).toThrow();
  expect(() => a.layout.columns[0]!.runs.push(7, 1)).toThrow();
  expect(() => {
    a.layout.columns[1] = { drive_uuid: D(4), runs: [0, 1] };
  }).toThrow();
  expect(attachInfoOf(vol, s, where, 0).layout).toEqual(layoutOf(vol));
});

test("a new state is answered its own layout: a replaced leg's runs, never the older state's", () => {
  let s = withMirror();
  const old = s.volumes[0]!;
  const uuid = old.uuid;
  const before = attachInfoOf(old, s, where, 0);
  s = step(s, { kind: "set_legs", uuid, legs: ["ok", "dead"] });
  s = step(s, { kind: "replace_leg", uuid, column: 1, with: { drive_uuid: D(3), extents: [4, 5] } });
  // The record given is the old one (read before an await): the state's own record answers.
  const after = attachInfoOf(old, s, where, 0);
  expect(after.layout).not.toBe(before.layout);
  expect(after.layout.columns.map((c) => [c.drive_uuid, c.runs])).toEqual([[D(1), [0, 2]], [D(3), [4, 2]]]);
  expect(after.generation).toBe(s.generation);
  expect(before.layout.columns.map((c) => c.drive_uuid)).toEqual([D(1), D(2)]);
});

test("a volume the state no longer has, or no state at all: the given record's layout, worked out anew", () => {
  const s = withMirror();
  const vol = s.volumes[0]!;
  const gone = step(s, { kind: "delete_volume", uuid: vol.uuid });
  const a = attachInfoOf(vol, gone, where, 0);
  expect(a.layout).toEqual(layoutOf(vol));
  expect(attachInfoOf(vol, null, where, 0).layout).toEqual(layoutOf(vol));
  expect(attachInfoOf(vol, null, where, 0).layout).not.toBe(attachInfoOf(vol, null, where, 0).layout);
});
