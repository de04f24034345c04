/**
 * CBOR bodies of the data path's control frames (HELLO, LIST_DRIVES, META_*, CLAIM, FENCE,
 * LOCK_LIST, DIRTY_GET), each defined once with its valibot schema beside it. Decoding happens at
 * the edge: bytes → CBOR → schema; a body that fails is answered with Status.INVALID and changes
 * nothing.
 */
import { decode, encode } from "cbor-x";
import * as v from "valibot";

const Uuid = v.pipe(v.string(), v.regex(/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/));
const Count = v.pipe(v.number(), v.integer(), v.minValue(0), v.maxValue(Number.MAX_SAFE_INTEGER));

const bytesOf = (n: number) => v.pipe(v.instance(Uint8Array), v.length(n));

export const HelloRequest = v.object({
  version: v.literal(1),
  role: v.picklist(["client", "toma", "admin"]),
  name: v.pipe(v.string(), v.maxLength(256)),
  /** The requester's fresh nonce, sent when it holds a cluster key (cluster-key.ts). */
  nonce: v.optional(bytesOf(16)),
  /**
   * Which key the requester will prove in AUTH (absent: the server key). What it may do follows
   * from the key it proves, not from `role`: a client-key requester is served as a client.
   */
  key: v.optional(v.picklist(["server", "client"])),
});
export type HelloRequest = v.InferOutput<typeof HelloRequest>;

/** A target with a cluster key answers HELLO with this, and serves nothing before AUTH. */
export const AuthChallenge = v.object({
  challenge: bytesOf(16),
  /** targetProof(the key HELLO named, the HELLO's nonce or 16 zero bytes, challenge). */
  proof: bytesOf(32),
});
export type AuthChallenge = v.InferOutput<typeof AuthChallenge>;

/** AUTH: requesterProof(the key HELLO named, challenge, nonce, role, name). */
export const AuthRequest = v.object({ proof: bytesOf(32) });
export type AuthRequest = v.InferOutput<typeof AuthRequest>;

export const DriveInfo = v.object({
  drive_uuid: Uuid,
  /** NIL uuid while the drive belongs to no cluster yet. */
  cluster_uuid: Uuid,
  /** Where this target found it (informational: a drive is known by its uuid, not its path). */
  path: v.string(),
  size_bytes: Count,
  data_offset_bytes: Count,
  extent_size_bytes: Count,
  extent_count: Count,
  format_version: Count,
  /** "ok": serving I/O. "error": found but unusable (corrupt superblock, I/O error): see error. */
  state: v.picklist(["ok", "error"]),
  error: v.optional(v.string()),
  /**
   * The drive's cache epoch (DriveStore.cache_epoch; 0: no volatile cache): when it differs from
   * the one the cluster recorded, the drive may have lost acknowledged writes from its cache.
   */
  cache_epoch: v.optional(Count),
  /** How the target's I/O reaches the drive (DriveStore.io_path), for people. */
  io_path: v.optional(v.pipe(v.string(), v.maxLength(256))),
});
export type DriveInfo = v.InferOutput<typeof DriveInfo>;

export const TargetInfo = v.object({
  target_name: v.string(),
  version: v.string(),
  drives: v.array(DriveInfo),
  /** Present (and drives empty) when the target holds a cluster key: AUTH must follow. */
  auth: v.optional(AuthChallenge),
  /**
   * Random per start of the target: lets a client that hosts a target in its own process tell
   * that the address the TOMA gave it leads there (client/local-target.ts).
   */
  serving: v.optional(v.pipe(v.string(), v.maxLength(64))),
  /**
   * The target also listens on RDMA at this port: on `host`, or, when host is null, on the
   * address the requester reached it by (client/rdma-upgrade.ts).
   */
  rdma: v.optional(
    v.object({
      host: v.nullable(v.pipe(v.string(), v.maxLength(256))),
      port: v.pipe(v.number(), v.integer(), v.minValue(1), v.maxValue(65535)),
    }),
  ),
});
export type TargetInfo = v.InferOutput<typeof TargetInfo>;

export const MetaSlot = v.object({
  /** 0 with payload null when the drive has never had metadata written. */
  generation: Count,
  payload: v.nullable(v.instance(Uint8Array)),
});
export type MetaSlot = v.InferOutput<typeof MetaSlot>;

export const ClaimRequest = v.object({ cluster_uuid: Uuid });
export type ClaimRequest = v.InferOutput<typeof ClaimRequest>;

/** Ids on the wire are u64 fields limited to 2^53 - 1 (JavaScript safe integers). */
const Id = v.pipe(v.number(), v.integer(), v.minValue(0), v.maxValue(Number.MAX_SAFE_INTEGER));

/** Entries one FENCE may carry in `set` and in `remove` (each), and registrations one drive holds. */
export const MAX_REGISTRATIONS = 65536;

export const Registration = v.object({ client_id: Id, min_generation: Id });
export type Registration = v.InferOutput<typeof Registration>;

/**
 * FENCE body (role "toma" only). `replace` first clears the drive's table; each `set` entry then
 * registers its client or raises its min_generation (a lower value than the one held is ignored);
 * `remove` unregisters. A client may not be both set and removed by one FENCE.
 */
export const FenceRequest = v.strictObject({
  replace: v.boolean(),
  set: v.pipe(v.array(Registration), v.maxLength(MAX_REGISTRATIONS)),
  remove: v.pipe(v.array(Id), v.maxLength(MAX_REGISTRATIONS)),
});
export type FenceRequest = v.InferOutput<typeof FenceRequest>;

/** One run of lock units held by one client (LOCK_LIST answer entries, sorted by offset). */
export const LockEntry = v.object({ client_id: Id, offset: Count, length: Count });
export type LockEntry = v.InferOutput<typeof LockEntry>;
export const LockList = v.array(LockEntry);

/** DIRTY_GET answer: indices of the dirty bitmap regions, ascending. */
export const DirtyList = v.array(Count);

/** Body of any response whose status is not OK. */
export const ErrorBody = v.object({ error: v.string() });
export type ErrorBody = v.InferOutput<typeof ErrorBody>;

export function encodeBody(value: unknown): Uint8Array {
  return encode(value);
}

/** Decodes and validates; returns the value or a message saying why not. Never throws. */
export function decodeBody<S extends v.GenericSchema>(
  schema: S,
  bytes: Uint8Array,
): v.InferOutput<S> | { invalid: string } {
  let raw: unknown;
  try {
    // From a copy: cbor-x decodes byte strings as views of its input, and the input is often a
    // view of a connection's receive buffer, which the next frames overwrite. A META_READ payload
    // kept across an await came out as another frame's bytes, and a member drive's metadata slot
    // was taken for corrupt for good (simulator seeds 672 and 1082 with --mirror).
    raw = decode(bytes.slice());
  } catch (e) {
    return { invalid: `bad CBOR: ${(e as Error).message}` };
  }
  const r = v.safeParse(schema, raw);
  if (!r.success) return { invalid: r.issues.map((i) => i.message).join("; ") };
  return r.output;
}

export function isInvalid(x: unknown): x is { invalid: string } {
  return typeof x === "object" && x !== null && "invalid" in x && Object.keys(x).length === 1;
}
