/**
 * TargetLink.suspect: the link goes down for the reason given (a request unanswered), and says so
 * in last_error, in its "target down" log line and in the failure of every request still out on
 * the session it closes; a suspicion about a session the link has since replaced changes nothing.
 * A real target over a loopback socket.
 */
import { afterEach, expect, test } from "bun:test";
import { realEnv } from "../../src/engine/runtime/real-env.ts";
import { uuidFromString } from "../../src/engine/uuid.ts";
import { SessionClosedError } from "../../src/engine/wire/session-api.ts";
import { openSession } from "../../src/engine/wire/session.ts";
import { TargetLink } from "../../src/toma/target-link.ts";
import { type LogLine, recordingLogger } from "../engine/target-fixture.ts";
import { FAST, startTargets, until } from "./harness.ts";

const logged: LogLine[] = [];
const env = realEnv("target-link-test", recordingLogger(logged));

let cleanup: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const f of cleanup.reverse()) await f();
  cleanup = [];
  logged.length = 0;
});

async function upLink(): Promise<{ link: TargetLink; drive: Uint8Array }> {
  const [t] = await startTargets(env, [1]);
  cleanup.push(() => t!.kill());
  const link = new TargetLink(env, t!.address, (a) => openSession(env, a, { version: 1, role: "toma", name: "link-test" }), FAST);
  link.start();
  cleanup.push(() => link.stop());
  await until("link up", () => link.up);
  return { link, drive: uuidFromString(t!.drives[0]!.info.drive_uuid) };
}

test("a suspected link records the reason, not the close it causes", async () => {
  const { link, drive } = await upLink();
  const s = link.session!;
  // A request still out on the session when it is given up.
  const out = s.metaRead(drive).then(
    () => null,
    (e: unknown) => e,
  );
  const why = "write metadata of drive X: no answer in 1000 ms";
  link.suspect(why, s);
  expect(link.up).toBe(false);
  expect(link.last_error).toBe(why);
  expect(s.closed).toBe(true);
  const e = await out;
  expect(e).toBeInstanceOf(SessionClosedError);
  expect((e as Error).message).toContain(`closed by the requester: ${why}`);
  const down = logged.filter((l) => l.msg === "target down");
  expect(down.map((l) => l.fields?.reason)).toEqual([why]);
  // It comes back on its own.
  await until("link up again", () => link.up);
  expect(link.last_error).toBeNull();
});

test("a suspicion about a session the link has replaced leaves the new one alone", async () => {
  const { link } = await upLink();
  const old = link.session!;
  link.suspect("first timeout", old);
  await until("link up again", () => link.up);
  const now = link.session!;
  expect(now).not.toBe(old);
  // A request sent on the old session timing out only now.
  link.suspect("late timeout on the old session", old);
  expect(link.session).toBe(now);
  expect(now.closed).toBe(false);
  expect(logged.filter((l) => l.msg === "target down").map((l) => l.fields?.reason)).toEqual(["first timeout"]);
});
