import { describe, expect, test } from "bun:test";
import { decode, encode } from "cbor-x";
import { apply, type Command, emptyState } from "../../../src/toma/cluster-state.ts";
import { applyProposal, decodeProposal, encodeProposal, fenceVersion, MAX_FENCE_TERM } from "../../../src/toma/consensus/proposal.ts";

const MiB = 1024 * 1024;
const uuid = (n: number) => `00000000-0000-4000-8000-${n.toString(16).padStart(12, "0")}`;
const addDrive = (n: number): Command => ({ kind: "add_drive", drive: { drive_uuid: uuid(n), extent_size_bytes: MiB, extent_count: 8 } });

describe("proposals", () => {
  test("round trip of every command kind", () => {
    const cmds: Command[] = [
      addDrive(1),
      {
        kind: "create_volume",
        uuid: uuid(50),
        name: "v1",
        capacity_bytes: MiB,
        raid_level: "1",
        stripe_width: 1,
        stripe_size_bytes: 0,
        extent_size_bytes: MiB,
        columns: [{ drive_uuid: uuid(1), extents: [0] }, { drive_uuid: uuid(2), extents: [0] }],
        mirrors: 2,
      },
      { kind: "delete_volume", uuid: uuid(50) },
      { kind: "set_legs", uuid: uuid(50), legs: ["ok", "dead"] },
      { kind: "replace_leg", uuid: uuid(50), column: 1, with: { drive_uuid: uuid(3), extents: [2] } },
      { kind: "set_cache_epoch", drive_uuid: uuid(1), cache_epoch: 4 },
    ];
    for (const cmd of cmds) {
      const d = decodeProposal(encodeProposal({ computed_at: 7, cmd }));
      expect(d).toEqual({ ok: true, value: { computed_at: 7, cmd } });
    }
  });

  test("columns travel as runs; an entry written with plain extent lists (before runs) still decodes", () => {
    const cmd: Command = {
      kind: "create_volume",
      uuid: uuid(51),
      name: "big",
      capacity_bytes: 4096 * MiB,
      raid_level: "1",
      stripe_width: 1,
      stripe_size_bytes: 0,
      extent_size_bytes: MiB,
      columns: [
        { drive_uuid: uuid(1), extents: Array.from({ length: 4096 }, (_, i) => i) },
        { drive_uuid: uuid(2), extents: [...Array.from({ length: 4000 }, (_, i) => 100 + i), ...Array.from({ length: 96 }, (_, i) => i)] },
      ],
      mirrors: 2,
    };
    const bytes = encodeProposal({ computed_at: 3, cmd });
    expect(bytes.length).toBeLessThan(400); // the plain form took over 24000
    const wire = decode(bytes) as { cmd: { columns: { runs: number[] }[] } };
    expect(wire.cmd.columns.map((c) => c.runs)).toEqual([[0, 4096], [100, 4000, 0, 96]]);
    expect(decodeProposal(bytes)).toEqual({ ok: true, value: { computed_at: 3, cmd } });
    const replace: Command = { kind: "replace_leg", uuid: uuid(51), column: 1, with: { drive_uuid: uuid(3), extents: [7, 8, 9] } };
    expect(decode(encodeProposal({ computed_at: 4, cmd: replace })).cmd.with).toEqual({ drive_uuid: uuid(3), runs: [7, 3] });
    // The plain form, as a hard-state record on a drive may still hold it.
    for (const c of [cmd, replace]) expect(decodeProposal(encode({ computed_at: 5, cmd: c }))).toEqual({ ok: true, value: { computed_at: 5, cmd: c } });
  });

  test("bad runs in a proposal are refused saying why, and a huge count allocates nothing", () => {
    const col = (runs: unknown) => encode({ computed_at: 1, cmd: { kind: "replace_leg", uuid: uuid(51), column: 0, with: { drive_uuid: uuid(3), runs } } });
    const cases: [unknown, RegExp][] = [
      [[1, 2, 3], /\(start, count\) pairs/],
      [[1, 0], /positive count/],
      [[1, 2, 3, 1], /maximal/],
      [[0, 2 ** 40], /more than 16777216 extents/],
      ["x", /fails validation/],
    ];
    for (const [runs, why] of cases) {
      const d = decodeProposal(col(runs));
      expect(d.ok).toBe(false);
      if (!d.ok) expect(d.error).toMatch(why);
    }
    const both = encode({ computed_at: 1, cmd: { kind: "replace_leg", uuid: uuid(51), column: 0, with: { drive_uuid: uuid(3), runs: [1, 1], extents: [1] } } });
    expect(decodeProposal(both).ok).toBe(false);
  });

  test("a committed proposal sets the state's generation to the entry's index", () => {
    const s0 = emptyState(uuid(0xc1));
    const r = applyProposal(s0, { index: 12, data: encodeProposal({ computed_at: 0, cmd: addDrive(1) }) });
    expect(r.kind).toBe("applied");
    if (r.kind === "applied") expect(r.state.generation).toBe(12);
  });

  test("a proposal computed from another generation is refused, the same on every TOMA", () => {
    const s0 = emptyState(uuid(0xc1));
    const first = applyProposal(s0, { index: 5, data: encodeProposal({ computed_at: 0, cmd: addDrive(1) }) });
    if (first.kind !== "applied") throw new Error("first");
    // Computed from generation 0 too, but the state moved to 5 in between.
    const stale = applyProposal(first.state, { index: 6, data: encodeProposal({ computed_at: 0, cmd: addDrive(2) }) });
    expect(stale).toEqual({ kind: "refused", code: "stale", error: "computed from generation 0, but the state is at generation 5" });
  });

  test("apply's own refusals come through with their code; the no-op changes nothing", () => {
    const s = apply(emptyState(uuid(0xc1)), addDrive(1));
    if (!s.ok) throw new Error(s.error);
    const again = applyProposal(s.state, { index: 9, data: encodeProposal({ computed_at: 1, cmd: addDrive(1) }) });
    expect(again.kind === "refused" && again.code).toBe("invalid");
    expect(applyProposal(s.state, { index: 9, data: new Uint8Array() })).toEqual({ kind: "noop" });
  });

  test("undecodable or invalid payloads are refused, never thrown", () => {
    const s0 = emptyState(uuid(0xc1));
    expect(applyProposal(s0, { index: 2, data: new Uint8Array([0xff]) })).toMatchObject({ kind: "refused", code: "undecodable" });
    const bad = encode({ computed_at: 0, cmd: { kind: "format_everything" } });
    expect(applyProposal(s0, { index: 2, data: bad })).toMatchObject({ kind: "refused", code: "undecodable" });
  });

  test("fence version: term in the high bits, below 2^53", () => {
    expect(fenceVersion(3, 17)).toBe(3 * 2 ** 32 + 17);
    expect(fenceVersion(4, 1)).toBeGreaterThan(fenceVersion(3, 2 ** 32 - 1));
    expect(Number.isSafeInteger(fenceVersion(MAX_FENCE_TERM, 2 ** 32 - 1))).toBe(true);
    expect(() => fenceVersion(MAX_FENCE_TERM + 1, 0)).toThrow(/beyond/);
  });

  test("commands name volumes by uuid: a command for a deleted volume never reaches the one that took its name", () => {
    let s = emptyState(uuid(0xc1));
    const step = (cmd: Parameters<typeof apply>[1]) => {
      const r = applyProposal(s, { index: s.generation + 1, data: encodeProposal({ computed_at: s.generation, cmd }) });
      if (r.kind !== "applied") throw new Error(r.kind === "refused" ? r.error : r.kind);
      s = r.state;
    };
    step(addDrive(1));
    step(addDrive(2));
    const mirror = (u: number, extent: number) => ({
      kind: "create_volume" as const,
      uuid: uuid(u),
      name: "v1",
      capacity_bytes: MiB,
      raid_level: "1" as const,
      stripe_width: 1,
      stripe_size_bytes: 0,
      extent_size_bytes: MiB,
      columns: [{ drive_uuid: uuid(1), extents: [extent] }, { drive_uuid: uuid(2), extents: [extent] }],
      mirrors: 2,
    });
    step(mirror(50, 0));
    step({ kind: "delete_volume", uuid: uuid(50) });
    step(mirror(51, 1));
    // A step computed for the first "v1", applied to the current state (computed_at matching):
    // it names a volume that no longer exists, not the new one of the same name.
    const r = applyProposal(s, {
      index: s.generation + 1,
      data: encodeProposal({ computed_at: s.generation, cmd: { kind: "set_legs", uuid: uuid(50), legs: ["ok", "dead"] } }),
    });
    expect(r).toEqual({ kind: "refused", code: "not_found", error: `no volume ${uuid(50)}` });
    expect(s.volumes.map((v) => [v.uuid, v.legs])).toEqual([[uuid(51), ["ok", "ok"]]]);
  });

  test("a command naming a volume by name (the earlier shape) is refused whole", () => {
    const s0 = emptyState(uuid(0xc1));
    for (const cmd of [
      { kind: "delete_volume", name: "v1" },
      { kind: "set_legs", name: "v1", legs: ["ok", "dead"] },
      { kind: "replace_leg", name: "v1", column: 1, with: { drive_uuid: uuid(3), extents: [2] } },
    ]) {
      expect(applyProposal(s0, { index: 1, data: encode({ computed_at: 0, cmd }) })).toMatchObject({ kind: "refused", code: "undecodable" });
    }
  });
});
