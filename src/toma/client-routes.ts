/**
 * The client daemons' routes of the management API, served by whatever runs the mirror control
 * for the cluster: the single TOMA (api.ts), or the leader of a TOMA cluster
 * (cluster/leader-control.ts). Sans-I/O like api.ts.
 */
import * as v from "valibot";
import type { AttachInfo } from "../engine/layout/types.ts";
import type { ApiResponse, Caller } from "./api-auth.ts";
import { ClientAckBody, ClientAttachBody, ClientRegisterBody, ClientReportBody } from "./api-types.ts";
import type { ClusterState, VolumeRecord } from "./cluster-state.ts";
import type { MirrorControl } from "./mirror-control.ts";
import { volumeNamed } from "./volume-lookup.ts";
import { watchAnswerOf } from "./volume-views.ts";

/** What serves the client daemons: the mirror control and the state it acts on. */
export interface ClientHost {
  readonly mirror: MirrorControl;
  /** The state clients are served from; null while there is none to act on (notReady says why). */
  state(): ClusterState | null;
  notReady(): string;
  /** Runs a pass of the mirror control soon (a client reported something). */
  kick(): void;
  attachInfo(vol: VolumeRecord): AttachInfo;
}

const err = (status: number, error: string): ApiResponse => ({ status, body: { error } });
const ok = (body: unknown, status = 200): ApiResponse => ({ status, body });
export const signedWith = (c: Caller): string =>
  c.kind === "client-id" ? `the secret of client ${c.id}` : c.kind === "client" ? "the client key" : `the ${c.kind} key`;

/**
 * The client daemons' routes: register (one id per daemon incarnation), attach (registers it on
 * the volume's drives first), watch (long poll for new generations), ack, report a failing leg,
 * leave (DELETE: it has no volume attached any more).
 * An unknown or expired client id is answered 410: the daemon registers again.
 *
 * Registering takes the client key (or the server key); the answer carries the new client's
 * secret, sealed for the signer. A client's own routes then take that secret: the client key
 * alone cannot act for (e.g. fence out) another client; the server key can.
 */
export async function clientRoutes(
  host: ClientHost,
  m: string,
  path: string,
  route: string[],
  body: unknown,
  caller: Caller,
): Promise<ApiResponse> {
  const mc = host.mirror;
  const findVolume = (raw: string) => volumeNamed(raw, () => host.state()?.volumes ?? err(503, `TOMA not ready: ${host.notReady()}`));
  if (route.length === 0) {
    if (m !== "POST") return err(405, `${m} not allowed on ${path}; use POST`);
    if (caller.kind === "client-id") return err(403, `register with the client key, not with ${signedWith(caller)}`);
    const r = v.safeParse(ClientRegisterBody, body);
    if (!r.success) return err(400, `invalid client registration: ${r.issues.map((i) => i.message).join("; ")}`);
    if (!host.state()) return err(503, `TOMA not ready: ${host.notReady()}`);
    const c = await mc.register(r.output.name);
    if (typeof c === "string") return err(503, `cannot register the client now: ${c}`);
    const secret = caller.kind === "insecure" ? {} : { secret: caller.seal(c.secret, c.id) };
    return ok({ client_id: c.id, generation: c.acked, ...secret }, 201);
  }
  const id = Number(route[0]);
  if (caller.kind === "client" || (caller.kind === "client-id" && caller.id !== id)) {
    return err(403, `only client ${route[0]} itself (with the secret it was given when it registered) or an administrator may do this; this request was signed with ${signedWith(caller)}`);
  }
  const c = Number.isSafeInteger(id) ? mc.clients.live(id) : undefined;
  if (!c) return err(410, `client ${route[0]} is not registered (expired or TOMA restarted): register again`);
  mc.clients.heard(c);
  if (route.length === 1) {
    if (m !== "DELETE") return err(405, `${m} not allowed on ${path}; use DELETE`);
    // The daemon detached its last volume or stops: fenced out now, not after client_timeout_ms
    // of holding every topology step back.
    const state = host.state();
    const drives = [...c.volumes].flatMap((u) => state?.volumes.find((x) => x.uuid === u)?.columns.map((k) => k.drive_uuid) ?? []);
    mc.clients.expire(c, drives, "client left: fencing it out");
    host.kick();
    return ok({ left: c.id });
  }
  if (route.length === 3 && route[1] === "attach") {
    if (m !== "POST") return err(405, `${m} not allowed on ${path}; use POST`);
    const r = v.safeParse(ClientAttachBody, body ?? {});
    if (!r.success) return err(400, `invalid attach: ${r.issues.map((i) => i.message).join("; ")}`);
    const vol = findVolume(route[2]!);
    if ("status" in vol) return vol;
    const want = r.output.volume_uuid;
    if (want !== undefined && vol.uuid !== want) {
      return err(404, `volume ${want} no longer exists (the volume named '${vol.name}' now is ${vol.uuid}, another one)`);
    }
    if (mc.isDeleting(vol.uuid)) return err(409, `volume '${vol.name}' is being deleted`);
    // Without a volume it has no I/O at all: it is switched to the current generation already
    // (so counting it from now on never takes the stable generation back).
    const st = host.state();
    if (c.volumes.size === 0 && st) mc.clients.ack(c, st.generation);
    const why = await mc.attach(c, vol.uuid);
    if (why !== null) return err(503, `cannot attach volume '${vol.name}' now: ${why}`);
    // Looked up again, by uuid: the volume may have been deleted while the registration awaited
    // the drives (attachInfo itself answers the state's current record of it).
    // No state to answer from any more (this TOMA stopped leading, or was deposed) is not a
    // delete: 503, and the daemon asks again where it is homed next.
    const after = host.state();
    if (!after) return err(503, `TOMA not ready: ${host.notReady()}`);
    const now = after.volumes.find((x) => x.uuid === vol.uuid);
    if (!now) {
      c.volumes.delete(vol.uuid);
      return err(404, `volume '${vol.name}' was deleted while being attached`);
    }
    return ok(host.attachInfo(now) satisfies AttachInfo);
  }
  if (route.length === 2 && route[1] === "watch") {
    if (m !== "GET") return err(405, `${m} not allowed on ${path}; use GET`);
    const q = new URLSearchParams(path.split("?")[1] ?? "");
    const known = Number(q.get("known") ?? "-1");
    const known_stable = Number(q.get("stable") ?? "-1");
    // Held until something the client does not know yet happens (or a heartbeat's time).
    const before = host.state();
    if (!before) return err(503, `TOMA not ready: ${host.notReady()}`);
    // Not held while we hold an acknowledgement older than the generation (a new leader that
    // restored this client from the cluster state): the answer's `acked` asks for it again.
    if (before.generation <= known && mc.stable() <= known_stable && c.acked >= before.generation) await mc.clients.changed();
    mc.clients.heard(c);
    // Never an empty list for want of a state (the daemon would tear its exports down): 503.
    const state = host.state();
    if (!state) return err(503, `TOMA not ready: ${host.notReady()}`);
    // By uuid: a volume deleted (or taken out of this client by a forced delete) is absent, and
    // a newer one that took its name is not it. The daemon tears down what is absent.
    return ok(watchAnswerOf(state, c.volumes, c.acked, mc.stable(), (x) => host.attachInfo(x)));
  }
  if (route.length === 2 && route[1] === "ack") {
    if (m !== "POST") return err(405, `${m} not allowed on ${path}; use POST`);
    const r = v.safeParse(ClientAckBody, body);
    if (!r.success) return err(400, `invalid ack: ${r.issues.map((i) => i.message).join("; ")}`);
    const st = host.state();
    if (!st) return err(503, `TOMA not ready: ${host.notReady()}`);
    if (r.output.generation > st.generation) return err(400, `generation ${r.output.generation} does not exist yet`);
    mc.clients.ack(c, r.output.generation);
    host.kick();
    return ok({ acked: c.acked });
  }
  if (route.length === 2 && route[1] === "report") {
    if (m !== "POST") return err(405, `${m} not allowed on ${path}; use POST`);
    const r = v.safeParse(ClientReportBody, body);
    if (!r.success) return err(400, `invalid report: ${r.issues.map((i) => i.message).join("; ")}`);
    const vol = findVolume(r.output.volume);
    if ("status" in vol) return vol;
    if (r.output.volume_uuid !== undefined && r.output.volume_uuid !== vol.uuid) return err(404, `volume ${r.output.volume_uuid} no longer exists`);
    if (r.output.column >= vol.columns.length) return err(400, `volume ${vol.name} has ${vol.columns.length} legs`);
    mc.reportFailure(vol, r.output.column, `client ${c.id}: ${r.output.error}`);
    host.kick();
    return ok({ reported: true });
  }
  return err(404, `no such route: ${m} ${path}`);
}
