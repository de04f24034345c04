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

/** Ids on the wire are u64 fields limited to 2^53 - 1 (JavaScript safe integers). */
const Id = v.pipe(v.number(), v.integer(), v.minValue(0), v.maxValue(Number.MAX_SAFE_INTEGER));

/**
 * The volume a client connection serves, said at HELLO: its uuid and its incarnation (the cluster
 * generation that created it, unique in the cluster). Every data-path request of the connection is
 * checked against that volume's extents on the drive it names (target/fence.ts).
 */
export const VolumeBinding = v.strictObject({
  uuid: Uuid,
  incarnation: v.pipe(Id, v.minValue(1)),
});
export type VolumeBinding = v.InferOutput<typeof VolumeBinding>;

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
  /** Role "client" only: the volume this connection serves (one connection per volume and target). */
  volume: v.optional(VolumeBinding),
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

/**
 * What the other slot (the one META_READ did not answer with, and the next META_WRITE goes to)
 * holds: an older write, a torn one (ours but failing its CRC, or never written: a write that did
 * not complete), or nothing readable (an I/O error: it may hide something newer, so it is not
 * assumed old, and META_WRITE refuses to write over it).
 */
export const OtherSlot = v.picklist(["older", "torn", "unreadable"]);
export type OtherSlot = v.InferOutput<typeof OtherSlot>;

/** META_READ's answer: the current slot, and the state of the other one. */
export const MetaReadAnswer = v.object({
  ...MetaSlot.entries,
  /** Absent from targets that predate it; a reader then cannot call the drive clean. */
  other: v.optional(OtherSlot),
});
export type MetaReadAnswer = v.InferOutput<typeof MetaReadAnswer>;

export const ClaimRequest = v.object({ cluster_uuid: Uuid });
export type ClaimRequest = v.InferOutput<typeof ClaimRequest>;

/**
 * Entries one FENCE may carry in each of its lists, registrations one drive holds, and volumes
 * one drive's table holds.
 */
export const MAX_REGISTRATIONS = 65536;

/** A run of `count` consecutive extents of the drive from extent `first`. */
export const ExtentRun = v.tuple([Id, v.pipe(Id, v.minValue(1))]);
export type ExtentRun = v.InferOutput<typeof ExtentRun>;

/** The extents of the drive that belong to one volume. */
export const FenceVolume = v.strictObject({
  volume_uuid: Uuid,
  incarnation: v.pipe(Id, v.minValue(1)),
  extents: v.pipe(v.array(ExtentRun), v.maxLength(MAX_REGISTRATIONS)),
});
export type FenceVolume = v.InferOutput<typeof FenceVolume>;

/** A client, the oldest generation it may still send, and the volumes it may reach here. */
export const Registration = v.strictObject({
  client_id: Id,
  min_generation: Id,
  volumes: v.optional(v.pipe(v.array(Uuid), v.maxLength(MAX_REGISTRATIONS)), []),
});
export type Registration = v.InferOutput<typeof Registration>;

/**
 * FENCE body (role "toma" only). The drive's table has two parts: which extents belong to which
 * volume (`volumes`), and which clients may reach which of those volumes (`set`). `replace` first
 * clears both; each `volumes` entry adds or updates a volume's extents; each `set` entry registers
 * its client with the volumes listed (its list is replaced) or raises its min_generation (a lower
 * value than the one held is ignored); `remove` unregisters clients; `remove_volumes` takes
 * volumes out of the table and out of every client's list. The whole body is checked before
 * anything changes (target/fence.ts): a client both set and removed, a volume both given and
 * removed, a client listing a volume the table would not hold, extents beyond the drive, two
 * volumes on one extent, or a volume whose incarnation differs from the one held is INVALID.
 */
export const FenceRequest = v.strictObject({
  replace: v.boolean(),
  set: v.pipe(v.array(Registration), v.maxLength(MAX_REGISTRATIONS)),
  remove: v.pipe(v.array(Id), v.maxLength(MAX_REGISTRATIONS)),
  volumes: v.optional(v.pipe(v.array(FenceVolume), v.maxLength(MAX_REGISTRATIONS)), []),
  remove_volumes: v.optional(v.pipe(v.array(Uuid), v.maxLength(MAX_REGISTRATIONS)), []),
});
export type FenceRequest = v.InferOutput<typeof FenceRequest>;
/** What a requester passes (the optional lists may be left out). */
export type FenceBody = v.InferInput<typeof FenceRequest>;

/** One run of lock units held by one client (LOCK_LIST answer entries, sorted by offset). */
export const LockEntry = v.object({ client_id: Id, offset: Count, length: Count });
export type LockEntry = v.InferOutput<typeof LockEntry>;
export const LockList = v.array(LockEntry);

/** DIRTY_GET answer: indices of the dirty bitmap regions, ascending. */
export const DirtyList = v.array(Count);

/**
 * Body of any response whose status is not OK. `version`: with STALE for a TOMA's control-plane
 * version, the newest one the drive has seen.
 */
export const ErrorBody = v.object({
  error: v.string(),
  version: v.optional(v.pipe(v.number(), v.integer(), v.minValue(0), v.maxValue(Number.MAX_SAFE_INTEGER))),
});
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
