/**
 * Executes one request of an authenticated connection and returns its response frame. Never
 * rejects: every failure becomes a status and an ErrorBody here, in one place.
 *
 * The request's payload view is only valid until the first await (it points into the decoder's
 * buffer), so every op that keeps payload bytes copies them before awaiting anything.
 */
import { AlreadyClaimedError, StaleGenerationError } from "../drive/formatted-api.ts";
import { DriveIoError } from "../drive/store.ts";
import type { Logger } from "../env.ts";
import { NIL_UUID, uuidToString } from "../uuid.ts";
import { ClaimRequest, MetaSlot, type TargetInfo, decodeBody, isInvalid } from "../wire/control.ts";
import { Flag, HEADER_BYTES, type Header, MAX_CONTROL_BYTES, Op, Status } from "../wire/header.ts";
import type { DriveTable, ServedDrive } from "./drive-table.ts";
import { plantedBugs } from "../planted-bugs.ts";
import { fenceCheck } from "./fence.ts";
import { RequestError, cborResponse, errorResponse, giveBuffer, okResponse, readResponse, takeBuffer } from "./reply.ts";

export interface TargetContext {
  readonly drives: DriveTable;
  readonly log: Logger;
  info(): TargetInfo;
}

export async function execute(
  ctx: TargetContext,
  h: Header,
  payload: Uint8Array,
  payloadOwned: boolean,
): Promise<Uint8Array> {
  try {
    return await dispatch(ctx, h, payload, payloadOwned);
  } catch (e) {
    const status = statusOf(e);
    if (status === Status.IO_ERROR) {
      ctx.log.error("drive I/O failed", { op: Op[h.opcode], drive: safeUuid(h.drive_uuid), error: String(e) });
    }
    return errorResponse(h, status, e instanceof Error ? e.message : String(e));
  }
}

function dispatch(ctx: TargetContext, h: Header, payload: Uint8Array, owned: boolean): Promise<Uint8Array> {
  if (h.flags & Flag.RESPONSE) throw new RequestError(Status.INVALID, "a requester sent a response frame");
  switch (h.opcode) {
    case Op.READ:
      return doRead(dataDrive(ctx, h, payload), h);
    case Op.WRITE: {
      const d = dataDrive(ctx, h, null);
      return doWrite(d, h, owned ? payload : copyOf(payload));
    }
    case Op.FLUSH:
      noPayload(h, payload);
      return doFlush(lookup(ctx, h), h);
    case Op.TRIM:
      return doTrim(dataDrive(ctx, h, payload), h);
    case Op.WRITE_ZEROES:
      return doWriteZeroes(dataDrive(ctx, h, payload), h);
    case Op.LIST_DRIVES:
      return Promise.resolve(cborResponse(h, ctx.info().drives));
    case Op.META_READ:
      noPayload(h, payload);
      return doMetaRead(lookup(ctx, h), h);
    case Op.META_WRITE:
      return doMetaWrite(lookup(ctx, h), h, controlBody(h, payload));
    case Op.CLAIM:
      return doClaim(lookup(ctx, h), h, controlBody(h, payload));
    case Op.HELLO:
      throw new RequestError(Status.INVALID, "HELLO was already done on this connection");
  }
  throw new RequestError(Status.INVALID, `opcode ${h.opcode} is not a request`);
}

function lookup(ctx: TargetContext, h: Header): ServedDrive {
  const d = ctx.drives.get(h.drive_uuid);
  if (!d) throw new RequestError(Status.NO_SUCH_DRIVE, `drive ${safeUuid(h.drive_uuid)} is not served here`);
  return d;
}

/** A data-path drive: served, fenced, and the range inside its data area. */
function dataDrive(ctx: TargetContext, h: Header, payload: Uint8Array | null): ServedDrive {
  if (payload !== null) noPayload(h, payload);
  const d = lookup(ctx, h);
  const refused = fenceCheck(d, h);
  if (refused !== null) throw new RequestError(Status.REFUSED, refused);
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

/** Copies the CBOR body out of the decoder's buffer (cbor-x returns views into its input). */
function controlBody(h: Header, payload: Uint8Array): Uint8Array {
  if (payload.length > MAX_CONTROL_BYTES) {
    throw new RequestError(Status.INVALID, `${Op[h.opcode]} body of ${payload.length} bytes above the limit`);
  }
  return payload.slice();
}

async function doRead(d: ServedDrive, h: Header): Promise<Uint8Array> {
  const out = readResponse(h);
  if (h.length > 0) await d.drive.data.read(h.offset, out.subarray(HEADER_BYTES));
  return out;
}

async function doWrite(d: ServedDrive, h: Header, data: Uint8Array): Promise<Uint8Array> {
  const fua = (h.flags & Flag.FUA) !== 0 && !plantedBugs.ack_before_durable;
  if (data.length > 0) await d.drive.data.write(h.offset, data, fua);
  giveBuffer(data); // written: the drive holds no reference any more (after a failure: the GC's)
  return durableResponse(d, h);
}

/**
 * Responses to the ops that leave data in the drive's cache (and to FLUSH) carry the drive's
 * cache epoch in `generation`, so the requester can tell when acknowledged, unflushed writes
 * may have been lost (client/cache-watch.ts).
 */
function durableResponse(d: ServedDrive, h: Header): Uint8Array {
  h.generation = d.drive.data.cache_epoch ?? 0;
  return okResponse(h);
}

function copyOf(payload: Uint8Array): Uint8Array {
  const b = takeBuffer(payload.length);
  b.set(payload);
  return b;
}

async function doFlush(d: ServedDrive, h: Header): Promise<Uint8Array> {
  if (!plantedBugs.ack_before_durable) await d.drive.data.flush();
  return durableResponse(d, h);
}

async function doTrim(d: ServedDrive, h: Header): Promise<Uint8Array> {
  if (h.length > 0) await d.drive.data.trim(h.offset, h.length);
  return durableResponse(d, h);
}

async function doWriteZeroes(d: ServedDrive, h: Header): Promise<Uint8Array> {
  if (h.length > 0) await d.drive.data.writeZeroes(h.offset, h.length, (h.flags & Flag.FUA) !== 0);
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

/** Runs fn after every earlier metadata op of this drive has finished. */
function serialized<T>(d: ServedDrive, fn: () => Promise<T>): Promise<T> {
  const run = d.metaChain.then(fn, fn);
  d.metaChain = run.catch(() => undefined);
  return run;
}

function statusOf(e: unknown): Status {
  if (e instanceof RequestError) return e.status;
  if (e instanceof StaleGenerationError) return Status.STALE;
  if (e instanceof AlreadyClaimedError) return Status.REFUSED;
  if (e instanceof DriveIoError) {
    if (e.code === "ERANGE") return Status.OUT_OF_RANGE;
    if (e.code === "ECLOSED") return Status.NO_SUCH_DRIVE;
  }
  return Status.IO_ERROR;
}

function safeUuid(b: Uint8Array): string {
  return b.length === 16 ? uuidToString(b) : "(malformed)";
}
