/**
 * The client's connections to targets for one attached volume: each is bound at HELLO to the
 * volume (uuid + incarnation), and targets hold every request on it to that volume's extents
 * (docs/protocol.md, "Fencing"). A drive is found by its UUID through the locations the TOMA last
 * gave us; when a target goes away or no longer serves a drive, the volume asks for fresh
 * locations (`refresh`) and reconnects.
 */
import type { Env } from "../env.ts";
import type { HelloRequest, VolumeBinding } from "../wire/control.ts";
import type { TargetSession } from "../wire/session-api.ts";
import { uuidFromString } from "../uuid.ts";
import { DriveIoError } from "../drive/store.ts";

export type OpenSession = (env: Env, address: string, hello: HelloRequest) => Promise<TargetSession>;

export class NoRouteError extends Error {}

export class TargetPool {
  private readonly location = new Map<string, string | null>();
  private readonly sessions = new Map<string, TargetSession>();
  private readonly connecting = new Map<string, Promise<TargetSession>>();
  private client_id = 0;
  private generation = 0;
  private isClosed = false;
  /** Drive UUIDs in wire form, computed once per drive rather than once per I/O. */
  private readonly driveBytes = new Map<string, Uint8Array>();

  constructor(
    private readonly env: Env,
    private readonly open: OpenSession,
    private readonly client_name: string,
    /** The volume every connection of this pool serves (null: unbound, for targets without fencing). */
    private readonly volume: VolumeBinding | null,
  ) {}

  /** Records where drives are served (from the TOMA's attach info). */
  setLocations(locations: { drive_uuid: string; target: string | null }[]): void {
    for (const l of locations) this.location.set(l.drive_uuid, l.target);
  }

  /** Our id from the TOMA and the generation we run: stamped on every request from now on. */
  setIdentity(client_id: number, generation: number): void {
    this.client_id = client_id;
    this.generation = generation;
    for (const s of this.sessions.values()) {
      s.client_id = client_id;
      s.generation = generation;
    }
  }

  driveId(drive_uuid: string): Uint8Array {
    let b = this.driveBytes.get(drive_uuid);
    if (!b) {
      b = uuidFromString(drive_uuid);
      this.driveBytes.set(drive_uuid, b);
    }
    return b;
  }

  /** The open session serving `drive_uuid`, if there is one right now (the fast path). */
  cached(drive_uuid: string): TargetSession | undefined {
    const addr = this.location.get(drive_uuid);
    if (!addr) return undefined;
    const s = this.sessions.get(addr);
    return s && !s.closed ? s : undefined;
  }

  async sessionFor(drive_uuid: string): Promise<TargetSession> {
    if (this.isClosed) throw new DriveIoError("volume detached", "ECLOSED");
    const fast = this.cached(drive_uuid);
    if (fast) return fast;
    const addr = this.location.get(drive_uuid);
    if (!addr) throw new NoRouteError(`no target currently serves drive ${drive_uuid}`);
    let p = this.connecting.get(addr);
    if (!p) {
      const hello: HelloRequest = { version: 1, role: "client", name: this.client_name };
      if (this.volume !== null) hello.volume = this.volume;
      p = this.open(this.env, addr, hello).then(
        (s) => {
          // Closed meanwhile (detached, or the volume is gone): nothing may use it.
          if (this.isClosed) {
            s.close();
            throw new DriveIoError("volume detached", "ECLOSED");
          }
          s.client_id = this.client_id;
          s.generation = this.generation;
          this.sessions.set(addr, s);
          s.onClose = (why) => {
            if (this.sessions.get(addr) === s) this.sessions.delete(addr);
            this.env.log.warn("lost target connection", { target: addr, why });
          };
          return s;
        },
      );
      this.connecting.set(addr, p);
      p.finally(() => this.connecting.delete(addr)).catch(() => {});
    }
    return await p;
  }

  /** Where a drive is served, and how our session there carries its frames (null: none open). */
  route(drive_uuid: string): { target: string | null; transport: string | null } {
    const target = this.location.get(drive_uuid) ?? null;
    const s = target === null ? undefined : this.sessions.get(target);
    return { target, transport: s && !s.closed ? s.transport.why : null };
  }

  close(): void {
    this.isClosed = true;
    for (const s of this.sessions.values()) s.close();
    this.sessions.clear();
  }
}
