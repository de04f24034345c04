/**
 * client/rdma-upgrade.ts: a requester reaches a target over TCP, learns in HELLO whether it
 * listens on RDMA, and moves there when it can, saying why in every case. The "RDMA" link here is
 * the in-process pipe handed to the same target (this host has no RDMA device; the real link runs
 * in tests/vm/rdma.test.ts): what is tested is the choice, the fallback and the reasons, with a
 * real target, real sessions and the cluster key.
 */
import { afterEach, describe, expect, test } from "bun:test";
import { viaRdma, type RdmaConnector } from "../../src/engine/client/rdma-upgrade.ts";
import type { OpenSession } from "../../src/engine/client/target-pool.ts";
import type { FrameLink, Transport } from "../../src/engine/net/frame-link.ts";
import { linkPair } from "../../src/engine/net/pipe.ts";
import { rdmaUnavailable } from "../../src/engine/runtime/rdma-net.ts";
import { openSession, sessionOver } from "../../src/engine/wire/session.ts";
import { memoryDrive, startTarget, type TargetHarness, uuidBytes } from "./target-fixture.ts";

const key = crypto.getRandomValues(new Uint8Array(32));
const hello = { version: 1 as const, role: "client" as const, name: "c1" };
let t: TargetHarness | null = null;

afterEach(() => {
  t?.stop();
  t = null;
});

/** A connector whose links lead into the target in this process, as an RDMA link would. */
function pipeConnector(h: TargetHarness, problem: string | null = null, fail: string | null = null) {
  const calls: string[] = [];
  const c: RdmaConnector = {
    unavailable: () => problem,
    async connect(host: string, port: number, transport: Transport): Promise<FrameLink> {
      calls.push(`${host}:${port}`);
      if (fail !== null) throw new Error(fail);
      const [mine, theirs] = linkPair("target", "requester");
      h.service.handleLink(theirs);
      return Object.assign(mine, { transport });
    },
  };
  return { c, calls };
}

function opener(h: TargetHarness, c: RdmaConnector): OpenSession {
  return viaRdma(
    (env, address, hi) => openSession(env, address, hi, { cluster_key: { kind: "server", key } }),
    c,
    (env, link, address, hi) => sessionOver(env, link, address, hi, { cluster_key: { kind: "server", key } }),
  );
}

describe("moving a session to RDMA", () => {
  test("a target that does not listen on RDMA: TCP, and that is the reason", async () => {
    t = await startTarget([await memoryDrive()], { cluster_key: key });
    const { c, calls } = pipeConnector(t);
    const s = await opener(t, c)(t.env, t.address, hello);
    expect(s.transport).toEqual({ kind: "tcp", why: "tcp: the target does not listen on RDMA" });
    expect(calls).toEqual([]);
    s.close();
  });

  test("an offer on any address: the requester uses the host it reached the target by; I/O works over it", async () => {
    const d = await memoryDrive();
    t = await startTarget([d], { cluster_key: key });
    t.service.setRdma({ host: null, port: 4421 });
    const { c, calls } = pipeConnector(t);
    const s = await opener(t, c)(t.env, t.address, hello);
    expect(calls).toEqual(["127.0.0.1:4421"]);
    expect(s.transport).toEqual({ kind: "rdma", why: "rdma: the target listens on rdma://127.0.0.1:4421" });
    expect(s.info.drives.map((x) => x.drive_uuid)).toEqual([d.info.drive_uuid]);
    const data = new Uint8Array(64 * 1024).fill(7);
    await s.write(uuidBytes(d), 0, data, true);
    const back = new Uint8Array(data.length);
    await s.read(uuidBytes(d), 0, back);
    expect(back).toEqual(data);
    // The TCP connection the offer came on is gone: one connection per requester.
    for (let i = 0; i < 50 && t.service.connectionCount > 1; i++) await Bun.sleep(10);
    expect(t.service.connectionsByTransport()).toEqual({ "in-process": 1 });
    s.close();
  });

  test("this host has no RDMA: TCP, and the host's reason", async () => {
    t = await startTarget([await memoryDrive()], { cluster_key: key });
    t.service.setRdma({ host: "10.9.9.9", port: 4421 });
    const { c, calls } = pipeConnector(t, "no RDMA device on this host");
    const s = await opener(t, c)(t.env, t.address, hello);
    expect(s.transport.why).toBe("tcp: no RDMA device on this host");
    expect(calls).toEqual([]);
    s.close();
  });

  test("an RDMA path that fails: TCP with the error, and it is not tried again at once", async () => {
    t = await startTarget([await memoryDrive()], { cluster_key: key });
    t.service.setRdma({ host: "10.9.9.9", port: 4421 });
    const { c, calls } = pipeConnector(t, null, "RDMA_CM_EVENT_ADDR_ERROR (status -110)");
    const open = opener(t, c);
    const s = await open(t.env, t.address, hello);
    expect(s.transport.why).toBe("tcp: rdma://10.9.9.9:4421 failed: RDMA_CM_EVENT_ADDR_ERROR (status -110)");
    s.close();
    const again = await open(t.env, t.address, hello);
    expect(again.transport.why).toBe("tcp: rdma://10.9.9.9:4421 failed recently; retried later");
    expect(calls).toEqual(["10.9.9.9:4421"]);
    again.close();
  });

  test("on this host, the real check says why there is no RDMA", () => {
    // This machine's kernel has no RDMA device (nor does CI's): the reason users see here.
    expect(rdmaUnavailable()).toMatch(/^(no RDMA device on this host|libibverbs cannot be loaded .*)$/);
  });
});
