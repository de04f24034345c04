/**
 * A requester (client daemon, TOMA) learns in the target's HELLO answer whether it listens on RDMA
 * (TargetInfo.rdma), then moves to it: TCP stays the way in, so a target is always known by the
 * one address the TOMA hands out, and the fallback. Each session says which transport it uses
 * and why (`client show`, `target show`): "rdma: the target listens on rdma://10.0.0.1:4421",
 * "tcp: no RDMA device on this host", "tcp: the target does not listen on RDMA",
 * "tcp: rdma://10.0.0.1:4421 failed: …".
 *
 * The TCP session is closed before HELLO goes over RDMA: the target would close it anyway (a
 * new HELLO of the same requester supersedes its older connection), and it has nothing in flight.
 * An RDMA address that failed is not tried again for RETRY_MS, so a broken RDMA path costs one
 * connection timeout, not one per reconnect.
 */
import type { Env } from "../env.ts";
import type { FrameLink, Transport } from "../net/frame-link.ts";
import type { TargetSession } from "../wire/session-api.ts";
import type { SessionOver } from "./local-target.ts";
import type { OpenSession } from "./target-pool.ts";

export interface RdmaConnector {
  /** Why this host cannot make RDMA links (no library, no device), or null when it can. */
  unavailable(): string | null;
  connect(host: string, port: number, transport: Transport): Promise<FrameLink>;
}

const RETRY_MS = 30_000;

function hostOf(address: string): string {
  const i = address.lastIndexOf(":");
  return (i > 0 ? address.slice(0, i) : address).replace(/^\[(.*)\]$/, "$1");
}

function because(s: TargetSession, why: string): TargetSession {
  s.transport = { kind: s.transport.kind, why: `${s.transport.kind}: ${why}` };
  return s;
}

export function viaRdma(open: OpenSession, rdma: RdmaConnector, over: SessionOver): OpenSession {
  const failedUntil = new Map<string, number>();
  return async (env: Env, address, hello) => {
    const s = await open(env, address, hello);
    if (s.transport.kind === "in-process") return s;
    const offer = s.info.rdma;
    if (offer === undefined) return because(s, "the target does not listen on RDMA");
    const host = offer.host ?? hostOf(address);
    const where = `rdma://${host}:${offer.port}`;
    const problem = rdma.unavailable();
    if (problem !== null) return because(s, problem);
    const until = failedUntil.get(where);
    if (until !== undefined && env.clock.now_ms() < until) return because(s, `${where} failed recently; retried later`);
    let link: FrameLink;
    try {
      link = await rdma.connect(host, offer.port, { kind: "rdma", why: `rdma: the target listens on ${where}` });
    } catch (e) {
      failedUntil.set(where, env.clock.now_ms() + RETRY_MS);
      env.log.warn("RDMA connection failed: staying on TCP", { target: address, rdma: where, error: (e as Error).message });
      return because(s, `${where} failed: ${(e as Error).message}`);
    }
    failedUntil.delete(where);
    s.close();
    try {
      const r = await over(env, link, address, hello);
      env.log.info("target reached over RDMA", { target: address, rdma: where });
      return r;
    } catch (e) {
      failedUntil.set(where, env.clock.now_ms() + RETRY_MS);
      env.log.warn("HELLO over RDMA failed: back to TCP", { target: address, rdma: where, error: (e as Error).message });
      return because(await open(env, address, hello), `HELLO over ${where} failed: ${(e as Error).message}`);
    }
  };
}
