/**
 * Finds a drive's superblock without writing anything: the primary at offset 0, else the backup
 * in the last block. The cases, each covered by tests/engine/drive-format.test.ts:
 *
 * | primary                              | backup                         | result                      |
 * | ------------------------------------ | ------------------------------ | --------------------------- |
 * | valid                                | valid and byte-identical       | found (primary)             |
 * | valid                                | missing, invalid or different  | found (primary), warning    |
 * | our magic but invalid, or unreadable | valid, same drive uuid         | found (backup), warning     |
 * | our magic but invalid, or unreadable | otherwise                      | damaged: both reasons       |
 * | no magic (blank or foreign)          | any                            | not nvmesh (backup named)   |
 *
 * Without our magic at offset 0 the backup is never used by itself: something else (mkfs, dd,
 * wipefs) overwrote the start of the drive on purpose, and serving it would hand out a drive whose
 * data area may now be another filesystem.
 */
import { uuidToString } from "../uuid.ts";
import { detectForeignSignature, FOREIGN_PROBE_BYTES } from "./foreign-signatures.ts";
import type { DriveStore } from "./store.ts";
import {
  backupSuperblockOffset,
  checkSuperblock,
  hasSuperblockMagic,
  isInvalid,
  type Superblock,
  SUPERBLOCK_BYTES,
} from "./superblock.ts";

export type Located =
  | { kind: "found"; sb: Superblock; from: "primary" | "backup"; warnings: string[] }
  | { kind: "damaged"; reason: string }
  | { kind: "not-nvmesh"; reason: string; foreign: string | null; backup: Superblock | null };

export async function locateSuperblock(store: DriveStore): Promise<Located> {
  const head = new Uint8Array(Math.min(FOREIGN_PROBE_BYTES, store.size_bytes));
  let primary: Superblock | { invalid: string };
  let primaryMagic = false;
  let headRead = false;
  try {
    await store.read(0, head);
    headRead = true;
    primaryMagic = hasSuperblockMagic(head);
    primary = checkSuperblock(head.subarray(0, SUPERBLOCK_BYTES));
  } catch (e) {
    // An unreadable first block is the case the backup exists for.
    primaryMagic = true;
    primary = { invalid: `primary superblock unreadable: ${(e as Error).message}` };
  }

  if (!isInvalid(primary)) {
    if (store.size_bytes < primary.size_bytes) {
      return { kind: "damaged", reason: `drive ${primary.drive_uuid} is ${store.size_bytes} bytes but its superblock says ${primary.size_bytes} (truncated or wrong device?)` };
    }
    const warnings: string[] = [];
    const backup = await readBackup(store, backupSuperblockOffset(primary.size_bytes));
    if (backup.sb === null) warnings.push(`backup superblock unusable: ${backup.reason}`);
    else if (!sameBytes(backup.bytes!, head.subarray(0, SUPERBLOCK_BYTES))) warnings.push("backup superblock differs from the primary");
    return { kind: "found", sb: primary, from: "primary", warnings };
  }

  const backup = await readBackup(store, backupSuperblockOffset(store.size_bytes));
  if (!primaryMagic) {
    const foreign = detectForeignSignature(head);
    const what = foreign ?? (head.every((x) => x === 0) ? "blank start" : "unrecognised contents");
    const hint = backup.sb ? `; a backup superblock of nvmesh drive ${backup.sb.drive_uuid} is at the end, so the start was overwritten` : "";
    return { kind: "not-nvmesh", reason: `no nvmesh superblock at offset 0 (${what})${hint}`, foreign, backup: backup.sb };
  }
  if (backup.sb !== null) {
    // A torn primary still carries the drive uuid it was being rewritten with; if it is readable
    // and disagrees, the backup belongs to some earlier life of the device.
    const primaryUuid = headRead && head.length >= 32 ? uuidToString(head.subarray(16, 32)) : null;
    if (primaryUuid === null || primaryUuid === backup.sb.drive_uuid) {
      return { kind: "found", sb: backup.sb, from: "backup", warnings: [`primary superblock damaged (${primary.invalid}); using the backup`] };
    }
    return { kind: "damaged", reason: `primary superblock damaged (${primary.invalid}) and the backup names another drive (${backup.sb.drive_uuid}, primary says ${primaryUuid})` };
  }
  return { kind: "damaged", reason: `primary superblock damaged (${primary.invalid}); backup unusable (${backup.reason})` };
}

async function readBackup(
  store: DriveStore,
  offset: number,
): Promise<{ sb: Superblock | null; bytes?: Uint8Array; reason: string }> {
  if (offset < SUPERBLOCK_BYTES) return { sb: null, reason: "drive too small to hold one" };
  const bytes = new Uint8Array(SUPERBLOCK_BYTES);
  try {
    await store.read(offset, bytes);
  } catch (e) {
    return { sb: null, reason: `unreadable: ${(e as Error).message}` };
  }
  const r = checkSuperblock(bytes);
  return isInvalid(r) ? { sb: null, reason: r.invalid } : { sb: r, bytes, reason: "" };
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((v, i) => v === b[i]);
}
