/**
 * Two formatted drive files holding the legs of a debug-format mirror after a verify run of
 * three workers, with every kind of corruption planted at a known block, and the list of what
 * was planted (what forensics must find, with the block and the culprit).
 *
 * Placement: the volume's LBA n sits at data-area position BASE + n on both legs (the volume
 * took extents 2 and 3 of each drive, as a mirror whose legs were allocated alike).
 */
import fs from "node:fs";
import { formatDrive } from "../../src/engine/drive/format.ts";
import { FileStore } from "../../src/engine/runtime/file-store.ts";
import { blockAt, dataFor, ownedBlocks } from "../../src/debugfmt/pattern.ts";
import { encodeSector, resealSector, SECTOR_BYTES, OFF } from "../../src/debugfmt/sector.ts";
import { encodeIoForLeg, ioSectorFields } from "../../src/debugfmt/write.ts";
import { bytes, fields, OTHER_VOLUME, VOLUME, verifyWrite } from "./fixtures.ts";

export const EXTENT_BYTES = 1 << 20;
export const PER_EXTENT = EXTENT_BYTES / SECTOR_BYTES; // 512
export const BASE = 2 * PER_EXTENT;
export const DRIVE_BYTES = 16 << 20;
export const SPEC8 = { seed_id: 7, workers: 3, blocks: 64, block_sectors: 8, base_lba: 0 };

export interface Planted {
  class: string;
  file: "a" | "b";
  /** Found only when the legs are compared. */
  peer?: true;
  lba: number;
  culprit: number | null;
  reason: RegExp;
}

/** Formats path as an nvmesh drive (1 MiB extents) and returns its data offset. */
export async function formatFile(path: string, drive_uuid = "a1b2c3d4-0000-4000-8000-000000000001"): Promise<number> {
  const store = await FileStore.open(path, { create_size_bytes: DRIVE_BYTES });
  try {
    const sb = await formatDrive(store, { drive_uuid, extent_size_bytes: EXTENT_BYTES });
    return sb.data_offset;
  } finally {
    await store.close();
  }
}

export function writeAt(path: string, offset: number, b: Uint8Array): void {
  const fd = fs.openSync(path, "r+");
  try {
    fs.writeSync(fd, b, 0, b.length, offset);
  } finally {
    fs.closeSync(fd);
  }
}

/** Builds both legs in memory (4 extents from position 0), plants, writes them to the files. */
export async function buildMirror(pathA: string, pathB: string): Promise<{ planted: Planted[]; data_offset: number }> {
  const dataA = await formatFile(pathA, "a1b2c3d4-0000-4000-8000-00000000000a");
  const dataB = await formatFile(pathB, "a1b2c3d4-0000-4000-8000-00000000000b");
  if (dataA !== dataB) throw new Error("legs formatted differently");
  const area = new Uint8Array(8 * PER_EXTENT * SECTOR_BYTES);
  const legs = [area, area.slice()];
  const put = (leg: number, lba: number, b: Uint8Array) => legs[leg]!.set(b, (BASE + lba) * SECTOR_BYTES);
  const putPos = (leg: number, position: number, b: Uint8Array) => legs[leg]!.set(b, position * SECTOR_BYTES);
  const flip = (b: Uint8Array, i: number, mask: number) => {
    b[i] = b[i]! ^ mask;
  };
  const at = (leg: number, lba: number) => legs[leg]!.subarray((BASE + lba) * SECTOR_BYTES, (BASE + lba + 1) * SECTOR_BYTES);

  // The verify run: each worker does two full passes and one step more; every write to both legs.
  const lastStep = [0, 0, 0];
  for (let worker = 0; worker < 3; worker++) {
    const M = ownedBlocks(SPEC8, worker);
    for (let step = 0; step <= 2 * M; step++) {
      const first_lba = blockAt(SPEC8, { worker, step }) * 8;
      for (const leg of [0, 1]) put(leg, first_lba, verifyWrite({ worker, step, leg, first_lba, spec: SPEC8 }).bytes);
      lastStep[worker] = step;
    }
  }
  /** The owner's next step that writes the block (after the run). */
  const nextStep = (block: number) => {
    const worker = block % 3;
    for (let s = lastStep[worker]! + 1; ; s++) if (blockAt(SPEC8, { worker, step: s }) === block) return { worker, step: s };
  };
  const newWrite = (block: number, over: Partial<Parameters<typeof verifyWrite>[0]> = {}, leg = 0) => {
    const { worker, step } = nextStep(block);
    return verifyWrite({ worker, step, leg, first_lba: block * 8, spec: SPEC8, ...over });
  };
  const planted: Planted[] = [];

  // Damage on leg a, each at its own block.
  flip(at(0, 5 * 8 + 3), 1100, 4);
  planted.push({ class: "checksum_bad", file: "a", lba: 43, culprit: null, reason: /history 1-12 \(chunk 2\)/ });

  flip(at(0, 9 * 8), 10, 1);
  planted.push({ class: "data_mismatch", file: "a", lba: 72, culprit: null, reason: /changed after it was written/ });

  {
    // Torn: the next write's first half (data + header) landed, the old second half stayed.
    const n = newWrite(13).bytes.subarray(5 * SECTOR_BYTES, 6 * SECTOR_BYTES);
    at(0, 13 * 8 + 5).set(n.subarray(0, 1024));
    planted.push({ class: "torn", file: "a", lba: 109, culprit: 13 % 3 + 10, reason: /torn write: .*history 1-12 \(chunk 2\), history 13-24 \(chunk 3\) from write/ });
  }
  {
    // Misdirected: the next write of block 20 landed on block 24's place (all 8 sectors).
    putPos(0, BASE + 24 * 8, newWrite(20).bytes);
    for (let i = 0; i < 8; i++) {
      planted.push({ class: "misdirected", file: "a", lba: 160 + i, culprit: 20 % 3 + 10, reason: new RegExp(`header says LBA ${160 + i}, but its neighbours put LBA ${192 + i} here \\(the whole window`) });
    }
  }
  {
    // One sector misdirected inside a window: LBA 243's copy at LBA 242's place.
    put(0, 242, at(0, 243).slice());
    planted.push({ class: "misdirected", file: "a", lba: 243, culprit: 30 % 3 + 10, reason: /header says LBA 243, but its neighbours put LBA 242 here: written to the wrong place/ });
  }
  put(0, 33 * 8 + 1, bytes(SECTOR_BYTES, 4242));
  planted.push({ class: "not_debug", file: "a", lba: -1, culprit: null, reason: /not a debug sector, inside extent 2/ });
  {
    // A writer whose predicted history disagrees with the pattern (its arithmetic is wrong).
    const w = newWrite(37);
    const f = w.fields.map((x) => ({ ...x, history: x.history.map((h, i) => (i === 0 ? { ...h, step: h.step + 3 } : h)) }));
    const data = new Uint8Array(8 * 512);
    for (let i = 0; i < 8; i++) data.set(w.bytes.subarray(i * SECTOR_BYTES, i * SECTOR_BYTES + 512), i * 512);
    put(0, 37 * 8, encodeIoForLeg(f, data, 0));
    for (let i = 0; i < 8; i++) {
      planted.push({ class: "pattern_mismatch", file: "a", lba: 296 + i, culprit: 37 % 3 + 10, reason: /history entry 0 has step/ });
      // Its history no longer names leg b's write, so the legs diverged; the pattern's step order
      // still says which is newer, and that write was meant for both legs.
      planted.push({ class: "write_hole", file: "a", peer: true, lba: 296 + i, culprit: 37 % 3 + 10, reason: /^diverged .*write hole/ });
    }
  }
  {
    const s = at(0, 41 * 8);
    s[OFF.topo_state] = 9;
    resealSector(s);
    planted.push({ class: "bad_field", file: "a", lba: -1, culprit: null, reason: /topology state 9 unknown/ });
  }

  // Legs that differ.
  put(0, 45 * 8, newWrite(45).bytes);
  for (let i = 0; i < 8; i++) planted.push({ class: "write_hole", file: "a", peer: true, lba: 360 + i, culprit: 45 % 3 + 10, reason: /write hole: client 10 \(w0\) seq \d+ targeted legs \{0,1\} but leg 1 still holds the older write/ });

  put(0, 49 * 8, newWrite(49, { legs_mask: 0b01 }).bytes);
  for (let i = 0; i < 8; i++) planted.push({ class: "skipped_leg", file: "a", peer: true, lba: 392 + i, culprit: 49 % 3 + 10, reason: /skipped leg 1: seq \d+ targeted only legs \{0\} in topology state normal \(generation 4\)/ });

  put(0, 53 * 8, newWrite(53, { legs_mask: 0b01, client_id: 99, client_name: "stale-host", generation: 2, topo_state: "degraded" }).bytes);
  for (let i = 0; i < 8; i++) planted.push({ class: "stale_generation", file: "a", peer: true, lba: 424 + i, culprit: 99, reason: /client 99 \(stale-host\) wrote seq \d+ with topology generation 2 while the other leg's record shows 4/ });

  put(0, 57 * 8, newWrite(57, { legs_mask: 0b01, generation: 5, topo_state: "degraded" }).bytes);
  for (let i = 0; i < 8; i++) planted.push({ class: "legs_differ", file: "a", peer: true, lba: 456 + i, culprit: null, reason: /leg 1 was out of the topology \(degraded, generation 5\)/ });

  {
    // One write, one seq, different data on the two legs (leg b got another step's data under
    // the same header fields): the client is named, and leg b's copy fails its pattern.
    const { worker, step } = nextStep(17);
    const w0 = newWrite(17);
    put(0, 17 * 8, w0.bytes);
    const wrong = new Uint8Array(8 * 512);
    for (let i = 0; i < 8; i++) wrong.set(dataFor({ ...SPEC8, worker, step: step - 1 }, 17 * 8 + i), i * 512);
    put(1, 17 * 8, encodeIoForLeg(w0.fields, wrong, 1));
    for (let i = 0; i < 8; i++) {
      planted.push({ class: "legs_differ", file: "a", peer: true, lba: 136 + i, culprit: 17 % 3 + 10, reason: /client 12 \(w2\) wrote different data to the legs under one seq \d+/ });
      planted.push({ class: "pattern_mismatch", file: "b", peer: true, lba: 136 + i, culprit: 17 % 3 + 10, reason: new RegExp(`the data is the pattern's for worker 2 step ${step - 1}`) });
    }
  }

  flip(at(1, 61 * 8 + 4), 1600, 1);
  planted.push({ class: "checksum_bad", file: "b", peer: true, lba: 492, culprit: null, reason: /history 13-24 \(chunk 3\).*the other leg \(.*\) holds a good copy/ });

  // A plain (non-verify) write that reached leg 0 only, beyond the verify area: leg 1 is empty.
  put(0, 600, encodeSector(fields({ lba: 600, io_first_lba: 600, io_index: 0, io_sectors: 1, client_id: 3, client_name: "plain", generation: 4, seq: 77 }), bytes(512, 600)));
  planted.push({ class: "write_hole", file: "a", peer: true, lba: 600, culprit: 3, reason: /leg 1 is empty/ });

  // Extent 5: some other (non-debug) use of the drive: not a problem.
  for (let p = 5 * PER_EXTENT; p < 5 * PER_EXTENT + 40; p++) putPos(0, p, bytes(SECTOR_BYTES, p));
  // Extent 6: another debug volume's sectors on both legs (counted, not ours with --volume).
  for (let lba = 0; lba < 16; lba++) {
    for (const leg of [0, 1]) {
      const f = ioSectorFields({ volume_uuid: OTHER_VOLUME, client_id: 50, client_name: "other" }, {
        op: "write", fua: false, first_lba: lba, sectors: 1, seq: lba, generation: 1, topo_state: "normal", leg_count: 2, legs_mask: 3, locked: true,
      }, bytes(512, lba + 7000));
      putPos(leg, 6 * PER_EXTENT + lba, encodeIoForLeg(f, bytes(512, lba + 7000), leg));
    }
  }

  const dataBytes = legs[0]!.length;
  writeAt(pathA, dataA, legs[0]!.subarray(0, dataBytes));
  writeAt(pathB, dataB, legs[1]!.subarray(0, dataBytes));
  return { planted, data_offset: dataA };
}

export { VOLUME, OTHER_VOLUME };
