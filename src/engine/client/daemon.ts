/**
 * The per-host client daemon's logic: attach a volume (fetch its layout from the TOMA, connect to
 * every drive, export it over NBD), detach it, list what is attached. Sans-I/O: the TOMA is
 * reached through the injected `fetchAttach`, sockets through env.net.
 */
import type { Env } from "../env.ts";
import { layoutProblem, volumeDrives } from "../layout/planner.ts";
import type { AttachInfo } from "../layout/types.ts";
import type { Listener } from "../net/conn.ts";
import type { ExportRegistry } from "../nbd/exports.ts";
import type { NbdServer } from "../nbd/server.ts";
import { shortClientName } from "../../debugfmt/sector.ts";
import type { DriveStore } from "../drive/store.ts";
import { EvilSchedule, type EvilSwitch } from "./debug-evil.ts";
import { DebugVolume } from "./debug-volume.ts";
import { type OpenSession, TargetPool } from "./target-pool.ts";
import { VolumeDevice } from "./volume-device.ts";

/** The TOMA answered that our client id is unknown (it expired us, or restarted): register again. */
export class UnknownClientError extends Error {}

/** What the daemon needs of the TOMA's management API (real HTTP, or the simulator's links). */
export interface TomaLink {
  /** A new client id for this daemon incarnation, and the generation it starts at. */
  register(name: string): Promise<{ client_id: number; generation: number }>;
  /** Registers us on the volume's drives, then returns its layout and topology. */
  attach(client_id: number, volume: string): Promise<AttachInfo>;
  /** Long poll: returns once the generation or the stable generation moved past what we know. */
  watch(client_id: number, known: number, known_stable: number): Promise<WatchInfo>;
  /** No I/O of a topology older than `generation` is in flight here any more. */
  ack(client_id: number, generation: number): Promise<void>;
  report(client_id: number, volume: string, column: number, error: string): Promise<void>;
  /** This id has nothing attached any more: fence it out now (not after the client timeout). */
  unregister(client_id: number): Promise<void>;
}

export interface WatchInfo {
  generation: number;
  stable_generation: number;
  volumes: AttachInfo[];
}

export interface ClientDaemonDeps {
  toma: TomaLink;
  openSession: OpenSession;
  nbd: NbdServer;
  exports: ExportRegistry;
  /** Directory for per-volume NBD unix sockets. */
  socket_dir: string;
  client_name: string;
  io_timeout_ms: number;
  /** TEST-ONLY: corrupt this daemon's writes to debug-format volumes (debug-evil.ts). */
  evil?: EvilSwitch | null;
}

export interface AttachRequest {
  volume: string;
  /** HOST:PORT to export on TCP instead of a unix socket. */
  nbd_tcp?: string;
}

export interface Attachment {
  volume: string;
  uri: string;
  capacity_bytes: number;
  raid_level: string;
  drives: number;
  generation: number;
  /**
   * The targets this volume's drives are on, and how this client's session to each carries its
   * frames and why ("rdma: the target listens on rdma://…", "tcp: no RDMA device on this host",
   * "in-process: …"; null while not connected). Filled when listed.
   */
  sessions?: { target: string; transport: string | null }[];
}

export class AttachError extends Error {
  constructor(
    message: string,
    readonly code: "not_found" | "conflict" | "unavailable" | "invalid",
  ) {
    super(message);
  }
}

interface Attached {
  info: Attachment;
  device: VolumeDevice;
  /** What is exported: the device, or the debug-format view of it. */
  store: DriveStore;
  listener: Listener;
}

export const VOLUME_NAME = /^[A-Za-z0-9._-]{1,64}$/;

export class ClientDaemon {
  private readonly pool: TargetPool;
  private readonly attached = new Map<string, Attached>();
  private readonly pending = new Set<string>();
  /** Our id at the TOMA; null until registered (again). */
  private client_id: number | null = null;
  private registering: Promise<number> | null = null;
  private known = -1;
  private known_stable = -1;
  private acked = -1;
  private closed = false;
  private watching = false;
  /** Per debug-format volume: this daemon's send counter, kept across detach and attach. */
  private readonly debugSeqs = new Map<string, { value: number }>();

  constructor(
    private readonly env: Env,
    private readonly deps: ClientDaemonDeps,
  ) {
    this.pool = new TargetPool(env, deps.openSession, deps.client_name);
  }

  /** Our client id, registering first if needed (one registration at a time). */
  private async id(): Promise<number> {
    if (this.client_id !== null) return this.client_id;
    if (!this.registering) {
      this.registering = (async () => {
        const r = await this.deps.toma.register(this.deps.client_name);
        const id = r.client_id;
        this.client_id = id;
        this.known = this.known_stable = this.acked = -1;
        this.pool.setIdentity(id, r.generation);
        this.env.log.info("registered with the TOMA", { client: id });
        return id;
      })().finally(() => {
        this.registering = null;
      });
    }
    return await this.registering;
  }

  /** Fetches a volume's view, registering (again) when the TOMA no longer knows us. */
  private async fetchAttach(volume: string): Promise<AttachInfo> {
    for (let attempt = 0; ; attempt++) {
      const id = await this.id();
      try {
        const info = await this.deps.toma.attach(id, volume);
        if (id === this.client_id) this.pool.raiseGeneration(info.generation);
        return info;
      } catch (e) {
        if (!(e instanceof UnknownClientError) || attempt > 0) throw e;
        if (this.client_id === id) this.client_id = null;
      }
    }
  }

  /**
   * The switch loop: learn each new generation, install it in every attached volume, wait until
   * no I/O of an older topology is in flight, acknowledge. Runs while anything is attached.
   */
  private async watchLoop(): Promise<void> {
    if (this.watching) return;
    this.watching = true;
    try {
      while (!this.closed && this.attached.size > 0) {
        try {
          const id = await this.id();
          const w = await this.deps.toma.watch(id, this.known, this.known_stable);
          if (id !== this.client_id) continue;
          this.pool.raiseGeneration(w.generation);
          for (const info of w.volumes) this.attached.get(info.layout.name)?.device.install(info);
          this.known = w.generation;
          this.known_stable = w.stable_generation;
          if (w.generation > this.acked) {
            await Promise.all([...this.attached.values()].map((a) => a.device.drained()));
            await this.deps.toma.ack(id, w.generation);
            this.acked = w.generation;
          }
        } catch (e) {
          if (e instanceof UnknownClientError) {
            this.env.log.warn("the TOMA no longer knows this client: registering again", {});
            this.client_id = null;
            // Every volume is registered again under the new id (the fence admits the new id only).
            for (const name of [...this.attached.keys()]) {
              await this.fetchAttach(name).then((info) => this.attached.get(name)?.device.install(info)).catch(() => {});
            }
          } else {
            this.env.log.debug("watch failed; retrying", { error: String(e) });
            await new Promise<void>((r) => this.env.timers.after(500, r));
          }
        }
      }
    } finally {
      this.watching = false;
    }
  }

  list(): Attachment[] {
    return [...this.attached.values()].map((a) => ({ ...a.info, sessions: this.sessionsOf(a.device.drives()) }));
  }

  private sessionsOf(drives: string[]): { target: string; transport: string | null }[] {
    const seen = new Map<string, string | null>();
    for (const d of drives) {
      const r = this.pool.route(d);
      if (r.target !== null && !seen.has(r.target)) seen.set(r.target, r.transport);
    }
    return [...seen].sort().map(([target, transport]) => ({ target, transport }));
  }

  async attach(req: AttachRequest): Promise<Attachment> {
    const { volume } = req;
    if (!VOLUME_NAME.test(volume)) throw new AttachError(`invalid volume name '${volume}'`, "invalid");
    const existing = this.attached.get(volume);
    if (existing) return existing.info; // attach is idempotent: the same URI again
    if (this.pending.has(volume)) throw new AttachError(`volume ${volume} is being attached`, "conflict");
    this.pending.add(volume);
    try {
      const info = await this.fetchAttach(volume);
      const problem = layoutProblem(info.layout);
      if (problem) throw new AttachError(`volume ${volume} has an invalid layout: ${problem}`, "invalid");
      const device = new VolumeDevice(this.env, this.pool, info, {
        refresh: () => this.fetchAttach(volume),
        report: (column, error) => {
          if (this.client_id === null) return;
          this.deps.toma.report(this.client_id, volume, column, error).catch(() => {});
        },
        io_timeout_ms: this.deps.io_timeout_ms,
      });
      // I/O is enabled only once every drive it uses answers: fail attach, not the first read.
      const drives = volumeDrives(info.layout);
      try {
        await Promise.all(liveDrives(info).map((d) => this.pool.sessionFor(d)));
      } catch (e) {
        throw new AttachError(`volume ${volume} is not reachable: ${(e as Error).message}`, "unavailable");
      }
      const store = info.layout.debug_format ? this.debugView(device, info.layout.volume_uuid) : device;
      const address = req.nbd_tcp ?? `unix:${this.deps.socket_dir}/${volume}.sock`;
      this.deps.exports.add(volume, { store, description: store.describe });
      let listener: Listener;
      try {
        listener = await this.env.net.listen(address, (conn) => this.deps.nbd.handle(conn));
      } catch (e) {
        this.deps.exports.remove(volume);
        throw new AttachError(`cannot export ${volume} on ${address}: ${(e as Error).message}`, "unavailable");
      }
      const uri = listener.address.startsWith("unix:")
        ? `nbd+unix:///${volume}?socket=${listener.address.slice(5)}`
        : `nbd://${listener.address}/${volume}`;
      const attachment: Attachment = {
        volume,
        uri,
        capacity_bytes: info.layout.capacity_bytes,
        raid_level: info.layout.raid_level,
        drives: drives.length,
        generation: info.generation,
      };
      this.attached.set(volume, { info: attachment, device, store, listener });
      this.env.log.info("volume attached", { volume, uri });
      void this.watchLoop();
      return attachment;
    } finally {
      this.pending.delete(volume);
    }
  }

  async detach(volume: string): Promise<void> {
    const a = this.attached.get(volume);
    if (!a) throw new AttachError(`volume ${volume} is not attached here`, "not_found");
    this.attached.delete(volume);
    a.listener.close();
    // Requests in flight are answered before the connections close; then nothing new arrives.
    await this.deps.nbd.detach(volume);
    // Everything acknowledged so far must be durable before the volume goes away.
    await a.store.flush().catch((e) => this.env.log.warn("flush on detach failed", { volume, error: String(e) }));
    await a.store.close();
    this.env.log.info("volume detached", { volume });
    if (this.attached.size === 0 && this.pending.size === 0) await this.leave();
  }

  /**
   * Nothing is attached: tell the TOMA, which otherwise counts on our acknowledgements until it
   * expires us, holding every mirror's topology steps back meanwhile. The next attach registers
   * a new id.
   */
  private async leave(): Promise<void> {
    const id = this.client_id;
    if (id === null) return;
    this.client_id = null;
    await this.deps.toma.unregister(id).catch((e) => this.env.log.warn("cannot tell the TOMA we left", { error: String(e) }));
  }

  /** A debug-format volume's sectors carry our current client id and name (debug-volume.ts). */
  private debugView(device: VolumeDevice, volume_uuid: string): DebugVolume {
    const evil = this.deps.evil ? new EvilSchedule(this.deps.evil) : null;
    if (evil) this.env.log.warn("TEST-ONLY evil switch on: this client corrupts its debug-format writes", { ...evil.sw, volume_uuid });
    if (evil?.needsMirror() && device.leg_count < 2) this.env.log.warn("evil switch needs a mirrored volume: no effect here", { kind: evil.sw.kind });
    const client_name = shortClientName(this.deps.client_name);
    let seq = this.debugSeqs.get(volume_uuid);
    if (seq === undefined) this.debugSeqs.set(volume_uuid, (seq = { value: 0 }));
    return new DebugVolume(device, {
      seq,
      volume_uuid,
      writer: () => ({ client_id: this.client_id ?? 0, client_name }),
      log: this.env.log,
      evil,
    });
  }

  async close(): Promise<void> {
    for (const v of [...this.attached.keys()]) await this.detach(v);
    await this.leave();
    this.closed = true;
    this.pool.close();
  }
}

/**
 * The drives a volume's I/O uses now: all of them, except a mirror's DEAD legs (its I/O never
 * goes there, so a Degraded mirror attaches on the legs it has).
 */
export function liveDrives(info: AttachInfo): string[] {
  const { layout, topology } = info;
  if (topology.length === 0) return volumeDrives(layout);
  const out = new Set<string>();
  topology.forEach((t, set) =>
    t.legs.forEach((role, leg) => {
      if (role !== "DEAD") out.add(layout.columns[set * layout.mirrors + leg]!.drive_uuid);
    }),
  );
  return [...out];
}
