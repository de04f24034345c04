/**
 * The one place where a data-path request's client_id and topology generation will be checked
 * against the drive's registrations (DESIGN.md §3: a target refuses a request whose generation it
 * knows to be too old, or whose client is not registered on that drive).
 *
 * Not enforced yet: registrations arrive with the mirroring issue. Every data-path opcode already
 * passes through here, so enforcing is a change to this function only.
 */
import type { Header } from "../wire/header.ts";
import type { ServedDrive } from "./drive-table.ts";

/** Returns null when the request may proceed, or the reason to answer REFUSED. */
export function fenceCheck(_drive: ServedDrive, _h: Header): string | null {
  return null;
}
