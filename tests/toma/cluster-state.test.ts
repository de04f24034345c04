import { describe, expect, test } from "bun:test";
import { decode, encode } from "cbor-x";
import {
  apply,
  type ClusterState,
  type Command,
  CorruptStateError,
  decodeState,
  emptyState,
  encodeState,
} from "../../src/toma/cluster-state.ts";

const MiB = 1024 * 1024;
const uuid = (n: number) => `00000000-0000-4000-8000-${n.toString(16).padStart(12, "0")}`;
const D1 = uuid(1);
const D2 = uuid(2);

function base(): ClusterState {
  let s = emptyState(uuid(0xc1));
  for (const d of [D1, D2]) {
    const r = apply(s, { kind: "add_drive", drive: { drive_uuid: d, extent_size_bytes: MiB, extent_count: 4 } });
    if (!r.ok) throw new Error(r.error);
    s = r.state;
  }
  return s;
}

const vol = (name: string, columns: { drive_uuid: string; extents: number[] }[], extra: Partial<Extract<Command, { kind: "create_volume" }>> = {}): Command => ({
  kind: "create_volume",
  uuid: uuid(100 + name.charCodeAt(0) * 100 + name.length),
  name,
  capacity_bytes: columns.reduce((n, c) => n + c.extents.length, 0) * MiB,
  raid_level: "concatenated",
  stripe_width: columns.length,
  stripe_size_bytes: 0,
  extent_size_bytes: MiB,
  columns,
  mirrors: 1,
  ...extra,
}) as Command;

describe("apply()", () => {
  const s0 = base();
  const withA = apply(s0, vol("a", [{ drive_uuid: D1, extents: [0, 1] }]));
  if (!withA.ok) throw new Error(withA.error);
  const s1 = withA.state;

  const refusals: [string, ClusterState, Command, string][] = [
    ["add a drive twice", s0, { kind: "add_drive", drive: { drive_uuid: D1, extent_size_bytes: MiB, extent_count: 4 } }, "invalid"],
    ["delete unknown volume", s0, { kind: "delete_volume", uuid: uuid(77) }, "not_found"],
    ["create with a taken name", s1, vol("a", [{ drive_uuid: D2, extents: [0] }]), "name_taken"],
    ["create on used extents", s1, vol("b", [{ drive_uuid: D1, extents: [1, 2] }]), "no_space"],
    ["create on unknown drive", s0, vol("b", [{ drive_uuid: uuid(9), extents: [0] }]), "invalid"],
    ["create beyond drive end", s0, vol("b", [{ drive_uuid: D1, extents: [4] }]), "invalid"],
    ["two columns on one drive", s0, vol("b", [{ drive_uuid: D1, extents: [0] }, { drive_uuid: D1, extents: [1] }]), "invalid"],
    ["capacity larger than columns", s0, vol("b", [{ drive_uuid: D1, extents: [0] }], { capacity_bytes: 2 * MiB }), "invalid"],
    ["bad name", s0, vol("b/c", [{ drive_uuid: D1, extents: [0] }]), "invalid"],
    ["raid0 with bad stripe", s0, vol("b", [{ drive_uuid: D1, extents: [0] }], { raid_level: "0", stripe_size_bytes: 5000 }), "invalid"],
  ];
  for (const [title, s, cmd, code] of refusals) {
    test(`refuses: ${title}, leaving the state as it was`, () => {
      const before = JSON.stringify(s);
      const r = apply(s, cmd);
      expect(r.ok).toBe(false);
      if (!r.ok) expect(r.code).toBe(code as typeof r.code);
      expect(JSON.stringify(s)).toBe(before);
    });
  }

  test("each command bumps the generation; created_seq is the creating generation", () => {
    expect(s0.generation).toBe(2);
    expect(s1.generation).toBe(3);
    expect(s1.volumes[0]!.created_seq).toBe(3);
    const d = apply(s1, { kind: "delete_volume", uuid: s1.volumes[0]!.uuid });
    expect(d.ok && d.state.generation).toBe(4);
    expect(d.ok && d.state.volumes).toEqual([]);
  });

  test("apply is pure: the input state is not mutated", () => {
    const before = JSON.stringify(s0);
    apply(s0, vol("z", [{ drive_uuid: D2, extents: [3] }]));
    expect(JSON.stringify(s0)).toBe(before);
  });
});

describe("encode/decode", () => {
  const r = apply(base(), vol("a", [{ drive_uuid: D1, extents: [0, 1] }]));
  if (!r.ok) throw new Error(r.error);
  const s = r.state;

  test("round trip, canonical bytes", () => {
    const bytes = encodeState(s);
    expect(decodeState(bytes)).toEqual(s);
    expect(encodeState(decodeState(bytes))).toEqual(bytes);
  });

  test("a drive's recorded cache epoch survives the round trip (it once did not: every TOMA restart saw lost caches)", () => {
    const r2 = apply(s, { kind: "set_cache_epoch", drive_uuid: D1, cache_epoch: 7 });
    if (!r2.ok) throw new Error(r2.error);
    const back = decodeState(encodeState(r2.state));
    expect(back.drives.find((d) => d.drive_uuid === D1)?.cache_epoch).toBe(7);
    expect(back).toEqual(r2.state);
  });

  // The plain form nvmesh wrote before runs (format 1): every extent listed.
  const v1 = { ...s, format: 1 };
  const corrupt: [string, Uint8Array, RegExp][] = [
    ["not CBOR", new Uint8Array([0xff, 0xff, 0x00]), /not valid CBOR|fails validation/],
    ["a number", encode(42), /fails validation/],
    ["unknown format", encode({ ...v1, format: 3 }), /fails validation at 'format'/],
    ["bad uuid", encode({ ...v1, cluster_uuid: "x" }), /cluster_uuid/],
    ["extra field", encode({ ...v1, evil: 1 }), /fails validation/],
    ["negative generation", encode({ ...v1, generation: -1 }), /generation/],
    ["volume on unknown drive", encode({ ...v1, drives: s.drives.slice(1) }), /unknown drive/],
    ["overlapping volumes", encode({ ...v1, volumes: [s.volumes[0], { ...s.volumes[0], name: "b", uuid: uuid(77) }] }), /already in use/],
    ["duplicate drive", encode({ ...v1, drives: [s.drives[0], s.drives[0]] }), /listed twice/],
    ["created after generation", encode({ ...v1, generation: 1 }), /created after/],
  ];
  for (const [title, bytes, msg] of corrupt) {
    test(`rejects a corrupt state: ${title}`, () => {
      expect(() => decodeState(bytes)).toThrow(CorruptStateError);
      expect(() => decodeState(bytes)).toThrow(msg);
    });
  }
});

describe("extents as runs (format 2)", () => {
  // Three drives of 64 extents; a volume whose column is non-contiguous, and a retired list.
  let st = emptyState(uuid(0xc2));
  for (const d of [D1, D2, uuid(3)]) {
    const r = apply(st, { kind: "add_drive", drive: { drive_uuid: d, extent_size_bytes: MiB, extent_count: 64 } });
    if (!r.ok) throw new Error(r.error);
    st = r.state;
  }
  const cols = [
    { drive_uuid: D1, extents: [5, 6, 7, 8, 2, 3, 40] },
    { drive_uuid: D2, extents: [0, 1, 2, 3, 4, 5, 6] },
  ];
  const made = apply(st, vol("m", cols, { raid_level: "1", stripe_width: 1, mirrors: 2, capacity_bytes: 7 * MiB }));
  if (!made.ok) throw new Error(made.error);
  const gone = apply(made.state, vol("g", [{ drive_uuid: uuid(3), extents: [10, 11, 12, 30] }]));
  if (!gone.ok) throw new Error(gone.error);
  const del = apply(gone.state, { kind: "delete_volume", uuid: gone.state.volumes[1]!.uuid });
  if (!del.ok) throw new Error(del.error);
  const s = del.state;
  const wire = () => decode(encodeState(s)) as { format: number; volumes: { columns: { drive_uuid: string; runs: number[] }[] }[]; retired: { runs: number[] }[] };

  test("round trip; the encoding lists runs in the column's order, maximal, never sorted", () => {
    const bytes = encodeState(s);
    expect(decodeState(bytes)).toEqual(s);
    expect(encodeState(decodeState(bytes))).toEqual(bytes);
    const w = wire();
    expect(w.format).toBe(2);
    expect(w.volumes[0]!.columns.map((c) => c.runs)).toEqual([[5, 4, 2, 2, 40, 1], [0, 7]]);
    expect(w.retired[0]!.runs).toEqual([10, 3, 30, 1]);
  });

  test("a leg's size costs nothing: a 65536-extent column encodes in a few bytes", () => {
    const big = [{ drive_uuid: D1, extent_size_bytes: MiB, extent_count: 1 << 17 }];
    let b = emptyState(uuid(0xc3));
    const r0 = apply(b, { kind: "add_drive", drive: big[0]! });
    if (!r0.ok) throw new Error(r0.error);
    b = r0.state;
    const extents = Array.from({ length: 1 << 16 }, (_, i) => i + 7);
    const r = apply(b, vol("big", [{ drive_uuid: D1, extents }], { capacity_bytes: (1 << 16) * MiB }));
    if (!r.ok) throw new Error(r.error);
    const bytes = encodeState(r.state);
    expect(bytes.length).toBeLessThan(600); // the plain form took over 190000
    expect(decodeState(bytes)).toEqual(r.state);
  });

  test("a state written in the plain form (format 1) is still read, and written back as runs", () => {
    const old = encode({ ...s, format: 1 });
    const back = decodeState(old);
    expect(back.format).toBe(1);
    expect({ ...back, format: 2 }).toEqual(s);
    expect(decode(encodeState(back)).format).toBe(2);
  });

  const w = wire();
  const withRuns = (runs: unknown) => encode({ ...w, volumes: [{ ...w.volumes[0], columns: [{ drive_uuid: D1, runs }, w.volumes[0]!.columns[1]] }] });
  const corrupt: [string, Uint8Array, RegExp][] = [
    ["an odd count of numbers", withRuns([5, 4, 2]), /\(start, count\) pairs/],
    ["a run of no extent", withRuns([5, 0, 2, 7]), /positive count/],
    ["a negative start", withRuns([-1, 8]), /fails validation/],
    ["runs that are not maximal", withRuns([5, 2, 7, 2, 2, 2, 40, 1]), /maximal/],
    ["a run beyond any drive", withRuns([2 ** 53 - 2, 4]), /beyond any drive/],
    ["a run of 2^40 extents (no memory is spent on it)", withRuns([0, 2 ** 40]), /more than 16777216 extents/],
    ["many runs adding up beyond the bound", encode({ ...w, retired: Array.from({ length: 20 }, () => ({ volume_uuid: uuid(9), drive_uuid: D2, runs: [0, 1 << 20] })) }), /more than 16777216 extents in all/],
    ["runs outside the drive", withRuns([60, 7]), /outside drive/],
    ["runs overlapping each other", withRuns([5, 4, 2, 5]), /already in use/],
    ["plain extent lists in format 2", encode({ ...w, volumes: [{ ...w.volumes[0], columns: cols }] }), /fails validation/],
    ["runs in format 1", encode({ ...w, format: 1 }), /fails validation/],
  ];
  for (const [title, bytes, msg] of corrupt) {
    test(`rejects a corrupt state: ${title}`, () => {
      expect(() => decodeState(bytes)).toThrow(CorruptStateError);
      expect(() => decodeState(bytes)).toThrow(msg);
    });
  }
});

describe("debug-format volumes", () => {
  const debug = (capacity_bytes: number, extents: number[]) =>
    vol("dbg", [{ drive_uuid: D1, extents }], { capacity_bytes, debug_format: true });

  test("the columns must hold 4 × the capacity", () => {
    const refused = apply(base(), debug(2 * MiB, [0, 1, 2]));
    expect(refused.ok).toBe(false);
    if (!refused.ok) expect(refused.error).toMatch(/less than its capacity/);
    const r = apply(base(), debug(MiB, [0, 1, 2, 3]));
    expect(r.ok && r.state.volumes[0]!.debug_format).toBe(true);
  });

  test("the flag persists through encode/decode; states without debug volumes keep their bytes", () => {
    const r = apply(base(), debug(MiB, [0, 1, 2, 3]));
    if (!r.ok) throw new Error(r.error);
    expect(decodeState(encodeState(r.state)).volumes[0]!.debug_format).toBe(true);
    const plain = apply(base(), vol("a", [{ drive_uuid: D1, extents: [0] }]));
    if (!plain.ok) throw new Error(plain.error);
    expect(plain.state.volumes[0]!.debug_format).toBe(false);
    // The key is absent from the bytes of a plain volume (as in states written before the flag).
    const raw = encodeState(plain.state);
    expect(new TextDecoder().decode(raw)).not.toContain("debug_format");
    expect(decodeState(raw).volumes[0]!.debug_format).toBe(false);
  });
});
