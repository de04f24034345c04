/**
 * Clients in a TOMA cluster: their registrations in the replicated state (cluster-state.ts, and
 * the stable generation proposals carry), the registry's replicated mode (a client fenced out
 * everywhere counts until its removal is committed; a client heard by another TOMA is not
 * expired), each client's secret derived from the server key, and each TOMA's hearing of clients.
 */
import { describe, expect, test } from "bun:test";
import { realEnv } from "../../src/engine/runtime/real-env.ts";
import { clientSecret } from "../../src/toma/api-auth.ts";
import { ClientHearing } from "../../src/toma/cluster/client-hearing.ts";
import { apply, type ClusterState, type Command, CorruptStateError, decodeState, emptyState, encodeState } from "../../src/toma/cluster-state.ts";
import { ClientRegistry } from "../../src/toma/clients.ts";
import { applyProposal, encodeProposal } from "../../src/toma/consensus/proposal.ts";
import { quietLogger } from "./harness.ts";

const MiB = 1024 * 1024;
const uuid = (n: number) => `00000000-0000-4000-8000-${n.toString(16).padStart(12, "0")}`;
const D1 = uuid(1);
const V = uuid(0x100);

function must(s: ClusterState, cmd: Command): ClusterState {
  const r = apply(s, cmd);
  if (!r.ok) throw new Error(r.error);
  return r.state;
}

function withVolume(): ClusterState {
  let s = must(emptyState(uuid(0xc1)), { kind: "add_drive", drive: { drive_uuid: D1, extent_size_bytes: MiB, extent_count: 4 } });
  s = must(s, {
    kind: "create_volume",
    uuid: V,
    name: "v",
    capacity_bytes: 2 * MiB,
    raid_level: "concatenated",
    stripe_width: 1,
    stripe_size_bytes: 0,
    extent_size_bytes: MiB,
    columns: [{ drive_uuid: D1, extents: [0, 1] }],
    mirrors: 1,
  });
  return s;
}

describe("client commands of the replicated state", () => {
  test("register, attach, remove; each refusal changes nothing", () => {
    let s = withVolume();
    s = must(s, { kind: "register_client", id: 7, name: "c1" });
    expect(s.clients).toEqual([{ id: 7, name: "c1", volumes: [] }]);
    const twice = apply(s, { kind: "register_client", id: 7, name: "again" });
    expect(twice.ok).toBe(false);
    s = must(s, { kind: "attach_client", id: 7, volume_uuid: V });
    expect(s.clients[0]!.volumes).toEqual([V]);
    for (const bad of [
      { kind: "attach_client", id: 7, volume_uuid: V },
      { kind: "attach_client", id: 8, volume_uuid: V },
      { kind: "attach_client", id: 7, volume_uuid: uuid(0x999) },
      { kind: "remove_client", id: 8 },
      { kind: "register_client", id: 0, name: "zero" },
    ] as Command[]) {
      const r = apply(s, bad);
      expect(r.ok).toBe(false);
    }
    const gone = must(s, { kind: "remove_client", id: 7 });
    expect(gone.clients).toEqual([]);
    expect(gone.generation).toBe(s.generation + 1);
  });

  test("deleting a volume takes it out of its clients' records", () => {
    let s = withVolume();
    s = must(s, { kind: "register_client", id: 7, name: "c1" });
    s = must(s, { kind: "attach_client", id: 7, volume_uuid: V });
    s = must(s, { kind: "delete_volume", uuid: V });
    expect(s.clients).toEqual([{ id: 7, name: "c1", volumes: [] }]);
  });

  test("clients and the stable generation survive encode/decode; a state without them keeps its bytes", () => {
    const plain = withVolume();
    const bytes = encodeState(plain);
    let s = must(plain, { kind: "register_client", id: 7, name: "c1" });
    s = must(s, { kind: "attach_client", id: 7, volume_uuid: V });
    s = { ...s, stable: s.generation - 1 };
    expect(decodeState(encodeState(s))).toEqual(s);
    // The single TOMA's states (no client, no stable generation) encode as before these fields.
    expect(encodeState({ ...plain, clients: [], stable: 0 })).toEqual(bytes);
    expect(encodeState(decodeState(bytes))).toEqual(bytes);
  });

  test("decode refuses a client of an unknown volume, a client twice, a stable generation above the state's", () => {
    const s = must(withVolume(), { kind: "register_client", id: 7, name: "c1" });
    const bad: ClusterState[] = [
      { ...s, clients: [{ id: 7, name: "c1", volumes: [uuid(0x999)] }] },
      { ...s, clients: [...s.clients, ...s.clients] },
      { ...s, stable: s.generation + 1 },
    ];
    for (const b of bad) expect(() => decodeState(encodeState(b))).toThrow(CorruptStateError);
  });

  test("a proposal's stable generation is kept (the highest), never above what it was computed from", () => {
    const s = withVolume();
    const at = (stable: number | undefined, computed_at = s.generation) =>
      applyProposal(s, { index: s.generation + 1, data: encodeProposal({ computed_at, cmd: { kind: "register_client", id: 9, name: "c" }, ...(stable === undefined ? {} : { stable }) }) });
    const a = at(s.generation);
    expect(a.kind === "applied" && a.state.stable).toBe(s.generation);
    const none = at(undefined);
    expect(none.kind === "applied" && none.state.stable).toBe(0);
    const lower = applyProposal({ ...s, stable: s.generation }, { index: s.generation + 1, data: encodeProposal({ computed_at: s.generation, cmd: { kind: "register_client", id: 9, name: "c" }, stable: 1 }) });
    expect(lower.kind === "applied" && lower.state.stable).toBe(s.generation);
    const above = at(s.generation + 1);
    expect(above.kind).toBe("refused");
  });
});

describe("the registry of a TOMA cluster", () => {
  const env = () => realEnv("cluster-clients-test", quietLogger);
  const timings = (client_timeout_ms: number) => ({ client_timeout_ms, watch_hold_ms: 1000 });

  test("a client fenced out everywhere still counts until its removal is committed (drop)", async () => {
    const r = new ClientRegistry(env(), timings(0), { replicated: true });
    const a = r.add(11, "a", ["m"], 3);
    const b = r.add(12, "b", ["m"], 3);
    await Bun.sleep(2);
    r.ack(b, 5);
    r.heard(b);
    expect(r.expireSilent(() => ["D"])).toEqual([a, b]);
    r.fenced(a, "D");
    expect(a.gone).toBe(true);
    // Gone, not forgotten: a new leader would restore it until its removal is committed.
    expect(r.all()).toContain(a);
    expect(r.stable(6)).toBe(3);
    r.drop(a);
    expect(r.all()).not.toContain(a);
  });

  test("a client heard by another TOMA within the timeout is not expired; one heard by nobody is", async () => {
    const r = new ClientRegistry(env(), timings(40));
    const a = r.add(11, "a", ["m"], 3);
    const b = r.add(12, "b", ["m"], 3);
    await Bun.sleep(60);
    // Another TOMA heard `a` 5 ms before its report arrived, and `b` 100 ms before: older than our own hearing.
    r.heardVia(a.id, 5);
    r.heardVia(b.id, 100);
    expect(r.expireSilent(() => ["D"])).toEqual([b]);
    expect(r.live(a.id)).toBe(a);
  });

  test("a secret is derived from the server key and the id, and from nothing else", () => {
    const k1 = new Uint8Array(32).fill(1);
    const k2 = new Uint8Array(32).fill(2);
    expect(clientSecret(k1, 5)).toEqual(clientSecret(k1, 5));
    expect(clientSecret(k1, 5).length).toBe(32);
    expect(clientSecret(k1, 5)).not.toEqual(clientSecret(k1, 6));
    expect(clientSecret(k1, 5)).not.toEqual(clientSecret(k2, 5));
    const r = new ClientRegistry(env(), timings(1000), { secretOf: (id) => clientSecret(k1, id) });
    expect(r.add(5, "c", [], 0).secret).toEqual(clientSecret(k1, 5));
  });
});

test("each TOMA's hearing of clients: ages on its own clock, old ones dropped", () => {
  let now = 1000;
  const h = new ClientHearing(() => now);
  h.heard(1);
  now += 300;
  h.heard(2);
  now += 200;
  expect(h.report()).toEqual([
    { id: 1, heard_ms_ago: 500 },
    { id: 2, heard_ms_ago: 200 },
  ]);
  h.heard(1);
  now += 200_000;
  expect(h.report()).toEqual([]);
});
