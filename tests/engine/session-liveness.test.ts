/**
 * The session's liveness deadline (src/engine/wire/liveness.ts) against a real TargetService over
 * an in-process link: a half-open connection (the target's host gone without a word: nothing
 * arrives, nothing is refused) is given up by the PING deadline, its requests fail with
 * SessionClosedError; a target whose drive holds a write for far longer than the deadline, but
 * which answers PING, is kept, and the write completes.
 */
import { afterEach, describe, expect, test } from "bun:test";
import type { FormattedDrive } from "../../src/engine/drive/formatted-api.ts";
import type { FrameLink } from "../../src/engine/net/frame-link.ts";
import { linkPair } from "../../src/engine/net/pipe.ts";
import { realEnv } from "../../src/engine/runtime/real-env.ts";
import { TargetService } from "../../src/engine/target/service.ts";
import { Op, type Header } from "../../src/engine/wire/header.ts";
import { sessionOver, type Session } from "../../src/engine/wire/session.ts";
import { SessionClosedError } from "../../src/engine/wire/session-api.ts";
import { gatedDrive, memoryDrive, recordingLogger, uuidBytes } from "./target-fixture.ts";

const LIVENESS = { quiet_ms: 100, idle_ms: 300, deadline_ms: 150, handshake_ms: 1000 };
const HELLO = { version: 1 as const, role: "client" as const, name: "liveness-test" };

let service: TargetService | null = null;
afterEach(() => {
  service?.closeAll();
  service = null;
});

/**
 * The requester's end of a pipe to `service`, which can be cut without a word: after cut(), what
 * either side sends vanishes and nobody is told (a peer that lost power, a one-way-cut path).
 * Counts the PINGs that crossed before the cut.
 */
function cuttableLink(svc: TargetService): { link: FrameLink; cut: () => void; pings: () => number } {
  const [mine, theirs] = linkPair("target", "requester");
  let cut = false;
  let pings = 0;
  const link: FrameLink = Object.create(mine);
  link.send = (h: Header, payload: Uint8Array | null) => {
    if (cut) return true;
    if (h.opcode === Op.PING) pings++;
    return mine.send(h, payload);
  };
  mine.onFrame = (h, payload, owned) => {
    if (!cut) link.onFrame?.(h, payload, owned);
  };
  mine.onClose = (why) => link.onClose?.(why);
  mine.onMalformed = (why) => link.onMalformed?.(why);
  svc.handleLink(theirs);
  return { link, cut: () => (cut = true), pings: () => pings };
}


/** Target and session both allow 2 requests on the connection: the session fills it. */
async function open(drives: FormattedDrive[]): Promise<{ s: Session; cut: () => void; pings: () => number; reasons: string[] }> {
  const env = realEnv("liveness-test", recordingLogger([]));
  service = new TargetService(env, { name: "t1", drives, max_inflight_per_conn: 2 });
  const c = cuttableLink(service);
  const s = await sessionOver(env, c.link, "t1", HELLO, { liveness: LIVENESS, max_inflight: 2 });
  const reasons: string[] = [];
  s.onClose = (r) => reasons.push(r);
  return { s, cut: c.cut, pings: c.pings, reasons };
}

describe("session liveness", () => {
  test("a half-open connection with a request outstanding is closed by the PING deadline", async () => {
    const d = await memoryDrive();
    const { s, cut, reasons } = await open([d]);
    await s.write(uuidBytes(d), 0, new Uint8Array(512), false);
    cut();
    const t0 = performance.now();
    const p = s.write(uuidBytes(d), 512, new Uint8Array(512), false);
    await expect(p).rejects.toBeInstanceOf(SessionClosedError);
    const took = performance.now() - t0;
    expect(s.closed).toBe(true);
    expect(reasons.length).toBe(1);
    expect(reasons[0]).toContain("a PING included");
    // quiet + deadline + check periods; never before quiet + deadline.
    expect(took).toBeGreaterThanOrEqual(LIVENESS.quiet_ms + LIVENESS.deadline_ms - 30);
    expect(took).toBeLessThan(3000);
  });

  test("an idle half-open connection is found before a request needs it", async () => {
    const d = await memoryDrive();
    const { s, cut, reasons } = await open([d]);
    cut();
    for (let i = 0; i < 200 && !s.closed; i++) await Bun.sleep(10);
    expect(s.closed).toBe(true);
    expect(reasons[0]).toContain("a PING included");
  });

  test("a slow drive holding every request slot for 10× the deadline does not close a target that answers PING", async () => {
    const g = await gatedDrive();
    const { s, pings } = await open([g.drive]);
    const data = new Uint8Array(4096).fill(7);
    // Both of the connection's slots held by writes the drive does not finish, a third waiting in
    // the session: the PING is answered ahead of them all.
    const p = Promise.all([0, 1, 2].map((i) => s.write(uuidBytes(g.drive), i * 4096, data, false)));
    while (g.started() < 2) await Bun.sleep(1);
    await Bun.sleep(10 * (LIVENESS.quiet_ms + LIVENESS.deadline_ms));
    expect(s.closed).toBe(false);
    // The session did suspect, and the target answered: several PINGs crossed meanwhile.
    expect(pings()).toBeGreaterThanOrEqual(3);
    g.release();
    await p;
    const back = new Uint8Array(4096);
    await s.read(uuidBytes(g.drive), 0, back);
    expect(back).toEqual(data);
    expect(s.closed).toBe(false);
    s.close();
  });

  test("a target that never answers HELLO is given up by the handshake deadline", async () => {
    const env = realEnv("liveness-test", recordingLogger([]));
    const [mine] = linkPair("silent", "requester"); // nobody at the other end
    const t0 = performance.now();
    await expect(sessionOver(env, mine, "silent", HELLO, { liveness: LIVENESS })).rejects.toThrow("no answer to HELLO");
    expect(performance.now() - t0).toBeGreaterThanOrEqual(LIVENESS.handshake_ms - 30);
  });
});
