/**
 * The role a target serves a connection as, by the key it proved and the role it named: the
 * whole table (src/engine/target/capability.ts).
 */
import { expect, test } from "bun:test";
import { randomBytes } from "node:crypto";
import { admission, challengeFor } from "../../src/engine/target/capability.ts";
import { type ClusterKey, requesterProof, serverKeys, targetProof } from "../../src/engine/wire/cluster-key.ts";

const keys = serverKeys(new Uint8Array(randomBytes(32)));
const challenge = new Uint8Array(randomBytes(16));
const nonce = new Uint8Array(randomBytes(16));
const pending = (role: "client" | "toma" | "admin", key: "server" | "client" | undefined) => ({
  hello: { version: 1 as const, role, name: "n", nonce, ...(key ? { key } : {}) },
  challenge,
  nonce,
});
const proofBy = (k: ClusterKey, role: string) => requesterProof(k, challenge, nonce, role, "n");

test("served as: the named role with the server key; a client with the client key, whatever it named", () => {
  const cases: ["client" | "toma" | "admin", "server" | "client" | undefined, string][] = [
    ["toma", "server", "toma"],
    ["toma", undefined, "toma"], // a HELLO that names no key means the server key
    ["admin", "server", "admin"],
    ["client", "server", "client"],
    ["client", "client", "client"],
    ["toma", "client", "client (named toma)"],
    ["admin", "client", "client (named admin)"],
  ];
  for (const [role, kind, served] of cases) {
    const k = kind === "client" ? keys.client : keys.server;
    const a = admission(keys, pending(role, kind), proofBy(k, role));
    const got = "refused" in a ? `refused: ${a.refused}` : a.downgraded ? `${a.role} (named ${a.downgraded})` : a.role;
    expect(`${role}/${kind ?? "none"} → ${got}`).toBe(`${role}/${kind ?? "none"} → ${served}`);
  }
});

test("refused: no proof, another key's proof, a proof for the other kind or another role", () => {
  const other: ClusterKey = { kind: "server", key: new Uint8Array(32) };
  const refusals = [
    admission(keys, pending("toma", "server"), null),
    admission(keys, pending("toma", "server"), proofBy(other, "toma")),
    // Names the server key, proves the client key (and the other way round).
    admission(keys, pending("client", "server"), proofBy(keys.client, "client")),
    admission(keys, pending("client", "client"), proofBy(keys.server, "client")),
    // A proof made for role client does not admit a HELLO that named toma.
    admission(keys, pending("toma", "server"), proofBy(keys.server, "client")),
  ];
  for (const a of refusals) expect("refused" in a && a.refused).toMatch(/did not prove it holds the (server|client) key/);
});

test("the target proves the key the requester named", () => {
  expect(challengeFor(keys, pending("client", "client")).proof).toEqual(targetProof(keys.client, nonce, challenge));
  expect(challengeFor(keys, pending("toma", undefined)).proof).toEqual(targetProof(keys.server, nonce, challenge));
});
