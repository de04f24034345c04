/**
 * The founders' decision to take over a single-TOMA cluster state (single-toma-state.ts,
 * bootstrap.ts): the single TOMA's rule over the union of the founders' reports, the same
 * decision whoever computes it, and the cases where they wait.
 */
import { describe, expect, test } from "bun:test";
import { type PeerAnswer, bootstrapDecision } from "../../../src/toma/consensus/bootstrap.ts";
import { votersConfig } from "../../../src/toma/consensus/config.ts";
import { encodeRecord } from "../../../src/toma/consensus/hard-state-record.ts";
import { classifySlot, decideTakeover, reportOf, type SingleTomaReport } from "../../../src/toma/consensus/single-toma-state.ts";
import { encode } from "cbor-x";
import { type ClusterState, decodeState, emptyState, encodeState } from "../../../src/toma/cluster-state.ts";

const uuid = (n: number) => `00000000-0000-4000-8000-${n.toString(16).padStart(12, "0")}`;
const CLUSTER = uuid(0xc1);
const d = (n: number) => uuid(0xd00 + n);

function stateOf(generation: number, drives: string[], term = 4, cluster = CLUSTER): ClusterState {
  return {
    ...emptyState(cluster),
    generation,
    term,
    drives: drives.map((u) => ({ drive_uuid: u, extent_size_bytes: 1 << 20, extent_count: 8 })),
  };
}
const slot = (drive: number, s: ClusterState | null) => ({ drive_uuid: d(drive), generation: s?.generation ?? 0, payload: s ? encodeState(s) : null });

describe("reports", () => {
  test("a TOMA reports the drives it heard and each distinct state with its drives", () => {
    const s5 = stateOf(5, [d(1), d(2), d(3)]);
    const s4 = stateOf(4, [d(1), d(2), d(3)]);
    const r = reportOf([slot(1, s5), slot(2, s4), slot(4, null)]);
    expect(r.heard).toEqual([d(1), d(2), d(4)]);
    expect(r.states.map((x) => x.drives)).toEqual(expect.arrayContaining([[d(1)], [d(2)]]));
    expect(r.states.length).toBe(2);
  });

  test("a state not at its slot's generation, garbage, a hard-state record: not a single-TOMA state, not heard", () => {
    const s5 = stateOf(5, [d(1)]);
    expect(classifySlot({ drive_uuid: d(1), generation: 6, payload: encodeState(s5) }).kind).toBe("unknown");
    expect(classifySlot({ drive_uuid: d(1), generation: 6, payload: new Uint8Array([1, 2, 3]) }).kind).toBe("unknown");
    expect(classifySlot({ drive_uuid: d(1), generation: 3, payload: null }).kind).toBe("unknown");
    const rec = encodeRecord({
      kind: "nvmesh.toma.hard-state",
      format: 1,
      cluster_uuid: CLUSTER,
      toma_id: "s1",
      incarnation: "00000000000000a1",
      seq: 7,
      drives: [d(1)],
      anchor_seq: 0,
      term: 1,
      vote: null,
      commit: 1,
      snapshot: { index: 1, term: 1, config: votersConfig(["s1#00000000000000a1"]), data: new Uint8Array() },
      entries: [],
    });
    expect(classifySlot({ drive_uuid: d(1), generation: 7, payload: rec }).kind).toBe("record");
    expect(reportOf([{ drive_uuid: d(1), generation: 6, payload: encodeState(s5) }])).toEqual({ heard: [], states: [] });
  });
});

describe("decideTakeover", () => {
  const s5 = stateOf(5, [d(1), d(2), d(3)]);
  const s6 = stateOf(6, [d(1), d(2), d(3)], 5);

  test("the highest generation over every report, once a majority of its drives was heard; snapshot above its term and generation", () => {
    const t = decideTakeover([reportOf([slot(1, s5)]), reportOf([slot(2, s6)]), reportOf([])]);
    expect(t.kind).toBe("adopt");
    if (t.kind !== "adopt") return;
    expect(t.state).toEqual(s6);
    expect([t.snapshot_index, t.snapshot_term, t.heard, t.of]).toEqual([7, 6, 2, 3]);
  });

  test("too few of the state's drives heard: wait, saying which", () => {
    const t = decideTakeover([reportOf([slot(2, s6)]), reportOf([slot(9, null)])]);
    expect(t.kind).toBe("wait");
    expect((t as { reason: string }).reason).toContain(`read 1 of them, 2 needed before it can be taken over (not read: ${d(1)}, ${d(3)})`);
  });

  test("a drive newer than what a majority shows still wins (a partial write the single TOMA would adopt too)", () => {
    const t = decideTakeover([reportOf([slot(1, s5), slot(2, s5)]), reportOf([slot(3, s6)])]);
    expect(t.kind === "adopt" && t.state.generation).toBe(6);
  });

  test("two states of one generation: the one on more drives, the same for every order of reports", () => {
    const other = { ...s5, volumes: [] as ClusterState["volumes"], retired: [{ volume_uuid: uuid(9), drive_uuid: d(1), extents: [1] }] as ClusterState["retired"] };
    const a = reportOf([slot(1, s5), slot(2, s5)]);
    const b = reportOf([slot(3, other)]);
    const x = decideTakeover([a, b]);
    const y = decideTakeover([b, a]);
    expect(x).toEqual(y);
    expect(x.kind === "adopt" && x.state).toEqual(s5);
  });

  // One volume on one drive whose extents are scattered (every other one): one run per extent.
  function scattered(generation: number, n: number): ClusterState {
    const st = stateOf(generation, [d(1)]);
    st.drives = [{ drive_uuid: d(1), extent_size_bytes: 1 << 20, extent_count: 2 * n }];
    const extents = Array.from({ length: n }, (_, i) => 2 * i);
    st.volumes = [
      {
        uuid: uuid(0x77),
        name: "v",
        capacity_bytes: n * (1 << 20),
        raid_level: "concatenated",
        stripe_width: 1,
        stripe_size_bytes: 0,
        extent_size_bytes: 1 << 20,
        columns: [{ drive_uuid: d(1), extents }],
        mirrors: 1,
        legs: ["ok"],
        rebuild_blank: [false],
        topology_seq: 1,
        created_seq: 1,
        debug_format: false,
      },
    ];
    return st;
  }

  test("a state larger than a TOMA cluster's state may take: wait, saying so", () => {
    const big = scattered(9, 120_000);
    const r = reportOf([{ drive_uuid: d(1), generation: 9, payload: encodeState(big) }]);
    const t = decideTakeover([r]);
    expect(t.kind).toBe("wait");
    expect((t as { reason: string }).reason).toMatch(/takes \d+ bytes, above the 524288 a TOMA cluster's state may take/);
  });

  test("a state the single TOMA wrote with plain extent lists (format 1) is taken over as runs", () => {
    const st = scattered(9, 10);
    st.volumes[0]!.columns[0]!.extents = Array.from({ length: 5000 }, (_, i) => i);
    st.drives[0]!.extent_count = 5000;
    st.volumes[0]!.capacity_bytes = 5000 * (1 << 20);
    const old = encode({ ...st, format: 1 });
    const t = decideTakeover([reportOf([{ drive_uuid: d(1), generation: 9, payload: old }])]);
    expect(t.kind).toBe("adopt");
    if (t.kind !== "adopt") return;
    expect(t.data).toEqual(encodeState(st));
    expect(t.data.length).toBeLessThan(old.length / 20);
    expect({ ...decodeState(t.data), format: 1 }).toEqual({ ...st, format: 1 });
  });

  test("no state anywhere: none; states of two clusters: wait", () => {
    expect(decideTakeover([reportOf([slot(1, null)]), reportOf([])])).toEqual({ kind: "none" });
    const foreign = stateOf(7, [d(4)], 1, uuid(0xc2));
    expect(decideTakeover([reportOf([slot(1, s5)]), reportOf([slot(4, foreign)])]).kind).toBe("wait");
  });
});

describe("bootstrap with a single-TOMA state", () => {
  const s6 = stateOf(6, [d(1), d(2), d(3)], 5);
  const peers = ["s1", "s2", "s3"];
  const blank = (t: string, inc: string, proposal: number, report: SingleTomaReport): PeerAnswer => ({
    toma_id: t,
    incarnation: inc,
    address: `${t}:4000`,
    proposal_uuid: uuid(proposal),
    status: { kind: "blank" },
    single_toma: report,
  });
  const a1 = blank("s1", "00000000000000a1", 7, reportOf([slot(1, s6)]));
  const a2 = blank("s2", "00000000000000a2", 3, reportOf([slot(2, s6)]));
  const a3 = blank("s3", "00000000000000a3", 9, reportOf([slot(3, null)]));

  test("every founder forms the cluster of the state's uuid, with the state as its first snapshot", () => {
    const from1 = bootstrapDecision(a1, peers, [a2, a3]);
    const from3 = bootstrapDecision(a3, peers, [a1, a2]);
    expect(from1).toEqual(from3);
    expect(from1.kind).toBe("form");
    if (from1.kind !== "form") return;
    expect(from1.cluster_uuid).toBe(CLUSTER);
    expect(from1.takeover?.state).toEqual(s6);
  });

  test("a founder adopting the cluster takes over the same state; with a founder restarted (no report) it starts with nothing, the leader's snapshot to come", () => {
    const formed = bootstrapDecision(a1, peers, [a2, a3]);
    if (formed.kind !== "form") throw new Error("not formed");
    const m1: PeerAnswer = { ...a1, status: { kind: "member", cluster_uuid: CLUSTER, config: formed.config } };
    const adopted = bootstrapDecision(a3, peers, [m1, a2]);
    expect(adopted).toEqual({ kind: "adopt", cluster_uuid: CLUSTER, config: formed.config, takeover: formed.takeover });
    const { single_toma: _, ...restarted } = m1;
    expect(bootstrapDecision(a3, peers, [restarted, a2])).toEqual({ kind: "adopt_blank", cluster_uuid: CLUSTER, config: formed.config });
  });

  test("the state on too few drives: no founder forms", () => {
    const lone = blank("s2", "00000000000000a2", 3, reportOf([]));
    const c = blank("s3", "00000000000000a3", 9, reportOf([]));
    expect(bootstrapDecision(a1, peers, [lone, c]).kind).toBe("wait");
  });
});
