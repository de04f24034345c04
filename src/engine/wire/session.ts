/**
 * The requester side of one target connection (TargetSession): HELLO, then pipelined requests
 * matched to responses by request id, completing in whatever order the target answers.
 *
 * No request has a timeout of its own (a write on a slow drive may take as long as it takes), but
 * the connection has a liveness deadline (./liveness.ts): a session that hears nothing from its
 * target while requests are outstanding (or for longer while idle) sends a PING, which the target
 * answers at once, ahead of any queued I/O; a PING unanswered within its deadline closes the
 * session as dead. A closed session fails every request at once with SessionClosedError, so
 * nothing hangs on a half-open connection, a paused target or a one-way cut: the caller's
 * reconnect-and-retry path takes over. Judged only by this node's own timers.
 *
 * In flight is bounded by count and bytes; requests beyond either wait in FIFO order, unsent.
 */
import type { Env } from "../env.ts";
import type { Conn } from "../net/conn.ts";
import type { FrameLink, Transport } from "../net/frame-link.ts";
import { streamLink } from "../net/stream-link.ts";
import { DEFAULT_LIVENESS, Liveness, type LivenessOptions } from "./liveness.ts";
import {
  DirtyList,
  DriveInfo,
  ErrorBody,
  type FenceBody,
  HelloRequest,
  type LockEntry,
  LockList,
  MetaReadAnswer,
  TargetInfo,
  decodeBody,
  encodeBody,
  isInvalid,
} from "./control.ts";
import {
  Flag,
  type Header,
  MAX_CONTROL_BYTES,
  MAX_IO_BYTES,
  LOCK_UNIT_BYTES,
  MAX_LOCK_BYTES,
  Op,
  Status,
  emptyHeader,
} from "./header.ts";
import { type ClusterKey, NONCE_BYTES, requesterProof, sameSecret, targetProof } from "./cluster-key.ts";
import { AuthError, SessionClosedError, TargetError, type TargetSession, type WriteOptions } from "./session-api.ts";
import * as v from "valibot";

export interface SessionOptions {
  /** Requests on the wire at once (keep ≤ the target's max_inflight_per_conn, 256 by default). */
  max_inflight?: number;
  /** Payload bytes on the wire at once; one request larger than this still goes alone. */
  max_inflight_bytes?: number;
  /**
   * LOCKs (and writes that carry one, Flag.LOCK) on the wire at once, counted apart from
   * max_inflight: a LOCK may wait inside the
   * target for as long as its units are held, and must not keep the UNLOCKs that free them from
   * being sent (keep ≤ the target's MAX_PARKED_LOCKS_PER_CONN, 1024).
   */
  max_inflight_locks?: number;
  /** Fencing fields carried by every request (DESIGN.md §3); enforced by targets with fencing on. */
  client_id?: number;
  generation?: number;
  /** openSession's TCP link: coalesce the frames of one tick into one send (on by default; off for measurements). */
  batch_sends?: boolean;
  /**
   * The key this requester proves (the server key, or a client host's client key): HELLO names
   * its kind, AUTH proves it, and the target's proof of the same key is checked; a target
   * without a key is refused. What the target lets us do follows from the kind (a client key is
   * served as a client whatever role HELLO names). None: only targets without a key (--insecure).
   */
  cluster_key?: ClusterKey | null;
  /** When to probe a quiet target and when to give it up (./liveness.ts); null: never (tests of raw peers). */
  liveness?: Partial<LivenessOptions> | null;
}

export const DEFAULT_SESSION_MAX_INFLIGHT = 256;
export const DEFAULT_SESSION_MAX_INFLIGHT_LOCKS = 1024;

function parseWith<S extends v.GenericSchema>(schema: S): (body: Uint8Array) => unknown {
  return (body) => decodeBody(schema, body);
}
export const DEFAULT_SESSION_MAX_INFLIGHT_BYTES = 64 * 1024 * 1024;

interface Request {
  op: Op;
  flags: number;
  drive: Uint8Array;
  offset: number;
  length: number;
  /** Sent after the header; the caller keeps it unchanged until the promise settles. */
  payload: Uint8Array | null;
  /** READ: where the response payload lands. */
  dst: Uint8Array | null;
  /** Decodes an OK response's CBOR body; null when the response has no body. */
  parse: ((body: Uint8Array) => unknown) | null;
  /** Counted against max_inflight_bytes. */
  bytes: number;
  /** The header's client_id when not the session's own (UNLOCK on behalf of another client); else -1. */
  client: number;
  /** The header's generation when the op was planned under its own (WriteOptions.generation); else -1. */
  gen: number;
  resolve: (value: unknown) => void;
  reject: (e: Error) => void;
}

const NO_DRIVE = new Uint8Array(16);
const parseTargetInfo = parseWith(TargetInfo);
const parseDriveList = parseWith(v.array(DriveInfo));
const parseMetaSlot = parseWith(MetaReadAnswer);
const parseLockList = parseWith(LockList);
const parseDirtyList = parseWith(DirtyList);
const MAX_U32 = 0xffff_ffff;

/** Connects, does HELLO, and returns a ready session. Rejects (and closes) if HELLO fails. */
export async function openSession(
  env: Env,
  address: string,
  hello: HelloRequest,
  opts: SessionOptions = {},
): Promise<Session> {
  const deadline = opts.liveness === null ? null : (opts.liveness?.handshake_ms ?? DEFAULT_LIVENESS.handshake_ms);
  const conn = await connectWithin(env, address, deadline);
  const link = streamLink(conn, { batch: opts.batch_sends !== false });
  return await sessionOver(env, link, address, hello, opts);
}

/**
 * A connect that waits at most `deadline_ms` (null: as long as the network does). A SYN lost on a
 * path cut one way is retried by the kernel for minutes; the caller would wait that long for a
 * target it could have reported at once. A connection that comes up after we gave up is closed.
 */
function connectWithin(env: Env, address: string, deadline_ms: number | null): Promise<Conn> {
  const p = env.net.connect(address);
  if (deadline_ms === null) return p;
  return new Promise<Conn>((resolve, reject) => {
    let late = false;
    const t = env.timers.after(deadline_ms, () => {
      late = true;
      reject(new SessionClosedError(`connect to ${address}: no answer within ${deadline_ms} ms`));
    });
    p.then(
      (c) => {
        if (late) return c.close();
        t.cancel();
        resolve(c);
      },
      (e) => {
        t.cancel();
        reject(e);
      },
    );
  });
}

/** HELLO (and AUTH) over a link already open; closes it if that fails. */
export async function sessionOver(
  env: Env,
  link: FrameLink,
  address: string,
  hello: HelloRequest,
  opts: SessionOptions = {},
): Promise<Session> {
  const s = new Session(env, link, address, opts);
  try {
    const key = opts.cluster_key ?? null;
    const nonce = new Uint8Array(NONCE_BYTES);
    if (key !== null) env.random.fill(nonce);
    await s.hello(key === null ? hello : { ...hello, nonce, key: key.kind }, key);
  } catch (e) {
    s.close();
    throw e;
  }
  return s;
}

export class Session implements TargetSession {
  info: TargetInfo = { target_name: "", version: "", drives: [] };
  onClose: ((reason: string) => void) | null = null;
  client_id: number;
  generation: number;
  transport: Transport;

  private isClosed = false;
  private readonly pending = new Map<number, Request>();
  private readonly waiting: Request[] = [];
  private waitingHead = 0;
  /** LOCKs have a budget and a queue of their own (see SessionOptions.max_inflight_locks). */
  private readonly waitingLocks: Request[] = [];
  private waitingLocksHead = 0;
  private inflightLocks = 0;
  /** UNLOCKs in `waiting`: no LOCK is sent while there are any (see pump). */
  private queuedUnlocks = 0;
  private readonly max_inflight_locks: number;
  private nextId = 1;
  private inflightBytes = 0;
  private readonly max_inflight: number;
  private readonly max_inflight_bytes: number;
  /** Reused for every request header (encodeHeader copies it into the frame). */
  private readonly hdr: Header = emptyHeader();
  private readonly liveness: Liveness | null;
  /** The request id of the PING on the wire (0: none). Not in `pending`: it takes no slot. */
  private probeId = 0;

  constructor(
    env: Env,
    private readonly link: FrameLink,
    readonly address: string,
    opts: SessionOptions,
  ) {
    this.max_inflight = opts.max_inflight ?? DEFAULT_SESSION_MAX_INFLIGHT;
    this.max_inflight_bytes = opts.max_inflight_bytes ?? DEFAULT_SESSION_MAX_INFLIGHT_BYTES;
    this.max_inflight_locks = opts.max_inflight_locks ?? DEFAULT_SESSION_MAX_INFLIGHT_LOCKS;
    this.client_id = opts.client_id ?? 0;
    this.generation = opts.generation ?? 0;
    this.transport = link.transport;
    link.onFrame = (h, payload) => this.onFrame(h, payload);
    link.sink = (h) => this.readDestination(h);
    link.onMalformed = (why) => this.fail(`malformed frame from target: ${why}`);
    link.onClose = (reason) => this.fail(reason);
    const lv = opts.liveness === null ? null : { ...DEFAULT_LIVENESS, ...opts.liveness };
    this.liveness =
      lv === null
        ? null
        : new Liveness(env, lv, {
            busy: () => this.pending.size > 0,
            ready: () => this.handshakeDone,
            probe: () => this.sendProbe(),
            dead: (why) => this.fail(why),
          });
  }

  /** HELLO (and AUTH) answered: PINGs may be sent (before, the target would refuse them). */
  private handshakeDone = false;

  get closed(): boolean {
    return this.isClosed;
  }


  /** Requests issued from now on carry these fencing fields. */
  setFence(client_id: number, generation: number): void {
    this.client_id = client_id;
    this.generation = generation;
  }

  /**
   * HELLO, and AUTH when the target asks (with `key`, `req.nonce` must be a fresh nonce and
   * `req.key` its kind).
   */
  async hello(req: HelloRequest, key: ClusterKey | null = null): Promise<TargetInfo> {
    let info = (await this.submit(Op.HELLO, 0, NO_DRIVE, 0, 0, encodeBody(req), null, parseTargetInfo)) as TargetInfo;
    const ch = info.auth;
    if (key === null && ch) {
      throw new AuthError(`target ${this.address} requires the cluster key: give --key-file FILE or set NVMESH_KEY_FILE`);
    }
    if (key !== null && !ch) {
      throw new AuthError(`target ${this.address} has no cluster key, so it cannot prove it belongs to this cluster: start it with --key-file`);
    }
    if (key !== null && ch) {
      if ((req.key ?? "server") !== key.kind) throw new Error(`HELLO names the ${req.key ?? "server"} key but proves the ${key.kind} key`);
      if (!sameSecret(ch.proof, targetProof(key, req.nonce!, ch.challenge))) {
        throw new AuthError(`target ${this.address} holds a different cluster key`);
      }
      const proof = requesterProof(key, ch.challenge, req.nonce!, req.role, req.name);
      try {
        info = (await this.submit(Op.AUTH, 0, NO_DRIVE, 0, 0, encodeBody({ proof }), null, parseTargetInfo)) as TargetInfo;
      } catch (e) {
        if (e instanceof TargetError && e.status === Status.NOT_AUTHENTICATED) {
          throw new AuthError(`target ${this.address} refused our cluster key: it holds a different one`);
        }
        throw e;
      }
    }
    this.info = info;
    this.handshakeDone = true;
    return this.info;
  }

  read(drive: Uint8Array, offset: number, dst: Uint8Array): Promise<void> {
    const bad = checkIo(drive, offset, dst.length, MAX_IO_BYTES);
    if (bad) return Promise.reject(bad);
    return this.submit(Op.READ, 0, drive, offset, dst.length, null, dst, null) as Promise<void>;
  }

  readTestLock(drive: Uint8Array, offset: number, dst: Uint8Array): Promise<void> {
    const bad = checkIo(drive, offset, dst.length, MAX_IO_BYTES);
    if (bad) return Promise.reject(bad);
    return this.submit(Op.READ, Flag.TEST_LOCK, drive, offset, dst.length, null, dst, null) as Promise<void>;
  }

  write(drive: Uint8Array, offset: number, src: Uint8Array, fua: boolean, opts?: WriteOptions): Promise<number> {
    const bad = checkIo(drive, offset, src.length, MAX_IO_BYTES);
    if (bad) return Promise.reject(bad);
    const flags = (fua ? Flag.FUA : 0) | markFlags(opts);
    return this.submit(Op.WRITE, flags, drive, offset, src.length, src, null, null, -1, opts?.generation) as Promise<number>;
  }

  flush(drive: Uint8Array): Promise<number> {
    const bad = checkIo(drive, 0, 0, 0);
    if (bad) return Promise.reject(bad);
    return this.submit(Op.FLUSH, 0, drive, 0, 0, null, null, null) as Promise<number>;
  }

  trim(drive: Uint8Array, offset: number, length: number, opts?: WriteOptions): Promise<number> {
    const bad = checkIo(drive, offset, length, MAX_U32);
    if (bad) return Promise.reject(bad);
    const flags = markFlags(opts);
    return this.submit(Op.TRIM, flags, drive, offset, length, null, null, null, -1, opts?.generation) as Promise<number>;
  }

  writeZeroes(drive: Uint8Array, offset: number, length: number, fua: boolean, opts?: WriteOptions): Promise<number> {
    const bad = checkIo(drive, offset, length, MAX_U32);
    if (bad) return Promise.reject(bad);
    const flags = (fua ? Flag.FUA : 0) | markFlags(opts);
    return this.submit(Op.WRITE_ZEROES, flags, drive, offset, length, null, null, null, -1, opts?.generation) as Promise<number>;
  }

  lock(drive: Uint8Array, offset: number, length: number): Promise<void> {
    const bad = checkIo(drive, offset, length, MAX_LOCK_BYTES);
    if (bad) return Promise.reject(bad);
    return this.submit(Op.LOCK, 0, drive, offset, length, null, null, null).then(nothing);
  }

  tryLock(drive: Uint8Array, offset: number, length: number): Promise<boolean> {
    const bad = checkIo(drive, offset, length, MAX_LOCK_BYTES);
    if (bad) return Promise.reject(bad);
    return this.submit(Op.LOCK, Flag.TEST_LOCK, drive, offset, length, null, null, null).then(
      () => true,
      (e) => {
        if (e instanceof TargetError && e.status === Status.LOCKED) return false;
        throw e;
      },
    );
  }

  unlock(drive: Uint8Array, offset: number, length: number): Promise<void> {
    const bad = checkIo(drive, offset, length, MAX_U32);
    if (bad) return Promise.reject(bad);
    return this.submit(Op.UNLOCK, 0, drive, offset, length, null, null, null).then(nothing);
  }

  unlockFor(drive: Uint8Array, offset: number, length: number, client_id: number): Promise<void> {
    const bad = checkIo(drive, offset, length, MAX_U32);
    if (bad) return Promise.reject(bad);
    if (!Number.isSafeInteger(client_id) || client_id < 0) return Promise.reject(new RangeError(`bad client id ${client_id}`));
    return this.submit(Op.UNLOCK, 0, drive, offset, length, null, null, null, client_id).then(nothing);
  }

  lockList(drive: Uint8Array): Promise<LockEntry[]> {
    const bad = checkIo(drive, 0, 0, 0);
    if (bad) return Promise.reject(bad);
    return this.submit(Op.LOCK_LIST, 0, drive, 0, 0, null, null, parseLockList) as Promise<LockEntry[]>;
  }

  fence(drive: Uint8Array, body: FenceBody): Promise<void> {
    const bad = checkIo(drive, 0, 0, 0);
    if (bad) return Promise.reject(bad);
    const bytes = encodeBody(body);
    if (bytes.length > MAX_CONTROL_BYTES) return Promise.reject(new RangeError(`FENCE body of ${bytes.length} bytes is above the control limit`));
    return this.submit(Op.FENCE, 0, drive, 0, 0, bytes, null, null).then(nothing);
  }

  dirtyGet(drive: Uint8Array, offset: number, length: number): Promise<number[]> {
    const bad = checkIo(drive, offset, length, MAX_U32);
    if (bad) return Promise.reject(bad);
    return this.submit(Op.DIRTY_GET, 0, drive, offset, length, null, null, parseDirtyList) as Promise<number[]>;
  }

  dirtyInherited(drive: Uint8Array, offset: number, length: number): Promise<number[]> {
    const bad = checkIo(drive, offset, length, MAX_U32);
    if (bad) return Promise.reject(bad);
    return this.submit(Op.DIRTY_INHERITED, 0, drive, offset, length, null, null, parseDirtyList) as Promise<number[]>;
  }

  dirtySet(drive: Uint8Array, offset: number, length: number): Promise<void> {
    const bad = checkIo(drive, offset, length, MAX_U32);
    if (bad) return Promise.reject(bad);
    return this.submit(Op.DIRTY_SET, 0, drive, offset, length, null, null, null).then(nothing);
  }

  dirtyClear(drive: Uint8Array, offset: number, length: number): Promise<void> {
    const bad = checkIo(drive, offset, length, MAX_U32);
    if (bad) return Promise.reject(bad);
    return this.submit(Op.DIRTY_CLEAR, 0, drive, offset, length, null, null, null).then(nothing);
  }

  listDrives(): Promise<DriveInfo[]> {
    return this.submit(Op.LIST_DRIVES, 0, NO_DRIVE, 0, 0, null, null, parseDriveList) as Promise<DriveInfo[]>;
  }

  metaRead(drive: Uint8Array): Promise<MetaReadAnswer> {
    const bad = checkIo(drive, 0, 0, 0);
    if (bad) return Promise.reject(bad);
    return this.submit(Op.META_READ, 0, drive, 0, 0, null, null, parseMetaSlot) as Promise<MetaReadAnswer>;
  }

  metaWrite(drive: Uint8Array, generation: number, payload: Uint8Array): Promise<void> {
    const bad = checkIo(drive, 0, 0, 0);
    if (bad) return Promise.reject(bad);
    const body = encodeBody({ generation, payload });
    if (body.length > MAX_CONTROL_BYTES) {
      return Promise.reject(new RangeError(`metadata of ${payload.length} bytes is above the control limit`));
    }
    return this.submit(Op.META_WRITE, 0, drive, 0, 0, body, null, null) as Promise<void>;
  }

  claim(drive: Uint8Array, cluster_uuid: string): Promise<void> {
    const bad = checkIo(drive, 0, 0, 0);
    if (bad) return Promise.reject(bad);
    const body = encodeBody({ cluster_uuid });
    return this.submit(Op.CLAIM, 0, drive, 0, 0, body, null, null) as Promise<void>;
  }

  close(reason?: string): void {
    this.fail(reason === undefined ? "closed by the requester" : `closed by the requester: ${reason}`);
  }

  /** Requests on the wire now (tests and status output). */
  get inflight(): number {
    return this.pending.size;
  }

  private submit(
    op: Op,
    flags: number,
    drive: Uint8Array,
    offset: number,
    length: number,
    payload: Uint8Array | null,
    dst: Uint8Array | null,
    parse: Request["parse"],
    client = -1,
    gen = -1,
  ): Promise<unknown> {
    if (this.isClosed) return Promise.reject(new SessionClosedError(`session to ${this.address} is closed`));
    return new Promise((resolve, reject) => {
      const bytes = (payload?.length ?? 0) + (dst?.length ?? 0);
      const r: Request = { op, flags, drive, offset, length, payload, dst, parse, bytes, client, gen, resolve, reject };
      if (op === Op.UNLOCK) this.withdrawQueuedLocks(r);
      if (locking(r)) {
        if (this.waitingLocksHead === this.waitingLocks.length && this.inflightLocks < this.max_inflight_locks && this.queuedUnlocks === 0) this.send(r);
        else this.waitingLocks.push(r);
      } else if (this.waitingHead === this.waiting.length && this.hasRoom(bytes)) this.send(r);
      else {
        this.waiting.push(r);
        if (op === Op.UNLOCK) this.queuedUnlocks++;
      }
    });
  }

  /** Room for one more request other than LOCK (LOCKs are counted apart). */
  private hasRoom(bytes: number): boolean {
    const others = this.pending.size - this.inflightLocks;
    if (others >= this.max_inflight) return false;
    return others === 0 || this.inflightBytes + bytes <= this.max_inflight_bytes;
  }

  private takeId(): number {
    let id = this.nextId;
    while (this.pending.has(id) || id === this.probeId) id = id === MAX_U32 ? 1 : id + 1;
    this.nextId = id === MAX_U32 ? 1 : id + 1;
    return id;
  }

  /** A PING outside the request queue and its bounds: it must go out even when they are full. */
  private sendProbe(): void {
    if (this.isClosed || this.probeId !== 0) return;
    const id = this.takeId();
    this.probeId = id;
    const h = this.hdr;
    h.opcode = Op.PING;
    h.flags = 0;
    h.request_id = id;
    h.length = 0;
    h.offset = 0;
    h.drive_uuid = NO_DRIVE;
    h.client_id = this.client_id;
    h.generation = this.generation;
    h.status = Status.OK;
    h.payload_len = 0;
    this.link.send(h, null);
  }

  private send(r: Request): void {
    const id = this.takeId();
    this.pending.set(id, r);
    this.inflightBytes += r.bytes;
    if (locking(r)) this.inflightLocks++;

    const h = this.hdr;
    h.opcode = r.op;
    h.flags = r.flags;
    h.request_id = id;
    h.length = r.length;
    h.offset = r.offset;
    h.drive_uuid = r.drive;
    h.client_id = r.client >= 0 ? r.client : this.client_id;
    h.generation = r.gen >= 0 ? r.gen : this.generation;
    h.status = Status.OK;
    h.payload_len = r.payload?.length ?? 0;
    this.link.send(h, r.payload);
  }

  /** A large READ response lands straight in the caller's buffer (see FrameDecoder's sink). */
  private readDestination(h: Header): Uint8Array | null {
    if (this.isClosed || h.opcode !== Op.READ || h.status !== Status.OK || (h.flags & Flag.RESPONSE) === 0) return null;
    const r = this.pending.get(h.request_id);
    return r !== undefined && r.op === Op.READ && r.dst !== null ? r.dst : null;
  }

  private onFrame(h: Header, payload: Uint8Array): void {
    if (this.isClosed) return;
    if ((h.flags & Flag.RESPONSE) === 0) return this.fail(`target sent a request (${Op[h.opcode]})`);
    this.liveness?.heard();
    if (h.request_id === this.probeId && h.opcode === Op.PING) {
      this.probeId = 0;
      if (h.status !== Status.OK) return this.fail(`target answered PING with ${Status[h.status] ?? h.status}`);
      return;
    }
    const r = this.pending.get(h.request_id);
    if (!r) return this.fail(`target answered unknown request id ${h.request_id}`);
    if (r.op !== h.opcode) return this.fail(`target answered ${Op[r.op]} request ${h.request_id} as ${Op[h.opcode]}`);
    this.pending.delete(h.request_id);
    this.inflightBytes -= r.bytes;
    if (locking(r)) this.inflightLocks--;
    this.settle(r, h, payload);
    this.pump();
  }

  /** Resolves or rejects one request from its response. payload is only valid during the call. */
  private settle(r: Request, h: Header, payload: Uint8Array): void {
    if (h.status !== Status.OK) {
      const body = decodeBody(ErrorBody, payload);
      const msg = isInvalid(body) ? `${Status[h.status] ?? h.status} (no error body)` : body.error;
      return r.reject(new TargetError(h.status, msg, isInvalid(body) ? null : (body.version ?? null)));
    }
    if (r.dst) {
      if (payload.length !== r.dst.length) {
        return r.reject(new TargetError(Status.INVALID, `READ returned ${payload.length} bytes, expected ${r.dst.length}`));
      }
      if (payload !== r.dst) r.dst.set(payload);
      return r.resolve(undefined);
    }
    if (r.parse) {
      const value = r.parse(payload);
      if (isInvalid(value)) {
        return r.reject(new TargetError(Status.INVALID, `target sent an invalid ${Op[r.op]} body: ${value.invalid}`));
      }
      return r.resolve(value);
    }
    // WRITE, WRITE_ZEROES, TRIM and FLUSH answers carry the drive's cache epoch here.
    r.resolve(h.generation);
  }

  /**
   * An UNLOCK withdraws the requests of the same owner, still queued here, that would take a unit
   * of its range, exactly as the target withdraws those already waiting there (docs/protocol.md,
   * UNLOCK): sent after it, such a request would be granted with nobody left to free it.
   */
  private withdrawQueuedLocks(unlock: Request): void {
    if (unlock.length === 0 || this.waitingLocksHead === this.waitingLocks.length) return;
    const owner = unlock.client >= 0 ? unlock.client : this.client_id;
    const first = Math.floor(unlock.offset / LOCK_UNIT_BYTES);
    const last = Math.floor((unlock.offset + unlock.length - 1) / LOCK_UNIT_BYTES);
    const keep: Request[] = [];
    const gone: Request[] = [];
    for (let i = this.waitingLocksHead; i < this.waitingLocks.length; i++) {
      const r = this.waitingLocks[i]!;
      const mine = r.length > 0 && (r.client >= 0 ? r.client : this.client_id) === owner && sameDrive(r.drive, unlock.drive);
      const overlaps = mine && Math.floor(r.offset / LOCK_UNIT_BYTES) <= last && first <= Math.floor((r.offset + r.length - 1) / LOCK_UNIT_BYTES);
      (overlaps ? gone : keep).push(r);
    }
    if (gone.length === 0) return;
    this.waitingLocks.length = 0;
    this.waitingLocks.push(...keep);
    this.waitingLocksHead = 0;
    for (const r of gone) r.reject(new TargetError(Status.BUSY, "withdrawn: an UNLOCK of its range was sent before it", null));
  }

  private pump(): void {
    // Queued UNLOCKs first, and no LOCK while one is queued: a LOCK sent ahead of an UNLOCK of
    // ours submitted before it would be withdrawn by that UNLOCK at the target.
    this.pumpWaiting();
    if (this.queuedUnlocks > 0) return;
    while (this.waitingLocksHead < this.waitingLocks.length && this.inflightLocks < this.max_inflight_locks) {
      const next = this.waitingLocks[this.waitingLocksHead]!;
      this.waitingLocks[this.waitingLocksHead++] = undefined as unknown as Request;
      this.send(next);
    }
    if (this.waitingLocksHead === this.waitingLocks.length) {
      this.waitingLocks.length = 0;
      this.waitingLocksHead = 0;
    } else if (this.waitingLocksHead >= 1024) {
      this.waitingLocks.splice(0, this.waitingLocksHead);
      this.waitingLocksHead = 0;
    }
  }

  /** Sends the queued requests other than LOCKs, in order, while they have room. */
  private pumpWaiting(): void {
    while (this.waitingHead < this.waiting.length) {
      const next = this.waiting[this.waitingHead]!;
      if (!this.hasRoom(next.bytes)) {
        if (this.waitingHead >= 1024) {
          this.waiting.splice(0, this.waitingHead);
          this.waitingHead = 0;
        }
        return;
      }
      this.waiting[this.waitingHead++] = undefined as unknown as Request;
      if (next.op === Op.UNLOCK) this.queuedUnlocks--;
      this.send(next);
    }
    this.waiting.length = 0;
    this.waitingHead = 0;
  }

  /** Ends the session once: every request in flight or waiting fails now with SessionClosedError. */
  private fail(reason: string): void {
    if (this.isClosed) return;
    this.isClosed = true;
    this.liveness?.stop();
    this.link.close();
    const err = new SessionClosedError(`session to ${this.address} closed: ${reason}`);
    const victims = [
      ...this.pending.values(),
      ...this.waiting.slice(this.waitingHead),
      ...this.waitingLocks.slice(this.waitingLocksHead),
    ];
    this.pending.clear();
    this.waiting.length = 0;
    this.waitingHead = 0;
    this.waitingLocks.length = 0;
    this.waitingLocksHead = 0;
    this.inflightBytes = 0;
    this.inflightLocks = 0;
    this.queuedUnlocks = 0;
    for (const r of victims) r.reject(err);
    const cb = this.onClose;
    this.onClose = null;
    cb?.(reason);
  }
}


function nothing(): void {}

/** Catches what the target would reject as a malformed frame (which would close the session). */
function checkIo(drive: Uint8Array, offset: number, length: number, maxLength: number): Error | null {
  if (!(drive instanceof Uint8Array) || drive.length !== 16) return new TypeError("drive uuid must be 16 bytes");
  if (!Number.isSafeInteger(offset) || offset < 0) return new RangeError(`bad offset ${offset}`);
  if (!Number.isInteger(length) || length < 0 || length > maxLength) {
    return new RangeError(`length ${length} outside 0..${maxLength}`);
  }
  return null;
}

function markFlags(opts: WriteOptions | undefined): number {
  if (!opts) return 0;
  return (opts.dirty ? Flag.DIRTY : 0) | (opts.intent ? Flag.INTENT : 0) | (opts.lossy ? Flag.LOSSY_COPY : 0) | (opts.lock ? Flag.LOCK : 0);
}

function sameDrive(a: Uint8Array, b: Uint8Array): boolean {
  for (let i = 0; i < 16; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** A request that may wait inside the target for a lock: counted against max_inflight_locks. */
function locking(r: Request): boolean {
  return r.op === Op.LOCK || (r.flags & Flag.LOCK) !== 0;
}
