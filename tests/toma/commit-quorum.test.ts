/**
 * A commit is decided by the first answers that decide it (docs/toma.md, "Commit"): a drive whose
 * metadata write does not answer (its target paused, as SIGSTOP leaves it: the connection open,
 * nothing answered) holds no commit up, and its write finishes behind the commit. Real targets
 * over loopback sockets; the TOMA's sessions hold the META_WRITEs of chosen drives until the test
 * lets them go on to the target (or fails them, or the session closes).
 */
import { afterEach, expect, test } from "bun:test";
import { realEnv } from "../../src/engine/runtime/real-env.ts";
import { uuidToString } from "../../src/engine/uuid.ts";
import { Status } from "../../src/engine/wire/header.ts";
import { SessionClosedError, TargetError } from "../../src/engine/wire/session-api.ts";
import { openSession } from "../../src/engine/wire/session.ts";
import { Toma } from "../../src/toma/toma.ts";
import { type LogLine, recordingLogger } from "../engine/target-fixture.ts";
import { FAST, MiB, adminApi, startTargets, type TestTarget, until } from "./harness.ts";

const logged: LogLine[] = [];
const env = realEnv("commit-quorum-test", recordingLogger(logged));

let cleanup: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const f of cleanup.reverse()) await f();
  cleanup = [];
  logged.length = 0;
});

/** A META_WRITE held back from the target. */
interface Held {
  drive: string;
  generation: number;
  /** Sends it on to the target now; resolves with what the target answered ("ok" or the status name). */
  release(): Promise<string>;
  fail(e: Error): void;
}

/**
 * Three targets of one drive each and a ready TOMA with the three as members, whose sessions
 * hold every META_WRITE to a drive in `holding`. The request timeout is long (a minute) unless
 * given: a commit that waited for a held write would outlast the test.
 */
const volume = (name: string) => ({ name, capacity_bytes: MiB, raid_level: "concatenated" });

async function fixture(request_timeout_ms = 60_000) {
  const targets = await startTargets(env, [1, 1, 1]);
  cleanup.push(() => targets.forEach((t) => t.kill()));
  const holding = new Set<string>();
  const held: Held[] = [];
  const connect = async (address: string) => {
    const s = await openSession(env, address, { version: 1, role: "toma", name: "quorum" });
    const write = s.metaWrite.bind(s);
    const mine: (() => void)[] = [];
    s.metaWrite = (drive, generation, payload) => {
      const uuid = uuidToString(drive);
      if (!holding.has(uuid)) return write(drive, generation, payload);
      return new Promise<void>((resolve, reject) => {
        const h: Held = {
          drive: uuid,
          generation,
          release: () => {
            const p = write(drive, generation, payload);
            p.then(resolve, reject);
            return p.then(
              () => "ok",
              (e) => (e instanceof TargetError ? Status[e.status] ?? String(e.status) : String(e)),
            );
          },
          fail: reject,
        };
        held.push(h);
        // The session closing fails what it holds, as it fails every request in flight.
        mine.push(() => reject(new SessionClosedError("session closed with the write held")));
      });
    };
    const close = s.close.bind(s);
    s.close = (reason) => {
      close(reason);
      for (const f of mine) f();
    };
    return s;
  };
  const toma = new Toma(env, {
    name: "quorum",
    targets: targets.map((t) => t.address),
    timings: { ...FAST, request_timeout_ms },
    connect,
  });
  toma.start();
  cleanup.push(() => toma.stop());
  await toma.whenReady(5000);
  await until("3 member drives", () => toma.state?.drives.length === 3);
  const driveOf = (t: TestTarget) => t.drives[0]!.info.drive_uuid;
  const view = (t: TestTarget) => toma.driveViews().find((d) => d.uuid === driveOf(t))!;
  const api = adminApi(toma);
  /** Commits a volume with the third drive's write held: answers the drive's target and the generation. */
  const straggle = async () => {
    const slow = targets[2]!;
    holding.add(driveOf(slow));
    expect((await api("POST", "/v1/volumes", volume("a"))).status).toBe(201);
    return { slow, g: toma.state!.generation };
  };
  return { targets, toma, api, holding, held, driveOf, view, straggle };
}

test("a drive whose metadata write never answers does not hold a commit up; its write finishes behind it", async () => {
  const { toma, api, holding, held, view, straggle } = await fixture();
  const { slow, g } = await straggle();
  // Committed on the other two drives while the third drive's write is still out, unanswered.
  expect(held.map((h) => h.generation)).toEqual([g]);
  expect(view(slow).metadata_generation).toBeLessThan(g);
  // Maintenance passes go on meanwhile, and do not send the same state to that drive again.
  await Bun.sleep(10 * FAST.sync_ms);
  expect(held.length).toBe(1);

  // The next commit does not wait either; its write to that drive is sent behind the first.
  expect((await api("POST", "/v1/volumes", volume("b"))).status).toBe(201);
  const g2 = toma.state!.generation;
  expect(g2).toBeGreaterThan(g);
  expect(held.map((h) => h.generation)).toEqual([g, g2]);

  // The newer lands first, then the older: the target refuses the older (not newer than what
  // the drive holds), and what the TOMA knows of the slot does not move back.
  holding.clear();
  expect(await held[1]!.release()).toBe("ok");
  expect(await held[0]!.release()).toBe("STALE");
  await until("the drive known to hold the newest state", () => view(slow).metadata_generation === g2);
  expect(view(slow).error).toBeNull();
  expect((await slow.drives[0]!.metaRead()).generation).toBe(g2);
  expect(toma.state!.generation).toBe(g2);
  expect(logged.filter((l) => l.msg === "change not committed")).toEqual([]);
}, 10_000);

test("a straggler that fails after the commit succeeded asks for no retraction; the drive is written back", async () => {
  const { toma, holding, held, view, straggle } = await fixture();
  const { slow, g } = await straggle();
  expect(held.length).toBe(1);

  // The drive answers again from now on, and the held write fails.
  holding.clear();
  held[0]!.fail(new Error("injected I/O error"));
  // Written back at the committed generation: no retraction was asked for (it would have
  // written the state again under a newer generation).
  await until("the drive written back", async () => (await slow.drives[0]!.metaRead()).generation === g);
  await Bun.sleep(5 * FAST.sync_ms);
  expect(toma.state!.generation).toBe(g);
  expect((await slow.drives[0]!.metaRead()).generation).toBe(g);
  expect(view(slow).metadata_generation).toBe(g);
  expect(logged.filter((l) => l.msg === "change not committed")).toEqual([]);
}, 10_000);

test("a write-back that never answers holds no step up", async () => {
  const { toma, api, held, view, straggle } = await fixture();
  const { slow, g } = await straggle();
  // The commit's write to the drive fails; the next pass writes the state back, and that write
  // is held too (the drive's target paused again).
  held[0]!.fail(new Error("injected I/O error"));
  await until("the write-back sent", () => held.length === 2);
  expect(held[1]!.generation).toBe(g);
  // The next commit runs at once, not after the write-back's timeout.
  expect((await api("POST", "/v1/volumes", volume("b"))).status).toBe(201);
  const g2 = toma.state!.generation;
  expect(held.map((h) => h.generation)).toEqual([g, g, g2]);
  expect(await held[2]!.release()).toBe("ok");
  expect(await held[1]!.release()).toBe("STALE");
  await until("the drive known to hold the newest state", () => view(slow).metadata_generation === g2);
}, 10_000);

test("a refusal is decided once a majority can no longer acknowledge, without waiting for a drive that does not answer", async () => {
  const { targets, toma, api, holding, held, driveOf } = await fixture();
  const before = toma.state!.generation;
  for (const t of targets) holding.add(driveOf(t));
  const r = api("POST", "/v1/volumes", volume("lost"));
  await until("the three writes sent", () => held.length === 3);
  // Two drives refuse it; the third never answers, and cannot make a majority alone.
  const [a, b, c] = targets.map((t) => held.find((h) => h.drive === driveOf(t))!);
  a!.fail(new Error("injected I/O error"));
  b!.fail(new Error("injected I/O error"));
  const answer = await r;
  expect(answer.status).toBe(503);
  expect((answer.body as { error: string }).error).toMatch(/^2 of the cluster's 3 drives failed to acknowledge the change \(0 acknowledged\); 2 needed; nothing changed/);
  expect(toma.state!.generation).toBe(before);
  const w = logged.find((l) => l.msg === "change not committed");
  expect(w?.fields).toMatchObject({ acks: 0, failed: 2, of: 3, unanswered: 1 });
  // The third write is still out (its drive is not known to hold anything newer).
  expect(c!.generation).toBeGreaterThan(before);
  expect(toma.driveViews().find((d) => d.uuid === c!.drive)!.metadata_generation).toBe(before);
}, 10_000);

test("a straggler that times out suspects its target's link, and the link says why it went down", async () => {
  const { toma, held, driveOf, straggle } = await fixture(400);
  const { slow } = await straggle();
  expect(held.length).toBe(1);
  const link = toma.links.find((l) => l.address === slow.address)!;
  await until("the link suspected", () => !link.up);
  const why = `write metadata of drive ${driveOf(slow)}: no answer in 400 ms`;
  expect(link.last_error).toBe(why);
  const down = logged.filter((l) => l.msg === "target down" && l.fields?.target === slow.address);
  expect(down.map((l) => l.fields?.reason)).toEqual([why]);
}, 10_000);
