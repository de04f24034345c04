/**
 * Raft messages to the other TOMAs (docs/toma-cluster.md, "Integration", step 5). Each TOMA sends
 * over requests it makes itself (`POST /v1/raft` on the peer's management port), so a link cut one
 * way stops exactly one direction. Per peer: a bounded queue, one request in flight, and the
 * messages queued meanwhile go together in the next envelope; a peer that does not answer costs a
 * bounded queue, never memory without end, and the core is told it is unreachable.
 */
import type { Env } from "../../engine/env.ts";
import { withTimeout } from "../target-link.ts";
import { encodeEnvelope, MAX_MESSAGES_PER_ENVELOPE } from "../consensus/messages.ts";
import type { Message, NodeId } from "../consensus/types.ts";

/** Delivers one encoded envelope to the TOMA at `address`; rejects if it was not accepted. */
export type PeerPost = (address: string, envelope: Uint8Array) => Promise<void>;

/**
 * The management API reads at most 64 KiB of body before it authenticates a request, and the
 * envelope travels base64 in JSON: envelopes stay below this.
 */
export const MAX_POSTED_ENVELOPE_BYTES = 44 * 1024;
/** Messages waiting for one peer; beyond this the oldest are dropped (Raft re-sends what matters). */
export const MAX_QUEUED_PER_PEER = 1024;
export const POST_TIMEOUT_MS = 3000;

interface PeerQueue {
  address: string;
  msgs: Message[];
  busy: boolean;
  /** Consecutive failed posts: for the log, once per outage. */
  failures: number;
}

export interface PeerSenderEvents {
  /** A post to `to` failed: the core backs off its replication to it (reportUnreachable). */
  unreachable(to: NodeId): void;
  /** A snapshot message to `to` was delivered (true) or not (false). */
  snapshot(to: NodeId, ok: boolean): void;
}

export class PeerSenders {
  private readonly peers = new Map<NodeId, PeerQueue>();
  private stopped = false;
  /** Messages dropped because a queue was full or a message could never fit an envelope. */
  dropped = 0;

  constructor(
    private readonly env: Env,
    private readonly post: PeerPost,
    private readonly events: PeerSenderEvents,
    private readonly cluster_uuid: string,
    private readonly from: NodeId,
  ) {}

  /** Queues the messages of one ready() for their peers; `address` resolves a node id. */
  send(msgs: readonly Message[], address: (id: NodeId) => string | null): void {
    const touched = new Set<PeerQueue>();
    for (const m of msgs) {
      const addr = address(m.to);
      if (addr === null || addr === "") {
        this.dropped++;
        continue;
      }
      let q = this.peers.get(m.to);
      if (!q || q.address !== addr) {
        q = { address: addr, msgs: q?.msgs ?? [], busy: q?.busy ?? false, failures: 0 };
        this.peers.set(m.to, q);
      }
      q.msgs.push(m);
      if (q.msgs.length > MAX_QUEUED_PER_PEER) {
        q.msgs.shift();
        this.dropped++;
      }
      touched.add(q);
    }
    for (const [to, q] of this.peers) if (touched.has(q)) void this.pump(to, q);
  }

  stop(): void {
    this.stopped = true;
  }

  /** What is queued per peer (status). */
  queued(): Record<NodeId, number> {
    return Object.fromEntries([...this.peers].map(([id, q]) => [id, q.msgs.length]));
  }

  private async pump(to: NodeId, q: PeerQueue): Promise<void> {
    if (q.busy || this.stopped) return;
    q.busy = true;
    try {
      while (q.msgs.length > 0 && !this.stopped) {
        const { bytes, count } = this.envelope(to, q.msgs);
        const batch = q.msgs.splice(0, count);
        if (bytes === null) {
          // One message alone is larger than an envelope may be: the core bounds every message
          // below it (entries, snapshot chunks), so this is a bug; dropped, never sent for ever.
          this.dropped++;
          this.env.log.error("raft message too large for one request: dropped", { to, type: batch[0]!.type });
          if (batch[0]!.type === "snap") this.events.snapshot(to, false);
          continue;
        }
        const snaps = batch.some((m) => m.type === "snap");
        try {
          await withTimeout(this.env, this.post(q.address, bytes), POST_TIMEOUT_MS, `raft messages to ${q.address}`);
          if (q.failures > 0) this.env.log.info("TOMA peer reachable again", { peer: to, address: q.address });
          q.failures = 0;
          if (snaps) this.events.snapshot(to, true);
        } catch (e) {
          if (q.failures++ === 0) this.env.log.warn("TOMA peer unreachable", { peer: to, address: q.address, error: (e as Error).message });
          this.events.unreachable(to);
          if (snaps) this.events.snapshot(to, false);
          // What was queued meanwhile is older than what the core will send next: drop it,
          // so a dead peer costs one request per ready(), not a growing backlog.
          this.dropped += q.msgs.length;
          q.msgs.length = 0;
        }
      }
    } finally {
      q.busy = false;
    }
  }

  /** The largest prefix of `msgs` that fits one envelope, encoded; null bytes if not even one. */
  private envelope(to: NodeId, msgs: readonly Message[]): { bytes: Uint8Array | null; count: number } {
    let count = Math.min(msgs.length, MAX_MESSAGES_PER_ENVELOPE);
    for (;;) {
      let bytes: Uint8Array | null = null;
      try {
        bytes = encodeEnvelope({ v: 1, cluster_uuid: this.cluster_uuid, from: this.from, to, msgs: msgs.slice(0, count) });
      } catch {
        bytes = null;
      }
      if (bytes !== null && bytes.length <= MAX_POSTED_ENVELOPE_BYTES) return { bytes, count };
      if (count === 1) return { bytes: null, count: 1 };
      count = Math.max(1, Math.floor(count / 2));
    }
  }
}
