/**
 * Executes one request of an authenticated connection and returns its response frame. Never
 * rejects: every failure becomes a status and an ErrorBody here, in one place.
 *
 * The request's payload view is only valid until the first await (it points into the decoder's
 * buffer), so every op that keeps payload bytes copies them before awaiting anything.
 */
import { AlreadyClaimedError, StaleGenerationError, UnreadableSlotError } from "../drive/formatted-api.ts";
import { DriveIoError } from "../drive/store.ts";
import type { Logger } from "../env.ts";
import type { ServerKeys } from "../wire/cluster-key.ts";
import { NIL_UUID, uuidToString } from "../uuid.ts";
import { ClaimRequest, FenceRequest, MetaSlot, type TargetInfo, type VolumeBinding, decodeBody, isInvalid } from "../wire/control.ts";
import {
  Flag,
  HEADER_BYTES,
  type Header,
  LOCK_UNIT_BYTES,
  MAX_CONTROL_BYTES,
  MAX_LOCK_BYTES,
  Op,
  Status,
} from "../wire/header.ts";
import { answeredEpoch, type DriveTable, type ServedDrive } from "./drive-table.ts";
import { plantedBugs } from "../planted-bugs.ts";
import { Admission, type Role } from "./fence.ts";
import {
  RequestError,
  cborResponse,
  errorResponse,
  giveBuffer,
  okResponse,
  readResponse,
  recycleFrame,
  takeBuffer,
} from "./reply.ts";

export interface TargetContext {
  readonly drives: DriveTable;
  readonly log: Logger;
  /** Enforce client registrations and generations (fence.ts) on role "client" connections. */
  readonly fencing: boolean;
  /** The cluster's keys and a source of challenges, or null: HELLO alone admits (--insecure). */
  readonly auth: { keys: ServerKeys; fill: (b: Uint8Array) => void } | null;
  info(): TargetInfo;
}

/** Who sent a request: the connection's HELLO role and volume, and a signal raised when it ends. */
export interface Requester {
  readonly role: Role;
  /** A client connection's volume (HELLO): every data-path request is held to its extents. */
  readonly volume: VolumeBinding | null;
  /** Aborted when the connection ends: requests waiting inside the target (LOCK) give up. */
  readonly ended: AbortSignal;
  /**
   * A LOCK about to wait gives its in-flight slot and its payload bytes back (true), so that the
   * UNLOCKs and writes that will free its units are not stuck behind waiting LOCKs of the same
   * connection, nor behind the memory they hold; false when the connection already has its
   * maximum of waiting LOCKs (it then keeps both). unpark() with the same bytes when the wait is over.
   */
  park(payload_bytes: number): boolean;
  unpark(payload_bytes: number): void;
}

/**
 * A client request admitted on a drive under fencing: counted there while it executes, so that a
 * FENCE refusing it waits for it (fence.ts AdmittedRequests). Only made when fencing is enforced
 * and the requester is a client.
 */
class Admitted extends Admission {
  drive: ServedDrive | null = null;
}

/**
 * A READ served from the page cache is answered here and now (a frame, not a promise): on a busy
 * volume it is the commonest request, and every promise in its path costs about as much as the
 * copy itself. Everything else answers through a promise.
 */
export function execute(
  ctx: TargetContext,
  req: Requester,
  h: Header,
  payload: Uint8Array,
  payloadOwned: boolean,
): Uint8Array | Promise<Uint8Array> {
  // Read before anything runs: responses reuse h (an OK write carries the cache epoch there).
  const adm = ctx.fencing && req.role === "client" ? new Admitted(h.client_id, h.generation, req.volume) : null;
  let answered = true;
  try {
    const r = dispatch(ctx, req, h, payload, payloadOwned, adm);
    if (r instanceof Uint8Array) return r;
    answered = false;
    return answerLater(ctx, h, r, adm);
  } catch (e) {
    return failure(ctx, h, e);
  } finally {
    if (answered) leave(adm);
  }
}

async function answerLater(ctx: TargetContext, h: Header, r: Promise<Uint8Array>, adm: Admitted | null): Promise<Uint8Array> {
  try {
    return await r;
  } catch (e) {
    return failure(ctx, h, e);
  } finally {
    leave(adm);
  }
}

/** Every failure becomes a status and an ErrorBody here, in one place. */
function failure(ctx: TargetContext, h: Header, e: unknown): Uint8Array {
  const status = statusOf(e);
  if (status === Status.IO_ERROR) {
    ctx.log.error("drive I/O failed", { op: Op[h.opcode], drive: safeUuid(h.drive_uuid), error: String(e) });
  }
  return errorResponse(h, status, e instanceof Error ? e.message : String(e), e instanceof RequestError ? e.version : null);
}

function leave(adm: Admitted | null): void {
  if (adm !== null && adm.drive !== null) adm.drive.admitted.leave(adm);
}

/** Flags that only the ops changing data may carry (checkFlags). */
const DATA_ONLY_FLAGS = Flag.DIRTY | Flag.INTENT | Flag.LOCK;

/** Flags that only some ops or roles may carry (checkFlags). */
const CHECKED_FLAGS = Flag.TEST_LOCK | Flag.DIRTY | Flag.INTENT | Flag.LOSSY_COPY | Flag.LOCK;

function dispatch(
  ctx: TargetContext,
  req: Requester,
  h: Header,
  payload: Uint8Array,
  owned: boolean,
  adm: Admitted | null,
): Uint8Array | Promise<Uint8Array> {
  if (h.flags & Flag.RESPONSE) throw new RequestError(Status.INVALID, "a requester sent a response frame");
  if (h.flags & CHECKED_FLAGS) checkFlags(req, h);
  if (req.role === "toma" && VERSIONED.has(h.opcode)) {
    const d = ctx.drives.get(h.drive_uuid);
    if (d) return versioned(ctx, req, h, payload, owned, d);
  }
  return dispatchOp(ctx, req, h, payload, owned, adm);
}

/**
 * A TOMA's request that changes the drive: refused STALE below the drive's newest version;
 * counted while it runs, so that a request raising the version runs only once every request of
 * an older version has finished (control-version-gate.ts) and nothing of a deposed TOMA can land
 * after the first request of its successor.
 */
function versioned(
  ctx: TargetContext,
  req: Requester,
  h: Header,
  payload: Uint8Array,
  owned: boolean,
  d: ServedDrive,
): Uint8Array | Promise<Uint8Array> {
  const version = h.generation;
  const wait = d.control.admit(version, () =>
    d.locks.failWaitingBelow(
      version,
      (owner) => new RequestError(Status.STALE, `a newer TOMA reached drive ${d.drive.info.drive_uuid} while client ${owner}'s lock of an older one waited`, version),
    ),
  );
  d.control.enter(version);
  let r: Uint8Array | Promise<Uint8Array>;
  try {
    if (wait === null) r = dispatchOp(ctx, req, h, payload, owned, null);
    else {
      // The payload view dies at the first await: the op gets a copy of its own.
      const own = payload.length > 0 && !owned ? copyOf(payload) : payload;
      r = wait.then(() => dispatchOp(ctx, req, h, own, owned || own !== payload, null));
    }
  } catch (e) {
    d.control.leave(version);
    throw e;
  }
  if (r instanceof Uint8Array) {
    d.control.leave(version);
    return r;
  }
  return r.finally(() => d.control.leave(version));
}

/**
 * What a TOMA connection sends that changes a drive: each carries the TOMA's control-plane
 * version in the header's `generation` and passes the drive's version gate first. Reads, FLUSH,
 * listings and META_* do not (a metadata slot is fenced by its own generation).
 */
const VERSIONED = new Set<Op>([
  Op.WRITE,
  Op.WRITE_ZEROES,
  Op.TRIM,
  Op.LOCK,
  Op.UNLOCK,
  Op.DIRTY_SET,
  Op.DIRTY_CLEAR,
  Op.FENCE,
]);

function dispatchOp(
  ctx: TargetContext,
  req: Requester,
  h: Header,
  payload: Uint8Array,
  owned: boolean,
  adm: Admitted | null,
): Uint8Array | Promise<Uint8Array> {
  switch (h.opcode) {
    case Op.READ: {
      const d = dataDrive(ctx, req, h, payload, adm);
      return (h.flags & Flag.TEST_LOCK) !== 0 ? doReadTestLock(d, h) : doRead(d, h);
    }
    case Op.WRITE: {
      const d = dataDrive(ctx, req, h, null, adm);
      if ((h.flags & WRITE_NOW_BARRED) === 0 && writeNow(d, h, payload, owned)) return durableResponse(d, h);
      const data = owned ? payload : copyOf(payload);
      return locking(h) ? lockThen(d, req, h, adm, () => doWrite(d, h, data)) : doWrite(d, h, data);
    }
    case Op.FLUSH:
      noPayload(h, payload);
      return doFlush(fencedDrive(ctx, req, h, adm), h); // no range: the volume's registration is enough
    case Op.TRIM: {
      const d = dataDrive(ctx, req, h, payload, adm);
      return locking(h) ? lockThen(d, req, h, adm, () => doTrim(d, h)) : doTrim(d, h);
    }
    case Op.WRITE_ZEROES: {
      const d = dataDrive(ctx, req, h, payload, adm);
      return locking(h) ? lockThen(d, req, h, adm, () => doWriteZeroes(d, h)) : doWriteZeroes(d, h);
    }
    case Op.PING:
      noPayload(h, payload);
      return okResponse(h);
    case Op.LIST_DRIVES:
      return Promise.resolve(cborResponse(h, ctx.info().drives));
    case Op.META_READ:
      serverOnly(req, h);
      noPayload(h, payload);
      return doMetaRead(lookup(ctx, h), h);
    case Op.META_WRITE:
      serverOnly(req, h);
      return doMetaWrite(lookup(ctx, h), h, controlBody(h, payload));
    case Op.CLAIM:
      serverOnly(req, h);
      return doClaim(lookup(ctx, h), h, controlBody(h, payload));
    case Op.FENCE:
      tomaOnly(req, h);
      return doFence(ctx, lookup(ctx, h), h, controlBody(h, payload));
    case Op.LOCK:
      return doLock(lockRange(ctx, req, h, payload, adm), req, h, adm);
    case Op.UNLOCK:
      return doUnlock(ctx, dataDrive(ctx, req, h, payload, adm), h);
    case Op.LOCK_LIST:
      tomaOnly(req, h);
      noPayload(h, payload);
      return Promise.resolve(cborResponse(h, lookup(ctx, h).locks.list(LOCK_UNIT_BYTES)));
    case Op.DIRTY_GET: {
      const d = dataDrive(ctx, req, h, payload, adm);
      return Promise.resolve(cborResponse(h, d.dirty.list(h.offset, h.length)));
    }
    case Op.DIRTY_INHERITED: {
      tomaOnly(req, h);
      noPayload(h, payload);
      const d = lookup(ctx, h);
      return Promise.resolve(cborResponse(h, d.dirty.listInherited(h.offset, h.length)));
    }
    case Op.DIRTY_SET:
      return doDirtySet(dataDrive(ctx, req, h, payload, adm), h);
    case Op.DIRTY_CLEAR:
      return doDirtyClear(dataDrive(ctx, req, h, payload, adm), h);
    case Op.HELLO:
      throw new RequestError(Status.INVALID, "HELLO was already done on this connection");
    case Op.AUTH:
      throw new RequestError(Status.INVALID, "AUTH was already done on this connection, or not asked for");
  }
  throw new RequestError(Status.INVALID, `opcode ${h.opcode} is not a request`);
}

/**
 * TEST_LOCK only on READ and LOCK; DIRTY, INTENT and LOCK only on the ops that change data (LOCK over at
 * most MAX_LOCK_BYTES, as the LOCK op); LOSSY_COPY from a TOMA.
 */
function checkFlags(req: Requester, h: Header): void {
  if ((h.flags & Flag.LOSSY_COPY) !== 0) {
    tomaOnly(req, h);
    if (h.opcode !== Op.WRITE) throw new RequestError(Status.INVALID, `the LOSSY_COPY flag applies to WRITE only, not ${Op[h.opcode]}`);
  }
  if ((h.flags & Flag.TEST_LOCK) !== 0 && h.opcode !== Op.READ && h.opcode !== Op.LOCK) {
    throw new RequestError(Status.INVALID, `the TEST_LOCK flag applies to READ and LOCK only, not ${Op[h.opcode]}`);
  }
  const changes = h.opcode === Op.WRITE || h.opcode === Op.WRITE_ZEROES || h.opcode === Op.TRIM;
  // No array per call: every mirrored write passes here (3 % of a RAID1 target's CPU profile).
  if (!changes && (h.flags & DATA_ONLY_FLAGS) !== 0) {
    const name = (h.flags & Flag.DIRTY) !== 0 ? "DIRTY" : (h.flags & Flag.INTENT) !== 0 ? "INTENT" : "LOCK";
    throw new RequestError(Status.INVALID, `the ${name} flag applies to WRITE, WRITE_ZEROES and TRIM only, not ${Op[h.opcode]}`);
  }
  if (locking(h) && h.length > MAX_LOCK_BYTES) {
    throw new RequestError(Status.INVALID, `${Op[h.opcode]} with LOCK of ${h.length} bytes, at most ${MAX_LOCK_BYTES} at once`);
  }
}

function lookup(ctx: TargetContext, h: Header): ServedDrive {
  const d = ctx.drives.get(h.drive_uuid);
  if (!d) throw new RequestError(Status.NO_SUCH_DRIVE, `drive ${safeUuid(h.drive_uuid)} is not served here`);
  return d;
}

/** Ops that only the drive's TOMA may send (FENCE, LOCK_LIST). */
function tomaOnly(req: Requester, h: Header): void {
  if (req.role !== "toma") {
    throw new RequestError(Status.REFUSED, `${Op[h.opcode]} is accepted from a TOMA connection only, not from role "${req.role}"`);
  }
}

/**
 * Ops on a drive's metadata (META_READ, META_WRITE, CLAIM): a TOMA's or an administrator's, never
 * a client's. With a cluster key, only a requester that proved the server key has those roles
 * (capability.ts).
 */
function serverOnly(req: Requester, h: Header): void {
  if (req.role === "client") {
    throw new RequestError(Status.REFUSED, `${Op[h.opcode]} is accepted from a TOMA or admin connection only (the server key), not from a client`);
  }
}

/**
 * A served drive that this requester may send data-path requests for (fence.ts). An admitted
 * client request is counted on the drive until execute() is done with it.
 */
function fencedDrive(ctx: TargetContext, req: Requester, h: Header, adm: Admitted | null): ServedDrive {
  const d = lookup(ctx, h);
  const refused = d.fence.check(h, req.role, req.volume, ctx.fencing);
  if (refused !== null) throw new RequestError(Status.REFUSED, refused);
  if (adm !== null) {
    adm.drive = d;
    d.admitted.enter(adm);
  }
  return d;
}

/**
 * A data-path drive: served, fenced, the range inside its data area and, for a client under
 * fencing, inside the extents of the volume its connection serves.
 */
function dataDrive(
  ctx: TargetContext,
  req: Requester,
  h: Header,
  payload: Uint8Array | null,
  adm: Admitted | null,
): ServedDrive {
  if (payload !== null) noPayload(h, payload);
  return inVolume(inRange(fencedDrive(ctx, req, h, adm), h), h, adm);
}

/** A LOCK's drive: a data-path range of at most MAX_LOCK_BYTES. */
function lockRange(ctx: TargetContext, req: Requester, h: Header, payload: Uint8Array, adm: Admitted | null): ServedDrive {
  noPayload(h, payload);
  const d = fencedDrive(ctx, req, h, adm);
  if (h.length > MAX_LOCK_BYTES) {
    throw new RequestError(Status.INVALID, `LOCK of ${h.length} bytes, at most ${MAX_LOCK_BYTES} at once`);
  }
  return inVolume(inRange(d, h), h, adm);
}

/**
 * The extent check (fence.ts): after OUT_OF_RANGE, so that status keeps meaning "beyond the data
 * area". `adm` is non-null exactly when the request is a client's under enforcement, and then
 * its volume is known (check() refused a connection bound to none).
 */
function inVolume(d: ServedDrive, h: Header, adm: Admitted | null): ServedDrive {
  if (adm === null) return d;
  const outside = d.fence.insideVolume(adm.volume!, h.offset, h.length);
  if (outside !== null) throw new RequestError(Status.REFUSED, outside);
  return d;
}

function inRange(d: ServedDrive, h: Header): ServedDrive {
  // Written so that offset + length never has to be computed beyond 2^53.
  if (h.offset > d.data_bytes || h.length > d.data_bytes - h.offset) {
    throw new RequestError(
      Status.OUT_OF_RANGE,
      `range ${h.offset}+${h.length} is beyond the data area (${d.data_bytes} bytes)`,
    );
  }
  return d;
}

function noPayload(h: Header, payload: Uint8Array): void {
  if (payload.length !== 0) {
    throw new RequestError(Status.INVALID, `${Op[h.opcode]} carries no payload, got ${payload.length} bytes`);
  }
}

/**
 * A control body within the size limit. Not copied: each op decodes it before its first await,
 * and decodeBody decodes from a copy of its own (no decoded value aliases the decoder's buffer).
 */
function controlBody(h: Header, payload: Uint8Array): Uint8Array {
  if (payload.length > MAX_CONTROL_BYTES) {
    throw new RequestError(Status.INVALID, `${Op[h.opcode]} body of ${payload.length} bytes above the limit`);
  }
  return payload;
}

function doRead(d: ServedDrive, h: Header): Uint8Array | Promise<Uint8Array> {
  const out = readResponse(h);
  if (h.length === 0) return out;
  const dst = out.subarray(HEADER_BYTES);
  if (d.drive.data.readNow?.(h.offset, dst)) return out;
  return d.drive.data.read(h.offset, dst).then(() => out);
}

/**
 * READ with TEST_LOCK ("test after read", DESIGN.md §3): refused while a unit of the range is
 * locked; otherwise the data, unless a unit was locked at any time during the read, which the
 * units' acquisition sequence numbers reveal even if the lock is already released again.
 */
async function doReadTestLock(d: ServedDrive, h: Header): Promise<Uint8Array> {
  if (h.length === 0) return readResponse(h);
  const first = firstUnit(h);
  const last = lastUnit(h);
  if (d.locks.anyLocked(first, last)) throw locked(d, h, "is locked");
  const before = d.locks.seqSum(first, last);
  const out = readResponse(h);
  await d.drive.data.read(h.offset, out.subarray(HEADER_BYTES));
  if (d.locks.anyLocked(first, last) || d.locks.seqSum(first, last) !== before) {
    recycleFrame(out); // never sent: nothing references it
    throw locked(d, h, "was locked while being read");
  }
  return out;
}

/** The first and last lock unit of a request's (non-empty) range. */
function firstUnit(h: Header): number {
  return Math.floor(h.offset / LOCK_UNIT_BYTES);
}

function lastUnit(h: Header): number {
  return Math.floor((h.offset + h.length - 1) / LOCK_UNIT_BYTES);
}

function locked(d: ServedDrive, h: Header, what: string): RequestError {
  return new RequestError(Status.LOCKED, `range ${h.offset}+${h.length} of drive ${d.drive.info.drive_uuid} ${what}: read again later`);
}

/**
 * With DIRTY or INTENT, the bits of the regions the range touches are durable before the data op
 * runs, and the regions are tracked until flushed (dirty.ts); without, the op just runs (its own
 * promise: no wrapper, the commonest write is one promise from here to the drive).
 */
function marked(d: ServedDrive, h: Header, op: () => Promise<void>): Promise<void> {
  const kind = (h.flags & Flag.DIRTY) !== 0 ? "dirty" : (h.flags & Flag.INTENT) !== 0 ? "intent" : null;
  if (h.length === 0) return DONE;
  if (kind === null) return op();
  return markedOp(d, h, kind, op);
}

const DONE = Promise.resolve();

async function markedOp(d: ServedDrive, h: Header, kind: "dirty" | "intent", op: () => Promise<void>): Promise<void> {
  const bits = d.dirty.markForWrite(h.offset, h.length, kind);
  try {
    if (bits !== null) await bits;
    await op();
  } finally {
    d.dirty.writeDone(h.offset, h.length);
  }
}

/**
 * Flags whose WRITE must take the promise path: a lock to take first, dirty or intent bits to make
 * durable first (marked), a FUA write to wait for, a copy that bumps the epoch (doWrite).
 */
const WRITE_NOW_BARRED = Flag.LOCK | Flag.DIRTY | Flag.INTENT | Flag.FUA | Flag.LOSSY_COPY;

/**
 * A plain WRITE the drive can take without waiting (DriveStore.writeNow: a page-aligned write into
 * the page cache) is written here and now, straight from the payload as it arrived: no copy of it,
 * no promise, the answer sent in the same turn. The commonest write of a busy volume; the response
 * is the one doWrite gives.
 */
function writeNow(d: ServedDrive, h: Header, payload: Uint8Array, owned: boolean): boolean {
  if (h.length === 0 || d.drive.data.writeNow === undefined || !d.drive.data.writeNow(h.offset, payload)) return false;
  if (owned) giveBuffer(payload); // a buffer the link filled for us: written, nothing references it
  return true;
}

function doWrite(d: ServedDrive, h: Header, data: Uint8Array): Promise<Uint8Array> {
  if ((h.flags & Flag.LOSSY_COPY) !== 0) d.epoch_bumps++;
  const fua = (h.flags & Flag.FUA) !== 0 && !plantedBugs.ack_before_durable;
  return marked(d, h, () => d.drive.data.write(h.offset, data, fua)).then(() => {
    giveBuffer(data); // written: the drive holds no reference any more (after a failure: the GC's)
    return durableResponse(d, h);
  });
}

/**
 * Responses to the ops that leave data in the drive's cache (and to FLUSH) carry the drive's
 * cache epoch in `generation`, so the requester can tell when acknowledged, unflushed writes
 * may have been lost (client/cache-watch.ts).
 */
function durableResponse(d: ServedDrive, h: Header): Uint8Array {
  // Wraps within u32: the epoch is compared for equality only.
  h.generation = answeredEpoch(d);
  return okResponse(h);
}

function copyOf(payload: Uint8Array): Uint8Array {
  const b = takeBuffer(payload.length);
  b.set(payload);
  return b;
}

async function doFlush(d: ServedDrive, h: Header): Promise<Uint8Array> {
  await flushDrive(d);
  return durableResponse(d, h);
}

/** Makes the drive's cached writes durable, and tells the write-intent bits (dirty.ts). */
export async function flushDrive(d: ServedDrive): Promise<void> {
  const mark = d.dirty.flushMark();
  if (!plantedBugs.ack_before_durable) await d.drive.data.flush();
  d.dirty.flushed(mark);
}

async function doTrim(d: ServedDrive, h: Header): Promise<Uint8Array> {
  await marked(d, h, () => d.drive.data.trim(h.offset, h.length));
  return durableResponse(d, h);
}

async function doWriteZeroes(d: ServedDrive, h: Header): Promise<Uint8Array> {
  await marked(d, h, () => d.drive.data.writeZeroes(h.offset, h.length, (h.flags & Flag.FUA) !== 0));
  return durableResponse(d, h);
}

async function doMetaRead(d: ServedDrive, h: Header): Promise<Uint8Array> {
  const slot = await serialized(d, () => d.drive.metaRead());
  return cborResponse(h, slot);
}

async function doMetaWrite(d: ServedDrive, h: Header, body: Uint8Array): Promise<Uint8Array> {
  const slot = decodeBody(MetaSlot, body);
  if (isInvalid(slot)) throw new RequestError(Status.INVALID, `META_WRITE body: ${slot.invalid}`);
  const bytes = slot.payload;
  if (bytes === null) throw new RequestError(Status.INVALID, "META_WRITE needs a payload");
  await serialized(d, () => d.drive.metaWrite(slot.generation, bytes));
  return okResponse(h);
}

async function doClaim(d: ServedDrive, h: Header, body: Uint8Array): Promise<Uint8Array> {
  const req = decodeBody(ClaimRequest, body);
  if (isInvalid(req)) throw new RequestError(Status.INVALID, `CLAIM body: ${req.invalid}`);
  if (req.cluster_uuid === NIL_UUID) throw new RequestError(Status.INVALID, "cannot claim for the nil cluster");
  await serialized(d, async () => {
    // Claiming again for the cluster that owns the drive is a no-op: a TOMA may retry a claim
    // whose answer it lost.
    if (d.drive.info.cluster_uuid === req.cluster_uuid) return;
    await d.drive.claim(req.cluster_uuid);
  });
  return okResponse(h);
}

/**
 * FENCE: the new table applies at once; with fencing enforced, the answer waits until no client
 * request it refuses is executing on the drive, and such requests waiting for a lock give up.
 */
async function doFence(ctx: TargetContext, d: ServedDrive, h: Header, body: Uint8Array): Promise<Uint8Array> {
  const req = decodeBody(FenceRequest, body);
  if (isInvalid(req)) throw new RequestError(Status.INVALID, `FENCE body: ${req.invalid}`);
  const invalid = d.fence.apply(req);
  if (invalid !== null) throw new RequestError(Status.INVALID, `FENCE: ${invalid}`);
  if (ctx.fencing) {
    const barred = (a: Admission) => d.fence.barred(a);
    d.locks.failWaiting(
      barred,
      (owner) => new RequestError(Status.REFUSED, `client ${owner} was fenced out of drive ${d.drive.info.drive_uuid} while waiting for a lock`),
    );
    const drained = d.admitted.drain(barred);
    if (drained !== null) await drained;
  }
  return okResponse(h);
}

async function doLock(d: ServedDrive, req: Requester, h: Header, adm: Admitted | null): Promise<Uint8Array> {
  await takeLock(d, req, h, adm);
  return okResponse(h);
}

function locking(h: Header): boolean {
  return (h.flags & Flag.LOCK) !== 0;
}

/** An op with Flag.LOCK: the lock first, exactly as LOCK takes it, then the op. */
async function lockThen(d: ServedDrive, req: Requester, h: Header, adm: Admitted | null, op: () => Promise<Uint8Array>): Promise<Uint8Array> {
  await takeLock(d, req, h, adm);
  return op();
}

/**
 * Takes the lock units of the request's range for its client, waiting while any is held; a LOCK
 * with TEST_LOCK does not wait but is answered LOCKED, taking nothing.
 */
async function takeLock(d: ServedDrive, req: Requester, h: Header, adm: Admitted | null): Promise<void> {
  if (h.length === 0) return;
  const first = firstUnit(h);
  const last = lastUnit(h);
  if ((h.flags & Flag.TEST_LOCK) !== 0) {
    if (!d.locks.tryLock(h.client_id, first, last)) throw locked(d, h, "is locked or waited for");
  } else {
    // A TOMA's LOCK admitted before a newer version arrived never starts waiting: the newer
    // version's barrier waits for it, and it may wait for a lock only the newer TOMA frees.
    if (req.role === "toma") d.control.check(h.generation);
    const wait = d.locks.lock(h.client_id, first, last, req.ended, adm, req.role === "toma" ? h.generation : null);
    if (wait !== null) {
      const parked = req.park(h.payload_len);
      try {
        await wait;
      } finally {
        if (parked) req.unpark(h.payload_len);
      }
    }
  }
  // Durable before the holder may write the other legs (dirty.ts markLocked).
  const marked = d.dirty.markLocked(h.offset, h.length);
  if (marked !== null) await marked;
}

async function doUnlock(ctx: TargetContext, d: ServedDrive, h: Header): Promise<Uint8Array> {
  if (h.length > 0) {
    // Also withdraws the client's requests still waiting for the range: ones it gave up on.
    const withdrawn = d.locks.unlock(h.client_id, firstUnit(h), lastUnit(h));
    if (withdrawn > 0) ctx.log.debug("UNLOCK withdrew requests still waiting for the range", { client: h.client_id, drive: d.drive.info.drive_uuid, offset: h.offset, length: h.length, withdrawn });
  }
  return okResponse(h);
}

async function doDirtySet(d: ServedDrive, h: Header): Promise<Uint8Array> {
  await d.dirty.set(h.offset, h.length);
  return okResponse(h);
}

async function doDirtyClear(d: ServedDrive, h: Header): Promise<Uint8Array> {
  await d.dirty.clear(h.offset, h.length);
  return okResponse(h);
}

/** Runs fn after every earlier metadata op of this drive has finished. */
function serialized<T>(d: ServedDrive, fn: () => Promise<T>): Promise<T> {
  return d.metaChain.run(fn);
}

function statusOf(e: unknown): Status {
  if (e instanceof RequestError) return e.status;
  if (e instanceof StaleGenerationError) return Status.STALE;
  if (e instanceof AlreadyClaimedError) return Status.REFUSED;
  if (e instanceof UnreadableSlotError) return Status.REFUSED;
  if (e instanceof DriveIoError) {
    if (e.code === "ERANGE") return Status.OUT_OF_RANGE;
    if (e.code === "ECLOSED") return Status.NO_SUCH_DRIVE;
  }
  return Status.IO_ERROR;
}

function safeUuid(b: Uint8Array): string {
  return b.length === 16 ? uuidToString(b) : "(malformed)";
}
