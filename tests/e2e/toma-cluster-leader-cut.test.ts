/**
 * The leader's server pulled off the switch while it holds a leg of a mirror that fio writes to
 * through a client daemon homed on another server (tests/soak/leader-cut.ts sets it up in network
 * namespaces: needs root, ip and fio; never skipped). In the 10-minute cluster soak this was the
 * run's longest stall (19 s): the home TOMA's relay waited out its whole timeout on the cut-off
 * leader, answered the daemon 503, and the daemon left its home for the next TOMA listed — the
 * cut-off one — while the new leader waited for that daemon's acknowledgement before it could
 * take the dead leg out.
 *
 * Printed, never asserted: the time from the cut to the new leader's step (the cut leg dead) and
 * fio's longest stall. Asserted: the daemon never leaves its home (reachable throughout), the
 * step is taken, and fio verifies every block it wrote.
 */
import { expect, test } from "bun:test";
import { leaderCut } from "../soak/leader-cut.ts";

test("the leader's server cut off: the client daemon stays on its home TOMA, whose relay follows the new leader, and the dead leg is taken out", async () => {
  const r = await leaderCut();
  console.log(`cut s${r.cut + 1} (the leader, holding a leg); new leader s${r.new_leader + 1}; the cut leg dead ${(r.step_ms / 1000).toFixed(1)} s after the cut; fio's longest stall ${(r.stall_ms / 1000).toFixed(1)} s`);
  expect(r.fio_error).toBeNull();
  expect(r.step_ms).toBeGreaterThan(0);
  // Its home (s1) stayed reachable: leaving it (for the cut-off server, listed next) is the bug.
  expect(r.client_log).not.toMatch(/homed on another TOMA/);
}, 400_000);
