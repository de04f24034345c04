/**
 * The per-host client daemon's logic: attach a volume (fetch its layout from the TOMA, connect to
 * every drive, export it over NBD), detach it, list what is attached. Sans-I/O: the TOMA is
 * reached through the injected `fetchAttach`, sockets through env.net.
 */
import type { Env } from "../env.ts";
import { layoutProblem, volumeDrives } from "../layout/planner.ts";
import type { AttachInfo } from "../layout/types.ts";
import type { Listener, ListenOptions } from "../net/conn.ts";
import type { ExportLookup, ExportRegistry } from "../nbd/exports.ts";
import type { NbdServer } from "../nbd/server.ts";
import { shortClientName } from "../../debugfmt/sector.ts";
import { DriveIoError, type DriveStore } from "../drive/store.ts";
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
  /**
   * Registers us on the volume's drives, then returns its layout and topology. With `volume_uuid`,
   * only that volume: AttachError "not_found" when it no longer exists (a newer volume of the name
   * is not it).
   */
  attach(client_id: number, volume: string, volume_uuid?: string): Promise<AttachInfo>;
  /** Long poll: returns once the generation or the stable generation moved past what we know. */
  watch(client_id: number, known: number, known_stable: number): Promise<WatchInfo>;
  /** No I/O of a topology older than `generation` is in flight here any more. */
  ack(client_id: number, generation: number): Promise<void>;
  report(client_id: number, volume: string, column: number, error: string, volume_uuid: string): Promise<void>;
  /** This id has nothing attached any more: fence it out now (not after the client timeout). */
  unregister(client_id: number): Promise<void>;
}

export interface WatchInfo {
  generation: number;
  stable_generation: number;
  /**
   * The generation the TOMA holds as our acknowledgement (absent from older TOMAs). Below
   * `generation` after we acknowledged it: a new leader of a TOMA cluster restored us from the
   * cluster state without our acknowledgement, and asks for it again.
   */
  acked?: number;
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
  /**
   * Other exports of this daemon that the volume's listener offers too (by name, attached now or
   * later). Without it a listener serves its own volume only.
   */
  export_list?: string[];
  /** Unix socket only: its permission bits (default 0600, owner only) and group. */
  socket_mode?: number;
  socket_gid?: number;
}

export interface Attachment {
  volume: string;
  /** The volume's uuid and incarnation: a newer volume that takes the name is not this one. */
  volume_uuid: string;
  incarnation: number;
  uri: string;
  /** The exports its listener offers: the volume, and any named by export_list. */
  exports: string[];
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
  /** What its listener offers (NbdServer sessions accepted there see only this). */
  view: ExportLookup;
  /** Its connections to targets, each bound to the volume. */
  pool: TargetPool;
  /**
   * Our client id when its attach (or a refresh, which registers it again) last completed, and
   * when (attachSeq): a watch of that id sent after that must list it, or it is gone.
   */
  attached_as: number;
  seq: number;
  /**
   * The generation of the state that attach answered from. A watch answered from an older state
   * (a TOMA cluster's home TOMA that has not applied the attachment yet) does not list it, and
   * says nothing about it.
   */
  attached_gen: number;
}

export const VOLUME_NAME = /^[A-Za-z0-9._-]{1,64}$/;

/**
 * A view from the TOMA, checked before anything plans I/O with it (its layout's runs included:
 * planner.ts layoutProblem); AttachError "invalid" naming the volume otherwise.
 */
function checkedView(info: AttachInfo): AttachInfo {
  const layout = (info as Partial<AttachInfo> | null)?.layout;
  if (typeof layout !== "object" || layout === null) throw new AttachError("the TOMA's attach view has no layout", "invalid");
  const problem = layoutProblem(layout);
  if (problem) throw new AttachError(`volume ${String(layout.name)} has an invalid layout: ${problem}`, "invalid");
  return info;
}

/** The volume this daemon attached no longer exists (deleted, or its name now names another). */
function isGone(e: unknown): boolean {
  return e instanceof AttachError && e.code === "not_found";
}

export class ClientDaemon {
  /** Every attached (or attaching) volume's pool: each stamps our id and generation. */
  private readonly pools = new Set<TargetPool>();
  private identity = { client_id: 0, generation: 0 };
  private readonly attached = new Map<string, Attached>();
  /** Bumped by each completed attach (Attached.seq). */
  private attachSeq = 0;
  private readonly pending = new Set<string>();
  /**
   * Volumes (count of calls) whose attach call found our id unknown and attaches them again under
   * the new id itself (fetchAttachAs): reattachAll leaves them to it, or they would be attached
   * twice.
   */
  private readonly rejoining = new Map<string, number>();
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
  ) {}

  private setIdentity(client_id: number, generation: number): void {
    this.identity = { client_id, generation };
    for (const p of this.pools) p.setIdentity(client_id, generation);
  }

  private raiseGeneration(generation: number): void {
    if (generation > this.identity.generation) this.setIdentity(this.identity.client_id, generation);
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
        this.setIdentity(id, r.generation);
        this.env.log.info("registered with the TOMA", { client: id });
        // The fences admit the new id only for what it attaches: every volume, again.
        if (this.attached.size > 0) void this.reattachAll();
        return id;
      })().finally(() => {
        this.registering = null;
      });
    }
    return await this.registering;
  }

  /**
   * Fetches a volume's view (with `uuid`: of that volume only), registering (again) when the TOMA
   * no longer knows us.
   */
  private async fetchAttach(volume: string, uuid?: string): Promise<AttachInfo> {
    return (await this.fetchAttachAs(volume, uuid)).info;
  }

  /** fetchAttach, and the client id the TOMA registered the volume for. */
  private async fetchAttachAs(volume: string, uuid?: string): Promise<{ info: AttachInfo; id: number }> {
    let rejoining = false;
    try {
      for (let attempt = 0; ; attempt++) {
        const id = await this.id();
        try {
          const info = checkedView(await this.deps.toma.attach(id, volume, uuid));
          if (uuid !== undefined && info.layout.volume_uuid !== uuid) {
            throw new AttachError(`volume ${uuid} no longer exists: '${volume}' now names ${info.layout.volume_uuid}`, "not_found");
          }
          if (id === this.client_id) this.raiseGeneration(info.generation);
          const a = this.attached.get(volume);
          if (a !== undefined && a.info.volume_uuid === info.layout.volume_uuid) {
            a.attached_as = id;
            a.seq = ++this.attachSeq;
            a.attached_gen = info.generation;
          }
          return { info, id };
        } catch (e) {
          if (!(e instanceof UnknownClientError) || attempt > 0) throw e;
          if (this.client_id === id) this.client_id = null;
          // This call attaches the volume again under the new id itself: reattachAll leaves it.
          if (!rejoining) this.rejoining.set(volume, (this.rejoining.get(volume) ?? 0) + 1);
          rejoining = true;
        }
      }
    } finally {
      if (rejoining) {
        const n = this.rejoining.get(volume)! - 1;
        if (n === 0) this.rejoining.delete(volume);
        else this.rejoining.set(volume, n);
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
        let id: number | null = null;
        try {
          id = await this.id();
          const sent = this.attachSeq;
          const w = await this.deps.toma.watch(id, this.known, this.known_stable);
          if (id !== this.client_id) continue;
          this.raiseGeneration(w.generation);
          // Every view checked before any is installed: a bad one leaves the generation unacknowledged.
          for (const info of w.volumes) checkedView(info);
          const listed = new Set(w.volumes.map((info) => info.layout.volume_uuid));
          for (const info of w.volumes) {
            const a = this.attached.get(info.layout.name);
            if (a?.info.volume_uuid === info.layout.volume_uuid) a.device.install(info);
          }
          // Attached under this id before this watch was sent, so the TOMA had it on our record:
          // absent now means deleted, or taken from us by a forced delete. Its export goes.
          for (const a of [...this.attached.values()]) {
            if (a.attached_as === id && a.seq <= sent && w.generation >= a.attached_gen && !listed.has(a.info.volume_uuid)) this.gone(a, "the TOMA no longer lists it for this client");
          }
          this.known = w.generation;
          this.known_stable = w.stable_generation;
          if (w.generation > this.acked || (w.acked !== undefined && w.acked < w.generation)) {
            await Promise.all([...this.attached.values()].map((a) => a.device.drained()));
            await this.deps.toma.ack(id, w.generation);
            this.acked = w.generation;
          }
        } catch (e) {
          if (e instanceof UnknownClientError) {
            this.env.log.warn("the TOMA no longer knows this client: registering again", { client: id });
            // Only the id this watch was sent with is unknown: one registered since (an attach
            // or refresh found the old id unknown first) is kept. Dropping it registered us a
            // third time and left that id registered, unused, holding every mirror step back
            // until the TOMA expired it (mirror seed 353: "unanswered" acknowledgements).
            if (this.client_id === id) this.client_id = null;
            // Registering again attaches every volume again (id()).
            await this.id().catch(() => {});
          } else {
            if (e instanceof AttachError && e.code === "invalid") this.env.log.warn("the TOMA sent an invalid view; not installed", { error: e.message });
            else this.env.log.debug("watch failed; retrying", { error: String(e) });
            await new Promise<void>((r) => this.env.timers.after(500, r));
          }
        }
      }
    } finally {
      this.watching = false;
    }
  }

  list(): Attachment[] {
    return [...this.attached.values()].map((a) => ({ ...a.info, sessions: sessionsOf(a.pool, a.device.drives()) }));
  }

  async attach(req: AttachRequest): Promise<Attachment> {
    const { volume } = req;
    if (!VOLUME_NAME.test(volume)) throw new AttachError(`invalid volume name '${volume}'`, "invalid");
    const existing = this.attached.get(volume);
    if (existing) return existing.info; // attach is idempotent: the same URI again
    const listen = listenOptions(req, this.deps.socket_dir);
    const exports = [volume, ...(req.export_list ?? []).filter((n) => n !== volume)];
    for (const n of exports) if (!VOLUME_NAME.test(n)) throw new AttachError(`invalid export name '${n}' in the export list`, "invalid");
    if (this.pending.has(volume)) throw new AttachError(`volume ${volume} is being attached`, "conflict");
    this.pending.add(volume);
    let pool: TargetPool | null = null;
    try {
      const { info, id: attached_as } = await this.fetchAttachAs(volume);
      const uuid = info.layout.volume_uuid;
      pool = new TargetPool(this.env, this.deps.openSession, this.deps.client_name, { uuid, incarnation: info.layout.incarnation });
      pool.setIdentity(this.identity.client_id, this.identity.generation);
      this.pools.add(pool);
      const device = new VolumeDevice(this.env, pool, info, {
        refresh: () =>
          this.fetchAttach(volume, uuid).catch((e) => {
            const a = this.attached.get(volume);
            if (isGone(e) && a?.info.volume_uuid === uuid) this.gone(a, (e as Error).message);
            throw e;
          }),
        report: (column, error) => {
          if (this.client_id === null) return;
          this.deps.toma.report(this.client_id, volume, column, error, uuid).catch(() => {});
        },
        io_timeout_ms: this.deps.io_timeout_ms,
      });
      // I/O is enabled only once every drive it uses answers: fail attach, not the first read.
      const drives = volumeDrives(info.layout);
      try {
        await Promise.all(liveDrives(info).map((d) => pool!.sessionFor(d)));
      } catch (e) {
        throw new AttachError(`volume ${volume} is not reachable: ${(e as Error).message}`, "unavailable");
      }
      const store = info.layout.debug_format ? this.debugView(device, info.layout.volume_uuid) : device;
      this.deps.exports.add(volume, { store, description: store.describe });
      // One listener, one volume: sessions accepted here see its export (and the export list's) only.
      const view = this.deps.exports.view(exports);
      let listener: Listener;
      try {
        listener = await this.env.net.listen(listen.address, (conn) => this.deps.nbd.handle(conn, view), listen.options);
      } catch (e) {
        this.deps.exports.remove(volume);
        throw new AttachError(`cannot export ${volume} on ${listen.address}: ${(e as Error).message}`, "unavailable");
      }
      const uri = listener.address.startsWith("unix:")
        ? `nbd+unix:///${volume}?socket=${listener.address.slice(5)}`
        : `nbd://${listener.address}/${volume}`;
      const attachment: Attachment = {
        volume,
        volume_uuid: uuid,
        incarnation: info.layout.incarnation,
        uri,
        exports,
        capacity_bytes: info.layout.capacity_bytes,
        raid_level: info.layout.raid_level,
        drives: drives.length,
        generation: info.generation,
      };
      this.attached.set(volume, { info: attachment, device, store, listener, view, pool, attached_as, seq: ++this.attachSeq, attached_gen: info.generation });
      pool = null;
      this.env.log.info("volume attached", { volume, uuid, uri });
      void this.watchLoop();
      return attachment;
    } finally {
      this.pending.delete(volume);
      if (pool !== null) this.closePool(pool);
    }
  }

  /**
   * Every attached volume registered again under our (new) id: the fences admit the new id only
   * for what it attached. One that no longer exists goes.
   */
  private async reattachAll(): Promise<void> {
    // Taken now: a call that was attaching one again may be done by the time the loop reaches it.
    const theirs = new Set(this.rejoining.keys());
    for (const a of [...this.attached.values()]) {
      if (this.attached.get(a.info.volume) !== a || theirs.has(a.info.volume)) continue;
      if (this.client_id !== null && a.attached_as === this.client_id) continue; // attached under the new id already
      await this.fetchAttach(a.info.volume, a.info.volume_uuid).then(
        (info) => this.attached.get(a.info.volume)?.device.install(info),
        (e) => {
          if (isGone(e)) this.gone(a, (e as Error).message);
          else this.env.log.debug("cannot attach again under our new id; its next refresh will", { volume: a.info.volume, error: String(e) });
        },
      );
    }
  }

  private closePool(pool: TargetPool): void {
    this.pools.delete(pool);
    pool.close();
  }

  async detach(volume: string): Promise<void> {
    const a = this.attached.get(volume);
    if (!a) throw new AttachError(`volume ${volume} is not attached here`, "not_found");
    this.attached.delete(volume);
    a.listener.close();
    // Requests in flight are answered before the connections close; then nothing new arrives.
    this.deps.nbd.stopView(a.view, `listener of ${volume} closed`);
    await this.deps.nbd.detach(volume);
    // Everything acknowledged so far must be durable before the volume goes away.
    await a.store.flush().catch((e) => this.env.log.warn("flush on detach failed", { volume, error: String(e) }));
    await a.store.close();
    this.closePool(a.pool);
    this.env.log.info("volume detached", { volume });
    if (this.attached.size === 0 && this.pending.size === 0) await this.leave();
  }

  /**
   * The volume no longer exists (deleted, forced off this client, or its name now names another
   * volume): its export is torn down at once, its NBD connections closed, and I/O still in flight
   * fails. Nothing is flushed: its extents are not its own any more, and the targets refuse it.
   */
  private gone(a: Attached, why: string): void {
    const volume = a.info.volume;
    if (this.attached.get(volume) !== a) return;
    this.attached.delete(volume);
    this.env.log.warn("volume gone: export removed, its NBD connections closed", { volume, uuid: a.info.volume_uuid, why });
    a.listener.close();
    // Retries end at once (ECLOSED) instead of waiting io_timeout_ms for a volume that is no more.
    void a.device.close();
    this.closePool(a.pool);
    this.deps.nbd.stopView(a.view, `volume ${volume} is gone`);
    void this.deps.nbd
      .detach(volume)
      .then(() => a.store.close())
      .catch((e) => this.env.log.warn("tearing down a gone volume failed", { volume, error: String(e) }))
      .then(() => (this.attached.size === 0 && this.pending.size === 0 ? this.leave() : undefined));
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
    for (const p of [...this.pools]) this.closePool(p);
  }
}

/** The targets a volume's connections reach, each once, with the transport each uses. */
function sessionsOf(pool: TargetPool, drives: string[]): { target: string; transport: string | null }[] {
  const seen = new Map<string, string | null>();
  for (const d of drives) {
    const r = pool.route(d);
    if (r.target !== null && !seen.has(r.target)) seen.set(r.target, r.transport);
  }
  return [...seen].sort().map(([target, transport]) => ({ target, transport }));
}

/** Where a volume's NBD export listens, with what socket permissions. */
function listenOptions(req: AttachRequest, socket_dir: string): { address: string; options: ListenOptions } {
  if (req.nbd_tcp !== undefined) {
    if (req.socket_mode !== undefined || req.socket_gid !== undefined) {
      throw new AttachError("socket mode and group apply to a unix socket export, not to --nbd-tcp", "invalid");
    }
    return { address: req.nbd_tcp, options: {} };
  }
  const mode = req.socket_mode ?? DEFAULT_SOCKET_MODE;
  if (!Number.isInteger(mode) || mode < 0 || mode > 0o777) throw new AttachError(`socket mode ${mode} is not within 0..0777`, "invalid");
  return {
    address: `unix:${socket_dir}/${req.volume}.sock`,
    options: { mode, ...(req.socket_gid === undefined ? {} : { gid: req.socket_gid }) },
  };
}

/** A volume's unix socket: its owner (root, who runs the daemon) only, unless told otherwise. */
export const DEFAULT_SOCKET_MODE = 0o600;

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
