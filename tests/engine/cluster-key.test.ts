/**
 * The cluster's keys and the data path's proofs: known answers (computed apart, with Python's
 * hmac module, from the format docs/protocol.md gives), the one-way client key, key files.
 */
import { expect, test } from "bun:test";
import {
  asClientKey,
  clientKeyOf,
  formatKeyFile,
  keyedDigest,
  parseKeyFile,
  requesterProof,
  serverKeys,
  targetProof,
} from "../../src/engine/wire/cluster-key.ts";

const KEY = Uint8Array.from({ length: 32 }, (_, i) => i);
const NONCE = Uint8Array.from({ length: 16 }, (_, i) => 0x10 + i);
const CHALLENGE = Uint8Array.from({ length: 16 }, (_, i) => 0x20 + i);
const hex = (b: Uint8Array) => Buffer.from(b).toString("hex");

test("known answers: client key, target and requester proofs", () => {
  const client = clientKeyOf(KEY);
  expect(hex(client)).toBe("bb9c18e1bffc424b77bed8a1a47ec525b116f1da81069fac3da62d2bf624aded");
  expect(hex(targetProof({ kind: "server", key: KEY }, NONCE, CHALLENGE))).toBe("639b494afb448ed99ecb118bff354ca386a8e94c1cfef8c7b5c025d5ed4ea588");
  expect(hex(targetProof({ kind: "client", key: client }, NONCE, CHALLENGE))).toBe("c40015b03810e373684590ee9ab9ef98956e49837041fc29e405ce480cd9c7d2");
  expect(hex(requesterProof({ kind: "server", key: KEY }, CHALLENGE, NONCE, "toma", "t1"))).toBe("fcde144dac1a32e4c6258dd54d58db24fff35493ce2657fdd2ba5d6c7f4ffab4");
});

test("every part of a proof counts: kind, nonce, challenge, role, name; parts cannot slide into each other", () => {
  const s = { kind: "server" as const, key: KEY };
  const base = hex(requesterProof(s, CHALLENGE, NONCE, "toma", "t1"));
  const variants = [
    requesterProof({ kind: "client", key: KEY }, CHALLENGE, NONCE, "toma", "t1"),
    requesterProof(s, NONCE, CHALLENGE, "toma", "t1"),
    requesterProof(s, CHALLENGE, NONCE, "client", "t1"),
    requesterProof(s, CHALLENGE, NONCE, "toma", "t2"),
    // "toma"+"t1" vs "tomat"+"1": the length prefixes keep them apart.
    requesterProof(s, CHALLENGE, NONCE, "tomat", "1"),
  ];
  for (const v of variants) expect(hex(v)).not.toBe(base);
  expect(hex(keyedDigest(KEY, "x", ["ab", "c"]))).not.toBe(hex(keyedDigest(KEY, "x", ["a", "bc"])));
});

test("a client host's key gives nothing of the server key: derived one way, and derived again stays itself", () => {
  const keys = serverKeys(KEY);
  expect(keys.client.key).toEqual(clientKeyOf(KEY));
  expect(asClientKey(keys.server)).toEqual(keys.client);
  expect(asClientKey(keys.client)).toBe(keys.client);
  // A proof made with the client key is not one of the server key.
  expect(hex(targetProof(keys.client, NONCE, CHALLENGE))).not.toBe(hex(targetProof({ kind: "client", key: KEY }, NONCE, CHALLENGE)));
  expect(() => serverKeys(new Uint8Array(16))).toThrow(/32 bytes/);
});

test("key files: the server key is bare hex (as before), a client key says so; anything else is refused saying why", () => {
  const server = formatKeyFile({ kind: "server", key: KEY });
  expect(server).toBe(`${hex(KEY)}\n`);
  expect(parseKeyFile(server)).toEqual({ kind: "server", key: KEY });
  const client = formatKeyFile({ kind: "client", key: clientKeyOf(KEY) });
  expect(client).toBe(`client:${hex(clientKeyOf(KEY))}\n`);
  expect(parseKeyFile(`  ${client}  `)).toEqual({ kind: "client", key: clientKeyOf(KEY) });
  expect(parseKeyFile(hex(KEY).toUpperCase()).key).toEqual(KEY);
  for (const bad of ["", "not a key", hex(KEY).slice(2), `server:${hex(KEY)}`, `client:${hex(KEY)}00`, `client: ${hex(KEY)}`]) {
    expect(() => parseKeyFile(bad)).toThrow(/64 hex digits/);
  }
});
