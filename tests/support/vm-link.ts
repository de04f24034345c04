/**
 * The emulated link between two guests (vmlab's `--link`: QEMU's `-netdev socket` over a TCP
 * connection on 127.0.0.1) and the one failure of it that is the lab's, not the product's.
 *
 * Under load that link has been seen to stop carrying one guest's frames for good: the guest's
 * kernel logs "NETDEV WATCHDOG: eth1 (virtio_net): transmit queue 0 timed out" every 5 s from then
 * on, a ping over eth1 gets no answer, while ssh over eth0 (slirp) still works. It does not come
 * back by itself (watched for over 80 s). It has been seen on either guest, and with the link's TCP
 * connection on the host idle (Recv-Q and Send-Q 0 at both ends): the frames stop in the guest's
 * virtio NIC, not in the socket. A test that meets it has seen the product do the right thing with
 * a dead network (EIO after --io-timeout), not what it meant to check.
 *
 * `LinkScenario` runs a test file's steps in order on one lab; when a step fails and the link is
 * wedged *now* (a watchdog line for eth1 in the last 30 s of a guest's uptime, or no ping answer
 * over eth1 while both guests answer over eth0), it says so loudly with the evidence, and runs the
 * scenario once more from the start on fresh guests, up to and including that step. Any other
 * failure, and any failure of the repeated run (wedged or not), fails the test at once: one
 * repeat per file, so a product fault that comes back is never hidden.
 */
import { run } from "./proc.ts";
import type { Guest } from "./vmlab.ts";

/** The two ends of the link: each guest with its eth1 address (no prefix). */
export interface LinkEnds {
  a: Guest;
  a_ip: string;
  b: Guest;
  b_ip: string;
  /** The 127.0.0.1 port the link's TCP connection rides on (shown with `ss` as evidence). */
  port: number;
}

/** What one guest says about its end of the link. */
function probe(peer_ip: string): string {
  return [
    "read -r up _ </proc/uptime; echo \"uptime $up\"",
    // The kernel's own word on the virtio NIC: "NETDEV WATCHDOG ... transmit queue N timed out".
    // (Older kernels word it "NETDEV WATCHDOG: eth1 (virtio_net): ...", the guests' 6.1 "eth1: NETDEV WATCHDOG: ...".)
    "dmesg | grep -E 'eth1.*(NETDEV WATCHDOG|TX timeout)|NETDEV WATCHDOG: eth1 ' | tail -n 4",
    // 5 pings over 5 s, each waiting 5 s: one answer is enough (an emulated guest is slow).
    `if ping -q -c 5 -i 1 -W 5 -I eth1 ${peer_ip} >/dev/null 2>&1; then echo 'link-ping ok'; else echo 'link-ping FAILED'; fi`,
  ].join("; ");
}

/**
 * Whether one guest's answer to `probe()` says its end of the link is wedged now: no ping answer
 * over eth1, or eth1's watchdog logged at most 30 s before the probe (it repeats every 5 s while
 * the queue stays stuck; an old line alone is a stall that passed, not a wedge).
 */
export function wedgedNow(probe_output: string): boolean {
  if (probe_output.includes("link-ping FAILED")) return true;
  const up = Number(/^uptime ([\d.]+)/m.exec(probe_output)?.[1] ?? NaN);
  for (const m of probe_output.matchAll(/^\[\s*([\d.]+)\].*(eth1.*NETDEV WATCHDOG|NETDEV WATCHDOG: eth1 )/gm)) {
    if (up - Number(m[1]) <= 30) return true;
  }
  return false;
}

/**
 * The evidence that the link is wedged now, or null when it is not (or when a guest does not
 * answer over eth0 either: a guest that is gone is not a link that wedged).
 */
export async function linkWedged(l: LinkEnds): Promise<string | null> {
  const ra = await l.a.sh(probe(l.b_ip), 60_000).catch(() => null);
  const rb = await l.b.sh(probe(l.a_ip), 60_000).catch(() => null);
  if (ra === null || rb === null || ra.code !== 0 || rb.code !== 0) return null;
  const out = [ra.stdout, rb.stdout];
  if (!out.some(wedgedNow)) return null;
  // Which QEMU stopped reading shows as a full Recv-Q on its end of the link's TCP connection.
  const ss = await run(["ss", "-tnoi", `( sport = :${l.port} or dport = :${l.port} )`], { timeout_ms: 10_000 }).catch(() => null);
  return [
    `--- ${l.a.name} (eth1 ${l.a_ip}):\n${ra.stdout.trimEnd()}`,
    `--- ${l.b.name} (eth1 ${l.b_ip}):\n${rb.stdout.trimEnd()}`,
    `--- the link's TCP connection on this host (127.0.0.1:${l.port}):\n${ss?.stdout.trimEnd() ?? "(ss unavailable)"}`,
  ].join("\n");
}

export interface Step {
  name: string;
  run: () => Promise<void>;
}

/**
 * A test file's steps, run in order on one lab, repeated once on fresh guests when the emulated
 * link wedged (see the file's header). The first step must boot the guests (and tear down any
 * left from before); `ends()` gives the current lab's link, or null while it has none.
 */
export class LinkScenario {
  /** Set once the scenario was repeated: the evidence of the wedge that caused it. */
  repeated: string | null = null;

  constructor(
    private readonly steps: Step[],
    private readonly ends: () => LinkEnds | null,
  ) {}

  /** Runs step `i` (the steps before it ran already, on this lab or the one before). */
  async step(i: number): Promise<void> {
    const s = this.steps[i]!;
    try {
      await s.run();
      return;
    } catch (e) {
      if (this.repeated !== null) throw await this.secondRunFailed(e);
      const ends = this.ends();
      const wedge = ends === null ? null : await linkWedged(ends);
      if (wedge === null) throw e;
      this.repeated = wedge;
      console.warn(
        [
          "",
          "#".repeat(100),
          `# THE EMULATED LINK BETWEEN THE GUESTS WEDGED during step "${s.name}" (the lab's emulated network, not the product):`,
          "# the scenario is repeated ONCE from the start on fresh guests; a failure of the repeat fails the test.",
          "# The evidence:",
          wedge,
          "# The step's failure:",
          (e as Error).message,
          "#".repeat(100),
          "",
        ].join("\n"),
      );
    }
    for (let j = 0; j <= i; j++) {
      console.warn(`[repeat after the link wedged] step "${this.steps[j]!.name}"`);
      await this.steps[j]!.run().catch(async (e: unknown) => {
        throw await this.secondRunFailed(e);
      });
    }
  }

  /** The second run's failure, with the link's state now (shown, never acted on: no third run). */
  private async secondRunFailed(e: unknown): Promise<Error> {
    const ends = this.ends();
    const now = ends === null ? null : await linkWedged(ends);
    return new Error(
      `${(e as Error).message}\n(in the scenario's second run, repeated once after the emulated link wedged:\n${this.repeated})\n` +
        (now === null ? "(the link of the second run is not wedged now)" : `(the link of the second run is wedged too; not repeated again:\n${now})`),
    );
  }
}
