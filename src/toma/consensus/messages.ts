/**
 * The wire between TOMAs: an envelope of Raft messages from one node to another, CBOR (cbor-x),
 * validated whole before any of it reaches the core. Each TOMA sends over a connection it opened
 * itself (`POST /v1/raft` on the peer's management port; docs/toma-cluster.md, "Integration"), so
 * a link cut one way stops exactly one direction of messages.
 *
 *   {v: 1, cluster_uuid, from, to, msgs: [Message, ...]}
 *
 * Also the one-line descriptions of messages and entries that logs and transcripts print.
 */
import { encode } from "cbor-x";
import * as v from "valibot";
import { type Decoded, parseCbor } from "../parse-cbor.ts";
import { configProblem, describeChange, describeConfig } from "./config.ts";
import { type Entry, type Message, MessageSchema, NodeIdSchema, UuidSchema } from "./types.ts";

export const ENVELOPE_VERSION = 1;
export const MAX_MESSAGES_PER_ENVELOPE = 256;
/** A batch of messages (chunks of a snapshot, appends) fits with room to spare. */
export const MAX_ENVELOPE_BYTES = 4 * 1024 * 1024;

const EnvelopeSchema = v.strictObject({
  v: v.literal(ENVELOPE_VERSION),
  cluster_uuid: UuidSchema,
  from: NodeIdSchema,
  to: NodeIdSchema,
  msgs: v.pipe(v.array(MessageSchema), v.minLength(1), v.maxLength(MAX_MESSAGES_PER_ENVELOPE)),
});
export type Envelope = v.InferOutput<typeof EnvelopeSchema>;

export function encodeEnvelope(e: Envelope): Uint8Array {
  const bytes = encode({ v: ENVELOPE_VERSION, cluster_uuid: e.cluster_uuid, from: e.from, to: e.to, msgs: e.msgs });
  if (bytes.length > MAX_ENVELOPE_BYTES) throw new Error(`envelope of ${bytes.length} bytes exceeds ${MAX_ENVELOPE_BYTES}`);
  return bytes;
}

/** Decodes and validates an envelope; never throws. Says why a bad one is refused. */
export function decodeEnvelope(bytes: Uint8Array): Decoded<Envelope> {
  if (bytes.length > MAX_ENVELOPE_BYTES) return { ok: false, error: `envelope of ${bytes.length} bytes exceeds ${MAX_ENVELOPE_BYTES}` };
  const d = parseCbor(bytes, EnvelopeSchema, "envelope");
  if (!d.ok) return d;
  const env = d.value;
  for (const m of env.msgs) {
    if (m.from !== env.from || m.to !== env.to) return { ok: false, error: `message ${m.from}->${m.to} inside an envelope ${env.from}->${env.to}` };
    const why = messageProblem(m);
    if (why) return { ok: false, error: `${m.type} from ${m.from}: ${why}` };
  }
  return { ok: true, value: env };
}

/** Cross-field checks the schema cannot express. */
function messageProblem(m: Message): string | null {
  if (m.type === "snap") {
    if (m.offset + m.data.length > m.total) return `chunk [${m.offset}, ${m.offset + m.data.length}) beyond the snapshot's ${m.total} bytes`;
    if (m.data.length === 0 && m.total > 0) return "an empty chunk of a snapshot that has data";
    return configProblem(m.snapshot.config);
  }
  if (m.type === "app") {
    let index = m.prev_index;
    for (const e of m.entries) if (e.index !== ++index) return "entries are not contiguous after prev_index";
  }
  return null;
}

// ---- descriptions (logs, transcripts) -------------------------------------------------------------

const utf8 = new TextDecoder("utf-8", { fatal: true });

function describeData(data: Uint8Array): string {
  try {
    const s = utf8.decode(data);
    if (/^[\x20-\x7e]*$/.test(s) && s.length <= 40) return JSON.stringify(s);
  } catch {
    // not text: fall through to the size
  }
  return `<${data.length} bytes>`;
}

export function describeEntry(e: Entry): string {
  return `${e.term}/${e.index} ${e.kind === "conf" ? `conf ${describeChange(e.change)}` : describeData(e.data)}`;
}

export function describeMessage(m: Message): string {
  const head = `${m.from}->${m.to} ${m.type} term=${m.term}`;
  switch (m.type) {
    case "pre_vote":
    case "vote":
      return `${head} last=${m.last_term}/${m.last_index}`;
    case "pre_vote_resp":
    case "vote_resp":
      return `${head} ${m.reject ? "rejected" : "granted"}`;
    case "app":
      return `${head} prev=${m.prev_term}/${m.prev_index} commit=${m.commit}` + (m.entries.length ? ` entries=[${m.entries.map(describeEntry).join(", ")}]` : "");
    case "app_resp":
      return m.reject ? `${head} rejected index=${m.index} hint=${m.hint_term}/${m.hint_index}` : `${head} index=${m.index}`;
    case "heartbeat":
      return `${head} commit=${m.commit}` + (m.read_round ? ` read=${m.read_round}` : "");
    case "heartbeat_resp":
      return head + (m.read_round ? ` read=${m.read_round}` : "");
    case "snap":
      return `${head} snapshot=${m.snapshot.term}/${m.snapshot.index} ${describeConfig(m.snapshot.config)} bytes=${m.offset}+${m.data.length}/${m.total}`;
    case "snap_resp":
      return `${head} snapshot=${m.index} ${m.reject ? "rejected, holds" : "holds"} ${m.offset}`;
  }
}
