/**
 * The client daemon's TOMA link (src/engine/client/toma-link.ts): a watch answer's numbers are
 * checked before the daemon acts on them (in a TOMA cluster any TOMA may answer a watch), and a
 * 410 means the TOMA no longer knows the client.
 */
import { expect, test } from "bun:test";
import { AttachError, UnknownClientError } from "../../src/engine/client/daemon.ts";
import { tomaLinkOver } from "../../src/engine/client/toma-link.ts";

const over = (answer: unknown) => tomaLinkOver(async (method, path) => {
  expect(method).toBe("GET");
  expect(path).toBe("/v1/clients/7/watch?known=3&stable=2");
  return answer;
});

test("a watch answer is checked: generations are integers, the stable one never above the generation", async () => {
  const good = { generation: 5, stable_generation: 4, acked: 4, volumes: [] };
  expect(await over(good).watch(7, 3, 2)).toEqual(good);
  // From a TOMA that does not send `acked` (older ones), still valid.
  expect(await over({ generation: 5, stable_generation: 5, volumes: [] }).watch(7, 3, 2)).toEqual({ generation: 5, stable_generation: 5, volumes: [] });
  for (const bad of [
    null,
    "5",
    { generation: 5, stable_generation: 6, volumes: [] },
    { generation: -1, stable_generation: 0, volumes: [] },
    { generation: 5.5, stable_generation: 0, volumes: [] },
    { generation: 5, stable_generation: 0, acked: "4", volumes: [] },
    { generation: 5, stable_generation: 0 },
    { stable_generation: 0, volumes: [] },
  ]) {
    const e = await over(bad).watch(7, 3, 2).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(AttachError);
    expect((e as AttachError).code).toBe("invalid");
  }
});

test("a 410 is an unknown client: the daemon registers again", async () => {
  const link = tomaLinkOver(async () => {
    throw Object.assign(new Error("client 7 is not registered"), { status: 410 });
  });
  expect(await link.watch(7, 3, 2).catch((x: unknown) => x)).toBeInstanceOf(UnknownClientError);
});
