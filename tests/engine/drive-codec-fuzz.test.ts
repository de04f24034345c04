/**
 * Decoders of drive bytes never throw anything but DriveFormatError, whatever the bytes: random
 * blocks, and valid superblocks and slots with bytes flipped, fields re-signed with a good CRC,
 * or truncated. A failure prints the seed, which replays it.
 */
import { expect, test } from "bun:test";
import { crc32c } from "../../src/engine/crc32c.ts";
import { decodeControlVersion, encodeControlVersion } from "../../src/engine/drive/control-version.ts";
import { DriveFormatError } from "../../src/engine/drive/formatted-api.ts";
import { checkMetaSlot, decodeMetaSlot, encodeMetaSlot, type SlotContext } from "../../src/engine/drive/meta-slot.ts";
import {
  checkSuperblock,
  computeGeometry,
  decodeSuperblock,
  encodeSuperblock,
  FORMAT_VERSION,
  isInvalid,
  type Superblock,
} from "../../src/engine/drive/superblock.ts";
import { NIL_UUID } from "../../src/engine/uuid.ts";

const SEED = Number(process.env.FUZZ_SEED ?? 0x5eed);
const ROUNDS = Number(process.env.FUZZ_ROUNDS ?? 3000);
const DRIVE = "0f0e0d0c-0b0a-4908-8706-050403020100";

function prng(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return s >>> 0;
  };
}

function validSuperblock(): Superblock {
  const g = computeGeometry(1 << 30, 16 << 20);
  if (isInvalid(g)) throw new Error(g.invalid);
  return { ...g, format_version: FORMAT_VERSION, flags: 0, drive_uuid: DRIVE, cluster_uuid: NIL_UUID };
}

function mutate(base: Uint8Array, rnd: () => number, crcAt: number | null): Uint8Array {
  const b = base.slice(0, rnd() % 4 === 0 ? rnd() % (base.length + 1) : base.length);
  const kind = rnd() % 4;
  if (kind === 0) for (let i = 0; i < b.length; i++) b[i] = rnd() & 0xff;
  else {
    const flips = 1 + (rnd() % 8);
    // Flips concentrated in the header, where the fields are.
    for (let i = 0; i < flips && b.length; i++) b[rnd() % Math.min(b.length, kind === 1 ? 160 : b.length)]! ^= 1 << (rnd() % 8);
  }
  // Re-sign half the time so the field validation, not just the CRC, is exercised.
  if (crcAt !== null && rnd() % 2 === 0 && b.length >= crcAt + 4) {
    new DataView(b.buffer, b.byteOffset).setUint32(crcAt, crc32c(b.subarray(0, crcAt)), true);
  }
  return b;
}

function onlyFormatErrors(fn: () => unknown, seed: number, round: number): void {
  try {
    fn();
  } catch (e) {
    if (!(e instanceof DriveFormatError)) {
      throw new Error(`seed ${seed} round ${round}: threw ${(e as Error)?.constructor?.name}: ${(e as Error)?.message}`);
    }
  }
}

test(`superblock decode: only DriveFormatError (seed ${SEED})`, () => {
  const rnd = prng(SEED);
  const good = encodeSuperblock(validSuperblock());
  expect(decodeSuperblock(good).drive_uuid).toBe(DRIVE);
  let accepted = 0;
  for (let round = 0; round < ROUNDS; round++) {
    const b = mutate(good, rnd, 128);
    onlyFormatErrors(() => decodeSuperblock(b), SEED, round);
    const r = checkSuperblock(b);
    // Whatever is accepted must re-encode to the very same bytes: nothing decoded is unchecked.
    if (!isInvalid(r)) {
      accepted++;
      expect(encodeSuperblock(r)).toEqual(b.subarray(0, 4096));
    }
  }
  expect(accepted).toBeLessThan(ROUNDS);
});

test(`metadata slot decode: only DriveFormatError (seed ${SEED})`, () => {
  const rnd = prng(SEED + 1);
  const ctx: SlotContext = { slot_index: 1, drive_uuid: DRIVE, meta_slot_bytes: 1 << 20 };
  const good = encodeMetaSlot({ generation: 42, payload: new Uint8Array(5000).fill(3) }, ctx);
  expect(decodeMetaSlot(good, ctx).generation).toBe(42);
  for (let round = 0; round < ROUNDS; round++) {
    const b = mutate(good, rnd, null);
    onlyFormatErrors(() => decodeMetaSlot(b, ctx), SEED, round);
    const r = checkMetaSlot(b, ctx);
    if (!isInvalid(r)) expect(r.generation).toBeGreaterThanOrEqual(0);
  }
});

test(`control-version block decode: a version or a reason, never a throw; an accepted block re-encodes to itself (seed ${SEED})`, () => {
  const rnd = prng(SEED + 2);
  const good = encodeControlVersion(2 ** 32 * 7 + 12, DRIVE);
  expect(decodeControlVersion(good, DRIVE)).toEqual({ version: 2 ** 32 * 7 + 12 });
  let accepted = 0;
  for (let round = 0; round < ROUNDS; round++) {
    const b = mutate(good, rnd, 32);
    let r: ReturnType<typeof decodeControlVersion>;
    try {
      r = decodeControlVersion(b, DRIVE);
    } catch (e) {
      throw new Error(`seed ${SEED} round ${round}: threw ${(e as Error)?.constructor?.name}: ${(e as Error)?.message}`);
    }
    if (isInvalid(r)) expect(r.invalid.length).toBeGreaterThan(0);
    else {
      accepted++;
      expect(Number.isSafeInteger(r.version) && r.version >= 0).toBe(true);
      // Nothing decoded is unchecked: the same version and drive give the very same bytes.
      expect(encodeControlVersion(r.version, DRIVE)).toEqual(b.subarray(0, 4096));
    }
  }
  expect(accepted).toBeLessThan(ROUNDS);
});
