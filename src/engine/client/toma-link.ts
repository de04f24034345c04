/**
 * The client daemon's TomaLink over any request function that speaks the management API's
 * routes (HTTP in production, the simulator's management links in simulation). One place knows
 * the routes; a 410 answer means the TOMA no longer knows our id.
 */
import * as v from "valibot";
import type { AttachInfo } from "../layout/types.ts";
import { AttachError, type TomaLink, UnknownClientError, type WatchInfo } from "./daemon.ts";

const Generation = v.pipe(v.number(), v.safeInteger(), v.minValue(0));
/**
 * A watch answer's numbers, checked before the daemon acts on them (its volumes' views are checked
 * one by one: daemon.ts checkedView). In a TOMA cluster any TOMA may answer a watch: a stable
 * generation above the generation answered would let I/O of a topology not yet stable complete.
 */
const WatchSchema = v.pipe(
  v.object({ generation: Generation, stable_generation: Generation, acked: v.optional(Generation), volumes: v.array(v.unknown()) }),
  v.check((w) => w.stable_generation <= w.generation, "its stable generation is above its generation"),
);

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
    watch: async (id, known, stable) => {
      const raw = await c<unknown>("GET", `/v1/clients/${id}/watch?known=${known}&stable=${stable}`);
      const w = v.safeParse(WatchSchema, raw);
      if (!w.success) throw new AttachError(`the TOMA answered a watch that is not valid: ${w.issues[0]!.message}`, "invalid");
      return raw as WatchInfo;
    },
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
