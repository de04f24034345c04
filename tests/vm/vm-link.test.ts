/**
 * When the RDMA VM test may repeat its scenario: only when a guest's end of the emulated link is
 * wedged at the moment a step failed (tests/support/vm-link.ts). Probe outputs as the guests give
 * them (uptime, eth1's watchdog lines from dmesg, the ping verdict); no guest is booted here.
 */
import { describe, expect, test } from "bun:test";
import { wedgedNow } from "../support/vm-link.ts";

const WATCHDOG = (t: string) =>
  `[  ${t}] virtio_net virtio2 eth1: NETDEV WATCHDOG: CPU: 0: transmit queue 0 timed out 5356 ms\n` +
  `[  ${t}] virtio_net virtio2 eth1: TX timeout on queue: 0, sq: output.0, vq: 0x1, name: output.0, 5356000 usecs ago`;

describe("the emulated link's wedge, as a guest reports it", () => {
  test("a working link with no watchdog is not wedged", () => {
    expect(wedgedNow("uptime 210.55\nlink-ping ok\n")).toBe(false);
  });

  test("eth1's watchdog in the last 30 s is a wedge, even before the ping gives up", () => {
    expect(wedgedNow(`uptime 202.90\n${WATCHDOG("181.085984")}\n${WATCHDOG("196.189983")}\nlink-ping ok\n`)).toBe(true);
  });

  test("the watchdog's older wording too", () => {
    expect(wedgedNow("uptime 90.00\n[   88.120000] NETDEV WATCHDOG: eth1 (virtio_net): transmit queue 0 timed out\nlink-ping ok\n")).toBe(true);
  });

  test("an old watchdog line with the ping answered is a stall that passed: no repeat", () => {
    expect(wedgedNow(`uptime 400.10\n${WATCHDOG("118.974206")}\nlink-ping ok\n`)).toBe(false);
  });

  test("no ping answer over eth1 is a wedge, watchdog or not", () => {
    expect(wedgedNow("uptime 95.00\nlink-ping FAILED\n")).toBe(true);
  });

  test("another NIC's watchdog is not the link's", () => {
    expect(wedgedNow(`uptime 120.00\n${WATCHDOG("118.0").replaceAll("eth1", "eth0")}\nlink-ping ok\n`)).toBe(false);
  });
});
