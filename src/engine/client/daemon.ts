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
import { type OpenSession, TargetPool } from "./target-pool.ts";
import { VolumeDevice } from "./volume-device.ts";

export interface ClientDaemonDeps {
  fetchAttach: (volume: string) => Promise<AttachInfo>;
  openSession: OpenSession;
  nbd: NbdServer;
  exports: ExportRegistry;
  /** Directory for per-volume NBD unix sockets. */
  socket_dir: string;
  client_name: string;
  io_timeout_ms: number;
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
  listener: Listener;
}

export const VOLUME_NAME = /^[A-Za-z0-9._-]{1,64}$/;

export class ClientDaemon {
  private readonly pool: TargetPool;
  private readonly attached = new Map<string, Attached>();
  private readonly pending = new Set<string>();

  constructor(
    private readonly env: Env,
    private readonly deps: ClientDaemonDeps,
  ) {
    this.pool = new TargetPool(env, deps.openSession, deps.client_name);
  }

  list(): Attachment[] {
    return [...this.attached.values()].map((a) => a.info);
  }

  async attach(req: AttachRequest): Promise<Attachment> {
    const { volume } = req;
    if (!VOLUME_NAME.test(volume)) throw new AttachError(`invalid volume name '${volume}'`, "invalid");
    const existing = this.attached.get(volume);
    if (existing) return existing.info; // attach is idempotent: the same URI again
    if (this.pending.has(volume)) throw new AttachError(`volume ${volume} is being attached`, "conflict");
    this.pending.add(volume);
    try {
      const info = await this.deps.fetchAttach(volume);
      const problem = layoutProblem(info.layout);
      if (problem) throw new AttachError(`volume ${volume} has an invalid layout: ${problem}`, "invalid");
      const device = new VolumeDevice(this.env, this.pool, info, {
        refresh: () => this.deps.fetchAttach(volume),
        io_timeout_ms: this.deps.io_timeout_ms,
      });
      // I/O is enabled only once every drive of the volume answers: fail attach, not the first read.
      const drives = volumeDrives(info.layout);
      try {
        await Promise.all(drives.map((d) => this.pool.sessionFor(d)));
      } catch (e) {
        throw new AttachError(`volume ${volume} is not reachable: ${(e as Error).message}`, "unavailable");
      }
      const address = req.nbd_tcp ?? `unix:${this.deps.socket_dir}/${volume}.sock`;
      this.deps.exports.add(volume, { store: device, description: device.describe });
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
      this.attached.set(volume, { info: attachment, device, listener });
      this.env.log.info("volume attached", { volume, uri });
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
    await a.device.flush().catch((e) => this.env.log.warn("flush on detach failed", { volume, error: String(e) }));
    await a.device.close();
    this.env.log.info("volume detached", { volume });
  }

  async close(): Promise<void> {
    for (const v of [...this.attached.keys()]) await this.detach(v);
    this.pool.close();
  }
}
