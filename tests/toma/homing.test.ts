/**
 * homedCall over a scripted set of TOMAs (the call function is its seam: the daemon's passes the
 * real management client, the simulator its own link): following a 421 to the leader, and
 * learning the other TOMAs from a home's cluster view only where the caller asks for it.
 */
import { expect, test } from "bun:test";
import { homedCall } from "../../src/toma/homing.ts";
import { testEnv } from "./harness.ts";

type Sent = { address: string; method: string; path: string };

/** `a` is a follower naming `b` the leader; `b` answers and lists `a`, `b` and `c` as peers. */
function cluster(sent: Sent[]) {
  return async (address: string, method: string, path: string): Promise<unknown> => {
    sent.push({ address, method, path });
    if (address === "a") throw Object.assign(new Error("not the leader"), { status: 421, leader: "b" });
    if (path === "/v1/cluster") return { consensus: { address: "b", peers: [{ address: "a" }, { address: "b" }, { address: "c" }] } };
    return { ok: address };
  };
}

test("a 421 is followed to the leader, which becomes the home; its cluster view names the other TOMAs", async () => {
  const sent: Sent[] = [];
  const h = homedCall(testEnv(), ["a"], cluster(sent));
  expect(await h.call("POST", "/v1/x", {})).toEqual({ ok: "b" });
  expect(h.home()).toBe("b");
  for (let i = 0; i < 100 && !h.known().includes("c"); i++) await Bun.sleep(2);
  expect(h.known().sort()).toEqual(["a", "b", "c"]);
  expect(sent.filter((s) => s.path === "/v1/cluster").map((s) => s.address)).toEqual(["b"]);
});

test("learn_peers off: only the calls themselves are sent (a caller whose call is one kind, whatever the path)", async () => {
  const sent: Sent[] = [];
  const h = homedCall(testEnv(), ["a"], cluster(sent), { who: "drive report", learn_peers: false });
  expect(await h.call("POST", "", {})).toEqual({ ok: "b" });
  expect(await h.call("POST", "", {})).toEqual({ ok: "b" });
  await Bun.sleep(20);
  expect(sent.map((s) => `${s.address} ${s.method} ${s.path}`)).toEqual(["a POST ", "b POST ", "b POST "]);
  expect(h.known()).toEqual(["a", "b"]);
});
