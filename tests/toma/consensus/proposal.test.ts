import { describe, expect, test } from "bun:test";
import { encode } from "cbor-x";
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
      { kind: "delete_volume", name: "v1" },
      { kind: "set_legs", name: "v1", legs: ["ok", "dead"] },
      { kind: "replace_leg", name: "v1", column: 1, with: { drive_uuid: uuid(3), extents: [2] } },
      { kind: "set_cache_epoch", drive_uuid: uuid(1), cache_epoch: 4 },
    ];
    for (const cmd of cmds) {
      const d = decodeProposal(encodeProposal({ computed_at: 7, cmd }));
      expect(d).toEqual({ ok: true, value: { computed_at: 7, cmd } });
    }
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
});
