/**
 * What the data path returns for one physical debug sector it read: the logical data, zeros, or
 * an error that fails the read. Never garbage: a sector that fails to decode in a way that means
 * corruption, or that holds another block of this volume, is an error (EIO for the reader).
 *
 *   | what the 2048 bytes hold                                   | the read returns            |
 *   | ---------------------------------------------------------- | --------------------------- |
 *   | all zero (never written)                                   | zeros                       |
 *   | a valid sector of this volume and this LBA                 | its data                    |
 *   | a valid sector of another volume (an extent reused after   | zeros (never written by     |
 *   |   that volume was deleted)                                 |   this volume)              |
 *   | a valid sector of this volume for another LBA (misdirected)| error                       |
 *   | torn, damaged, foreign data, wrong version, bad fields ... | error                       |
 */
import { decodeSector } from "./sector.ts";

export type SectorRead =
  | { kind: "data"; data: Uint8Array }
  | { kind: "zero"; note: string | null }
  | { kind: "error"; reason: string };

/** Interprets bytes[at, at + 2048) read where the sector of `lba` of `volume_uuid` lives. */
export function readSector(bytes: Uint8Array, at: number, want: { volume_uuid: string; lba: number }): SectorRead {
  const d = decodeSector(bytes, at);
  if (d.ok) {
    const f = d.fields;
    if (f.volume_uuid !== want.volume_uuid) {
      return { kind: "zero", note: `holds LBA ${f.lba} of volume ${f.volume_uuid} (client ${f.client_id} seq ${f.seq}), not of this volume: read as never written` };
    }
    if (f.lba !== want.lba) {
      return { kind: "error", reason: `holds LBA ${f.lba}, not ${want.lba}: misdirected write by client ${f.client_id} (${f.client_name}) seq ${f.seq}` };
    }
    return { kind: "data", data: f.data };
  }
  if (d.class === "empty") return { kind: "zero", note: null };
  const who = d.fields !== null ? ` (header: client ${d.fields.client_id} (${d.fields.client_name}) seq ${d.fields.seq}, LBA ${d.fields.lba})` : "";
  return { kind: "error", reason: `${d.class}: ${d.reason}${who}` };
}
