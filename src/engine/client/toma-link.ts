/**
 * The client daemon's TomaLink over any request function that speaks the management API's
 * routes (HTTP in production, the simulator's management links in simulation). One place knows
 * the routes; a 410 answer means the TOMA no longer knows our id.
 */
import type { AttachInfo } from "../layout/types.ts";
import { AttachError, type TomaLink, UnknownClientError, type WatchInfo } from "./daemon.ts";

/** Performs one API call; rejects with an error whose `status` is the HTTP status (0: unreachable). */
export type MgmtCall = (method: string, path: string, body?: unknown) => Promise<unknown>;

export function tomaLinkOver(call: MgmtCall): TomaLink {
  const c = async <T>(method: string, path: string, body?: unknown): Promise<T> => {
    try {
      return (await call(method, path, body)) as T;
    } catch (e) {
      if ((e as { status?: number }).status === 410) throw new UnknownClientError((e as Error).message);
      throw e;
    }
  };
  const vol = (v: string) => encodeURIComponent(v);
  return {
    register: (name) => c("POST", "/v1/clients", { name }),
    attach: async (id, volume, volume_uuid) => {
      try {
        return await c<AttachInfo>("POST", `/v1/clients/${id}/attach/${vol(volume)}`, volume_uuid === undefined ? {} : { volume_uuid });
      } catch (e) {
        // No such volume (or no longer the one we serve): the daemon's error, with the TOMA's words.
        if ((e as { status?: number }).status === 404) throw new AttachError((e as Error).message, "not_found");
        if ((e as { status?: number }).status === 409) throw new AttachError((e as Error).message, "conflict");
        throw e;
      }
    },
    watch: (id, known, stable) => c<WatchInfo>("GET", `/v1/clients/${id}/watch?known=${known}&stable=${stable}`),
    ack: async (id, generation) => {
      await c("POST", `/v1/clients/${id}/ack`, { generation });
    },
    report: async (id, volume, column, error, volume_uuid) => {
      await c("POST", `/v1/clients/${id}/report`, { volume, volume_uuid, column, error });
    },
    unregister: async (id) => {
      await c("DELETE", `/v1/clients/${id}`);
    },
  };
}
