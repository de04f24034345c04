/**
 * CBOR bytes from a drive or a peer, checked against a schema before anything trusts them; the
 * one wording of why they were refused ("… is not valid CBOR: …", "… fails validation at 'x': …").
 */
import { decode } from "cbor-x";
import * as v from "valibot";
import type { Decoded } from "../engine/layout/extent-runs.ts";

export type { Decoded };

/** CBOR bytes checked against a schema; never throws. `what` names the thing in the error. */
export function parseCbor<S extends v.GenericSchema>(bytes: Uint8Array, schema: S, what: string): Decoded<v.InferOutput<S>> {
  let raw: unknown;
  try {
    raw = decode(bytes);
  } catch (e) {
    return { ok: false, error: `${what} is not valid CBOR: ${(e as Error).message}` };
  }
  const r = v.safeParse(schema, raw);
  if (!r.success) return { ok: false, error: `${what} fails validation${issueText(r.issues)}` };
  return { ok: true, value: r.output };
}

/** " at 'path': message" of a valibot failure, to follow "fails validation". */
export function issueText(issues: readonly v.BaseIssue<unknown>[]): string {
  const i = issues[0]!;
  const where = i.path?.map((p) => String(p.key)).join(".") ?? "";
  return `${where ? ` at '${where}'` : ""}: ${i.message}`;
}
