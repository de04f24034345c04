/**
 * A relayed client call follows the leader (src/toma/cluster/relay-follow.ts): over a scripted
 * relay whose TOMAs hang, refuse or answer, and a leader that changes under a call in flight.
 * Short timings on the real clock; nothing here asserts how long anything took.
 */
import { expect, test } from "bun:test";
import { followLeader } from "../../src/toma/cluster/relay-follow.ts";
import { testEnv } from "./harness.ts";

const FAST = { poll_ms: 5, budget_ms: 2000, retry_ms: 5 };
const refusal = (status: number, leader?: string) => Object.assign(new Error(`HTTP ${status}`), { status, leader });

/** Per address: what each call there does, in turn (the last repeats); records where calls went. */
function scripted(plan: Record<string, (() => Promise<unknown>)[]>) {
  const sent: string[] = [];
  const relay = async (address: string, method: string, path: string) => {
    sent.push(`${address} ${method} ${path}`);
    const steps = plan[address] ?? [() => Promise.reject(refusal(0))];
    const i = sent.filter((s) => s.startsWith(`${address} `)).length - 1;
    return await steps[Math.min(i, steps.length - 1)]!();
  };
  return { sent, relay };
}
const hang = () => new Promise<never>(() => {});

test("a call in flight to a leader that is no longer the leader is sent again to the new one, and its answer returned", async () => {
  let leader = "a";
  const { sent, relay } = scripted({ a: [hang], b: [async () => ({ ok: "b" })] });
  const call = followLeader(testEnv(), () => ({ address: leader }), relay, FAST)("a", "GET", "/v1/clients/5/watch?known=3&stable=3");
  await Bun.sleep(20);
  expect(sent).toEqual(["a GET /v1/clients/5/watch?known=3&stable=3"]);
  leader = "b";
  expect(await call).toEqual({ ok: "b" });
  expect(sent).toEqual(["a GET /v1/clients/5/watch?known=3&stable=3", "b GET /v1/clients/5/watch?known=3&stable=3"]);
});

test("a leader just elected (503) or unreachable for a moment is asked again until it takes the call; one that no longer leads (421) is left for the one it names", async () => {
  const { sent, relay } = scripted({
    a: [() => Promise.reject(refusal(421, "b"))],
    b: [() => Promise.reject(refusal(503)), () => Promise.reject(refusal(0)), async () => ({ acked: true })],
  });
  expect(await followLeader(testEnv(), () => ({ address: "a" }), relay, FAST)("a", "POST", "/v1/clients/5/ack", { generation: 9 })).toEqual({ acked: true });
  expect(sent).toEqual(["a POST /v1/clients/5/ack", "b POST /v1/clients/5/ack", "b POST /v1/clients/5/ack", "b POST /v1/clients/5/ack"]);
});

test("a registration is sent once (it creates a client), whatever the leader does meanwhile", async () => {
  let leader = "a";
  let release = (_: unknown) => {};
  const { sent, relay } = scripted({ a: [() => new Promise((r) => (release = r))], b: [async () => ({ client_id: 2 })] });
  const call = followLeader(testEnv(), () => ({ address: leader }), relay, FAST)("a", "POST", "/v1/clients", { name: "vm" });
  await Bun.sleep(10);
  leader = "b";
  await Bun.sleep(20);
  release({ client_id: 1 });
  expect(await call).toEqual({ client_id: 1 });
  expect(sent).toEqual(["a POST /v1/clients"]);
  const refused = scripted({ a: [() => Promise.reject(refusal(503))] });
  await expect(followLeader(testEnv(), () => ({ address: "a" }), refused.relay, FAST)("a", "POST", "/v1/clients", {})).rejects.toMatchObject({ status: 503 });
  expect(refused.sent.length).toBe(1);
});

test("the leader's own refusal (not a matter of reaching it) is answered at once; no leader that takes the call within the budget: the last error", async () => {
  const conflict = scripted({ a: [() => Promise.reject(refusal(409))] });
  await expect(followLeader(testEnv(), () => ({ address: "a" }), conflict.relay, FAST)("a", "POST", "/v1/clients/5/attach/v", {})).rejects.toMatchObject({ status: 409 });
  expect(conflict.sent.length).toBe(1);

  const down = scripted({ a: [() => Promise.reject(refusal(0))] });
  await expect(followLeader(testEnv(), () => ({ address: "a" }), down.relay, { ...FAST, budget_ms: 100 })("a", "POST", "/v1/clients/5/report", {})).rejects.toMatchObject({ status: 0 });
  expect(down.sent.length).toBeGreaterThan(1);

  const silent = scripted({ a: [hang] });
  await expect(followLeader(testEnv(), () => ({ address: "a" }), silent.relay, { ...FAST, budget_ms: 100 })("a", "GET", "/v1/clients/5/watch")).rejects.toMatchObject({ status: 0 });
  expect(silent.sent.length).toBe(1);
});
