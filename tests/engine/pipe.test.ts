/** net/pipe.ts: the in-process connection between a client daemon and the target it hosts. */
import { expect, test } from "bun:test";
import { connPair } from "../../src/engine/net/pipe.ts";

const tick = () => new Promise((r) => setTimeout(r, 0));

test("bytes arrive in order, at once, and the sender may reuse its buffer", async () => {
  const [a, b] = connPair();
  const got: number[] = [];
  b.onData = (chunk) => got.push(...chunk);
  const buf = new Uint8Array([1, 2, 3]);
  expect(a.send(buf)).toBe(true);
  buf.fill(9); // reused after send returned
  a.send(new Uint8Array([4]));
  expect(got).toEqual([1, 2, 3, 4]);
});

test("an answer sent from inside onData is delivered after it returns, copied, in order", async () => {
  const [a, b] = connPair();
  const seen: string[] = [];
  const reply = new Uint8Array([7]);
  b.onData = (chunk) => {
    seen.push(`b got ${chunk[0]}`);
    b.send(reply);
    reply[0] = 8; // reused at once: the queued copy still says 7
    b.send(reply);
  };
  a.onData = (chunk) => seen.push(`a got ${chunk[0]}`);
  a.send(new Uint8Array([1]));
  expect(seen).toEqual(["b got 1"]);
  await tick();
  expect(seen).toEqual(["b got 1", "a got 7", "a got 8"]);
});

test("close delivers what was sent, then both ends hear it; later sends are refused", async () => {
  const [a, b] = connPair();
  const events: string[] = [];
  a.onData = () => events.push("a data");
  b.onData = (chunk) => {
    events.push(`b data ${chunk[0]}`);
    if (chunk[0] === 1) {
      b.send(new Uint8Array([2])); // queued: we are inside a delivery
      b.close();
    }
  };
  a.onClose = (why) => events.push(`a closed: ${why}`);
  b.onClose = (why) => events.push(`b closed: ${why}`);
  a.send(new Uint8Array([1]));
  expect(b.send(new Uint8Array([3]))).toBe(false);
  await tick();
  expect(events).toEqual(["b data 1", "a data", "b closed: closed", "a closed: closed by peer"]);
  expect(a.send(new Uint8Array([4]))).toBe(false);
});

test("a receiver that throws closes the connection, not the sender's process", async () => {
  const [a, b] = connPair();
  let closed = "";
  let peer = "";
  a.onClose = (why) => (peer = why);
  b.onData = () => {
    throw new Error("bug");
  };
  b.onClose = (why) => (closed = why);
  expect(() => a.send(new Uint8Array([1]))).not.toThrow();
  await tick();
  expect(closed).toContain("receiver failed: bug");
  expect(peer).toBe("closed by peer");
});
