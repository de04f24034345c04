/**
 * Named scenarios: one fault each, at a chosen moment, on a quiet network and quiet drives, then
 * healing and the full liveness and safety checks of every seed (sim/run.ts). Each asserts that its
 * fault really happened and what the user would see: I/O pauses but does not fail when the fault
 * ends within the I/O timeout, and never returns wrong data.
 */
import { describe, expect, setDefaultTimeout, test } from "bun:test";
import { quietDriveProfile } from "../../sim/drive.ts";
import { quietProfile } from "../../sim/net.ts";
import { defaultRunOptions, type RunResult, runSeed } from "../../sim/run.ts";
import { scenario, when } from "./scenario-kit.ts";

// A scenario is a few seconds of a 2-core machine's time: far above bun's 5 s default when busy.
setDefaultTimeout(120_000);

const traced = (r: RunResult, re: RegExp) => r.full_trace.some((l) => re.test(l));

describe("simulator scenarios", () => {
  test("target crash during write: writes in flight retry on the restarted target", async () => {
    const r = await scenario((c) => {
      const s2 = c.servers[1]!;
      when(c, 3000, () => c.checker.pendingWrites().length > 0, () => {
        c.crashServer(s2, "process");
        c.world.after(2000, () => c.bootServer(s2));
      });
    });
    expect(traced(r, /s2 +CRASH \(process\)/)).toBe(true);
    expect(traced(r, /lost target connection target=s2/)).toBe(true);
  });

  test("server power loss: flushed and FUA data survive, the client is told of what may not have", async () => {
    const r = await scenario((c) => {
      const s3 = c.servers[2]!;
      when(c, 4000, () => c.checker.pendingWrites().length > 0, () => {
        c.crashServer(s3, "power");
        c.world.after(3000, () => c.bootServer(s3));
      });
    }, { expectErrors: true });
    expect(traced(r, /s3 +CRASH \(power\)/)).toBe(true);
    expect(traced(r, /acknowledged writes may have been lost/)).toBe(true);
  });

  test("client crash in the middle of a write: the other client goes on, the restarted one attaches again", async () => {
    const r = await scenario((c) => {
      const c1 = c.clients[0]!;
      when(c, 3000, () => c.checker.pendingWrites().some((w) => w.client === c1.id), () => {
        c.crashClient(c1);
        c.world.after(2000, () => c.bootClient(c1));
      });
    });
    expect(traced(r, /c1 +CRASH/)).toBe(true);
    expect(traced(r, /c1 +boot #2/)).toBe(true);
  });

  test("partition TOMA server | rest for less than the I/O timeout: I/O pauses, nothing fails", async () => {
    const r = await scenario((c) => {
      const rest = [...c.servers.slice(1).map((s) => s.name), ...c.clients.map((x) => x.name)];
      c.world.after(2000, () => c.net.partition(["s1"], rest));
      c.world.after(7000, () => c.net.heal());
    });
    expect(traced(r, /partition/)).toBe(true);
  });

  test("one-way link s2→c1: c1's requests arrive, the answers wait, and all complete after healing", async () => {
    const r = await scenario((c) => {
      c.world.after(2000, () => c.net.setDirection("s2", "c1", false));
      c.world.after(6000, () => c.net.setDirection("s2", "c1", true));
    });
    expect(traced(r, /s2→c1/)).toBe(true);
  });

  test("one-way link c2→s3: c2's requests wait and all complete after healing", async () => {
    await scenario((c) => {
      c.world.after(2000, () => c.net.setDirection("c2", "s3", false));
      c.world.after(6000, () => c.net.setDirection("c2", "s3", true));
    });
  });

  test("drive moves from server 1 to server 3: clients find it there through the TOMA", async () => {
    const r = await scenario((c) => {
      const m = c.servers[0]!.media[0]!;
      c.world.after(3000, () => {
        c.unplug(m);
        c.world.after(1000, () => c.plug(m, c.servers[2]!));
      });
    }, { expectErrors: true });
    expect(traced(r, /plugged into s3/)).toBe(true);
    expect(traced(r, /s3 +info drive added/)).toBe(true);
  });

  test("clock jumps back 1 hour on the TOMA server and a client: nothing notices", async () => {
    await scenario((c) => {
      c.world.after(2000, () => c.servers[0]!.node.jumpClock(-3_600_000));
      c.world.after(2500, () => c.clients[0]!.node.jumpClock(-3_600_000));
      c.world.after(3000, () => {
        c.crashServer(c.servers[1]!, "process");
        c.world.after(2000, () => c.bootServer(c.servers[1]!));
      });
    });
  });

  test("clock jumps forward 1 hour on a client during a short target outage: I/O still waits, no EIO", async () => {
    await scenario((c) => {
      c.world.after(3000, () => {
        c.crashServer(c.servers[1]!, "process");
        c.clients[0]!.node.jumpClock(3_600_000);
        c.world.after(3000, () => c.bootServer(c.servers[1]!));
      });
    });
  });

  test("clogged links released in random order", async () => {
    const r = await scenario((c) => {
      const pairs: [string, string][] = [];
      for (const cl of c.clients) for (const s of c.servers) pairs.push([cl.name, s.name], [s.name, cl.name]);
      c.world.after(2000, () => {
        c.net.clog(pairs);
        const order = c.world.prng.fork("unclog").shuffle([...pairs]);
        order.forEach(([a, b], i) => c.world.after(500 + i * 300, () => c.net.unclog(a, b)));
      });
    });
    expect(traced(r, /clog/)).toBe(true);
  });

  test("latent read error: the read fails with EIO, never returns wrong data, and a rewrite heals it", async () => {
    let hit = "";
    const r = await scenario((c) => {
      c.world.after(2000, () => {
        const { medium, byte } = c.locate(0, 40);
        hit = medium.name;
        for (let s = 0; s < 64; s++) medium.injectReadError(byte / 512 + s);
      });
    }, { expectErrors: true });
    expect(hit).not.toBe("");
    expect(traced(r, /workload read failed/)).toBe(true);
  });

  test("hazard: B cannot reach D2 and writes while A, which cannot reach D1, reads", async () => {
    // RAID0 here (one copy): B's writes spanning D1 and D2 wait for D2 and A's reads wait for
    // D1; neither may see or produce a mix that a correct disk could not. The mirroring issue
    // extends this scenario to two copies, where the hazard is a stale read of the other leg.
    await scenario((c) => {
      c.world.after(2000, () => {
        c.net.partition(["c2"], ["s2"]);
        c.net.partition(["c1"], ["s1"]);
      });
      c.world.after(7000, () => c.net.heal());
    });
  });
});

describe("the checker bites on drive faults nothing can survive without redundancy", () => {
  test("a misdirected write is reported as another block's data", async () => {
    const opts = defaultRunOptions();
    opts.faults = { ...opts.faults, weights: {} };
    opts.tweak = (spec) => {
      spec.net = quietProfile();
      spec.drive = { ...quietDriveProfile(), misdirect_rate: 0.05 };
    };
    const r = await runSeed(3, opts);
    expect(r.ok).toBe(false);
    expect(r.failure).toMatch(/misdirected|lost or stale|initial zeroes/);
  });
});
