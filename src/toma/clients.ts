/**
 * The clients the TOMA knows, and the switch rounds (DESIGN.md §3): after each commit every client
 * must acknowledge the new generation (it has no I/O of an older topology in flight) before the
 * next topology step may be computed. A client that stops talking to us is not trusted to have
 * stopped I/O: it is *expired*, and counts as switched only once every drive of its volumes has
 * dropped its registration (fencing), so it can no longer read or write anything.
 *
 * Liveness is judged by local timers only (the time since we last heard from the client on our own
 * clock, or since another TOMA heard it by *its* own clock, as it reports an age); nothing here
 * compares clocks across machines. Sans-I/O: time comes from Env.
 *
 * In a TOMA cluster (`replicated`) the set of clients and their volumes is part of the replicated
 * state (cluster-state.ts `clients`): the leader records a registration or an attachment through
 * the log before it acts on it, a new leader restores every client from the state, and a client
 * fenced out everywhere stays counted (as `gone`) until its removal is committed
 * (docs/toma-cluster.md, "Clients in a TOMA cluster").
 */
import type { Env } from "../engine/env.ts";

export interface ClientRecord {
  readonly id: number;
  readonly name: string;
  /**
   * The key this client daemon signs its own management requests with (api-auth.ts): handed to
   * it, sealed, when it registered; no other client host can act for this id.
   */
  readonly secret: Uint8Array;
  /** Volumes attached by this client incarnation. */
  readonly volumes: Set<string>;
  /** Highest generation it acknowledged: no I/O of an older topology in flight. */
  acked: number;
  /** Local clock reading when we last heard from it. */
  heard_ms: number;
  /** Expired: no longer trusted; `unfenced` lists drives that may still accept its I/O. */
  expired: boolean;
  unfenced: Set<string>;
  /**
   * Expired and fenced out everywhere, kept until its removal from the replicated state is
   * committed (TOMA cluster only): until then a new leader would restore it, so it still counts.
   */
  gone: boolean;
}

export interface RegistryOptions {
  /** The secret of client `id` (derived from the server key in a TOMA cluster); random if absent. */
  secretOf?: (id: number) => Uint8Array;
  /** The clients are part of the replicated state (TOMA cluster): see `gone`. */
  replicated?: boolean;
}

export interface ClientTimings {
  /** Silence after which a client is expired and fenced out. */
  client_timeout_ms: number;
  /** Longest a watch (long poll) is held before it is answered anyway (a heartbeat). */
  watch_hold_ms: number;
}

export const DEFAULT_CLIENT_TIMINGS: ClientTimings = { client_timeout_ms: 15_000, watch_hold_ms: 3_000 };

/** Client ids: 48 random bits, so a restarted TOMA never hands out the id of a living lock owner. */
export function randomClientId(env: Env): number {
  const b = new Uint8Array(6);
  env.random.fill(b);
  let id = 0;
  for (const x of b) id = id * 256 + x;
  return id === 0 ? 1 : id;
}

export class ClientRegistry {
  private readonly clients = new Map<number, ClientRecord>();
  private waiters: (() => void)[] = [];

  constructor(
    private readonly env: Env,
    readonly timings: ClientTimings,
    private readonly opts: RegistryOptions = {},
  ) {}

  /** An id no client of this registry holds. */
  newId(): number {
    let id = randomClientId(this.env);
    while (this.clients.has(id)) id = randomClientId(this.env);
    return id;
  }

  register(name: string, generation: number): ClientRecord {
    const c = this.add(this.newId(), name, [], generation);
    this.env.log.info("client registered", { client: c.id, name });
    return c;
  }

  /**
   * Adds a client heard just now: a new registration (it starts on the current generation: it
   * has no older I/O at all), or one restored from the replicated state, whose acknowledgement
   * this TOMA has not heard yet (`acked`: a generation it is known to have acknowledged).
   */
  add(id: number, name: string, volumes: readonly string[], acked: number): ClientRecord {
    let secret: Uint8Array;
    if (this.opts.secretOf) secret = this.opts.secretOf(id);
    else {
      secret = new Uint8Array(32);
      this.env.random.fill(secret);
    }
    const c: ClientRecord = {
      id,
      name,
      secret,
      volumes: new Set(volumes),
      acked,
      heard_ms: this.env.clock.now_ms(),
      expired: false,
      unfenced: new Set(),
      gone: false,
    };
    this.clients.set(id, c);
    return c;
  }

  /** Any client of this registry by id, expired or not. */
  get(id: number): ClientRecord | undefined {
    return this.clients.get(id);
  }

  /** Forgets a gone client, once its removal from the replicated state is committed. */
  drop(c: ClientRecord): void {
    if (this.clients.get(c.id) === c && this.clients.delete(c.id)) this.notify();
  }

  /** A live client by id (expired ones must register again). */
  live(id: number): ClientRecord | undefined {
    const c = this.clients.get(id);
    return c && !c.expired ? c : undefined;
  }

  all(): ClientRecord[] {
    return [...this.clients.values()];
  }

  heard(c: ClientRecord): void {
    c.heard_ms = this.env.clock.now_ms();
  }

  /**
   * Another TOMA heard the client `ago_ms` before its report arrived (by that TOMA's own clock):
   * the client counts as heard then, if that is later than we heard it ourselves. An age, never a
   * timestamp, crosses the wire; the report's time in transit makes the hearing look that much
   * fresher, which only delays an expiry (suspicion), never what is safe (fencing).
   */
  heardVia(id: number, ago_ms: number): void {
    const c = this.clients.get(id);
    if (!c || c.expired) return;
    c.heard_ms = Math.max(c.heard_ms, this.env.clock.now_ms() - Math.max(0, ago_ms));
  }

  /**
   * The client acknowledged `generation`: no I/O of an older topology in flight. `heard`: false
   * when the acknowledgement comes in another TOMA's report (home-clients.ts), which may repeat it
   * long after it was made: a hearing comes only from the reports' ages (heardVia).
   */
  ack(c: ClientRecord, generation: number, heard = true): void {
    if (heard) this.heard(c);
    if (generation > c.acked) {
      c.acked = generation;
      this.notify();
    }
  }

  /**
   * Expires clients silent for longer than the timeout; `drivesOf` names the drives whose
   * registration must be dropped before the client stops holding rounds back.
   */
  expireSilent(drivesOf: (c: ClientRecord) => string[]): ClientRecord[] {
    const now = this.env.clock.now_ms();
    const out: ClientRecord[] = [];
    for (const c of [...this.clients.values()]) {
      if (c.expired || now - c.heard_ms <= this.timings.client_timeout_ms) continue;
      this.expire(c, drivesOf(c), "client expired: fencing it out");
      out.push(c);
    }
    return out;
  }

  /**
   * No longer trusted: it must be fenced out of `drives` (every drive of its volumes) before it
   * stops holding rounds back. With no drive to fence it out of, it is forgotten at once: nothing
   * else would ever remove it, and it would hold the stable generation back for good.
   */
  expire(c: ClientRecord, drives: string[], why: string): void {
    if (c.expired) return;
    c.expired = true;
    for (const d of drives) c.unfenced.add(d);
    this.env.log.warn(why, { client: c.id, name: c.name, drives: c.unfenced.size });
    if (c.unfenced.size === 0) this.fencedEverywhere(c);
  }

  /** A drive confirmed a registration table without expired client `c`. */
  fenced(c: ClientRecord, drive_uuid: string): void {
    c.unfenced.delete(drive_uuid);
    if (c.expired && c.unfenced.size === 0 && !c.gone && this.clients.get(c.id) === c) {
      this.env.log.info("expired client fenced out everywhere", { client: c.id, name: c.name });
      this.fencedEverywhere(c);
    }
  }

  /** Forgotten at once, or (replicated) kept as gone until its removal is committed. */
  private fencedEverywhere(c: ClientRecord): void {
    if (this.opts.replicated) c.gone = true;
    else if (this.clients.delete(c.id)) this.notify();
  }

  /**
   * The highest generation every client has switched to: live clients by their acknowledgement,
   * expired ones as if at their last acknowledgement until fenced out everywhere; clients that
   * never attached a volume do not count.
   */
  stable(current: number): number {
    let s = current;
    for (const c of this.clients.values()) {
      // Never attached a volume: it has done no I/O, so it has none of an older topology to drain
      // (its first attach hands it the current one). It must not hold the rounds back.
      if (c.volumes.size === 0) continue;
      s = Math.min(s, c.acked);
    }
    return s;
  }

  /** Resolves at the next change worth telling watchers about, or after `hold_ms`. */
  changed(hold_ms = this.timings.watch_hold_ms): Promise<void> {
    return new Promise((resolve) => {
      const t = this.env.timers.after(hold_ms, () => resolve());
      this.waiters.push(() => {
        t.cancel();
        resolve();
      });
    });
  }

  notify(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }
}
