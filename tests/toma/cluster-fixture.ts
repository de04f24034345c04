/** Shared by the TOMA cluster tests: own drives as a TOMA reaches them, in the simulator's time. */
import type { FormattedDrive } from "../../src/engine/drive/formatted-api.ts";
import type { Network } from "../../src/engine/net/conn.ts";
import type { SlotIo } from "../../src/toma/cluster/hard-state-io.ts";
import type { World } from "../../sim/world.ts";

/** The consensus code opens no socket: a network that says so if it ever tried. */
export const NO_NET: Network = {
  connect: () => Promise.reject(new Error("the TOMA cluster code under test opens no connection of its own")),
  listen: () => Promise.reject(new Error("the TOMA cluster code under test listens on nothing")),
};

/**
 * The drives as the TOMA reaches them: each operation takes a little virtual time, as on a target
 * (and so a timeout in virtual time never fires before an operation that has already completed).
 * `refuse` names drives whose writes fail, as a target's REFUSED for an unreadable slot.
 */
export function slotIo(world: World, drives: () => FormattedDrive[], refuse: ReadonlySet<string> = new Set()): SlotIo {
  const on = <T>(u: string, fn: (d: FormattedDrive) => Promise<T>): Promise<T> =>
    new Promise<void>((r) => world.after(0.2, r)).then(() => {
      const d = drives().find((x) => x.info.drive_uuid === u);
      if (!d) throw new Error(`drive ${u} is not served`);
      return fn(d);
    });
  return {
    drives: () => drives().map((d) => d.info.drive_uuid),
    read: (u) => on(u, (d) => d.metaRead()),
    write: (u, g, p) => (refuse.has(u) ? on(u, () => Promise.reject(new Error(`drive ${u}: REFUSED, metadata slot unreadable`))) : on(u, (d) => d.metaWrite(g, p))),
  };
}
