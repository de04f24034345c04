/**
 * Sectors for the debugfmt tests: a plain writer's record, verify-pattern writes as the data path
 * makes them (write.ts), and the corruptions forensics must recognise.
 */
import type { EvilKind } from "../../src/engine/client/debug-evil.ts";
import { dataFor } from "../../src/debugfmt/pattern.ts";
import { encodeSector, type SectorFields } from "../../src/debugfmt/sector.ts";
import { type DebugIo, type DebugWriter, encodeIoForLeg, ioSectorFields } from "../../src/debugfmt/write.ts";

export const VOLUME = "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9";
export const OTHER_VOLUME = "11111111-2222-4333-8444-555555555555";

export function fields(over: Partial<SectorFields> = {}): SectorFields {
  return {
    volume_uuid: VOLUME,
    lba: 4100,
    client_id: 7,
    client_name: "host-a",
    generation: 3,
    topo_state: "normal",
    leg_count: 2,
    legs_mask: 0b11,
    leg_index: 0,
    op: "write",
    fua: false,
    locked: true,
    io_first_lba: 4096,
    io_sectors: 8,
    io_index: 4,
    seq: 1234,
    pattern: null,
    history: [],
    ...over,
  };
}

export function bytes(n: number, seed: number): Uint8Array {
  const b = new Uint8Array(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    b[i] = x & 0xff;
  }
  return b;
}

export function sector(over: Partial<SectorFields> = {}, data = bytes(512, 99)): Uint8Array {
  return encodeSector(fields(over), data);
}

export const SPEC = { seed_id: 7, workers: 3, blocks: 64, block_sectors: 2, base_lba: 0 };

/** A verify write of (worker, step) by a client, encoded for one leg: block_sectors × 2048 bytes. */
export function verifyWrite(opts: {
  worker: number;
  step: number;
  client_id?: number;
  client_name?: string;
  seq?: number;
  generation?: number;
  topo_state?: DebugIo["topo_state"];
  legs_mask?: number;
  locked?: boolean;
  leg: number;
  leg_count?: number;
  volume_uuid?: string;
  spec?: typeof SPEC;
  history_depth?: number;
  first_lba: number;
}): { bytes: Uint8Array; fields: SectorFields[] } {
  const spec = opts.spec ?? SPEC;
  const writer: DebugWriter = { volume_uuid: opts.volume_uuid ?? VOLUME, client_id: opts.client_id ?? 10 + opts.worker, client_name: opts.client_name ?? `w${opts.worker}` };
  const data = new Uint8Array(spec.block_sectors * 512);
  const stamp = { ...spec, worker: opts.worker, step: opts.step };
  for (let i = 0; i < spec.block_sectors; i++) data.set(dataFor(stamp, opts.first_lba + i), i * 512);
  const io: DebugIo = {
    op: "write",
    fua: false,
    first_lba: opts.first_lba,
    sectors: spec.block_sectors,
    seq: opts.seq ?? opts.step + 1,
    generation: opts.generation ?? 4,
    topo_state: opts.topo_state ?? "normal",
    leg_count: opts.leg_count ?? 2,
    legs_mask: opts.legs_mask ?? 0b11,
    locked: opts.locked ?? (opts.leg_count ?? 2) > 1,
    history_depth: opts.history_depth,
  };
  const f = ioSectorFields(writer, io, data);
  return { bytes: encodeIoForLeg(f, data, opts.leg), fields: f };
}

/**
 * The problem class `forensics scan` must report for each evil switch (every switch listed: a new
 * one fails to compile until its class is named here). Used by the engine and real-process tests.
 */
export const EVIL_CLASS: Record<EvilKind, string> = {
  "legs-differ": "legs_differ",
  "skip-leg": "skipped_leg",
  "stale-generation": "stale_generation",
  "no-lock": "unlocked_write",
  torn: "torn",
  misdirect: "misdirected",
};
