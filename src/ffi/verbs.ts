/**
 * The narrow libibverbs facade (rdma-core's libibverbs.so.1): the devices of this host, and an
 * Endpoint = one reliable-connected queue pair's resources: a protection domain, one completion
 * queue with its completion channel, and two registered buffer areas cut into fixed slots (send
 * and receive), allocated and registered once. Pointers never leave src/ffi: callers get slot
 * views (Uint8Array), slot numbers, counts and errors.
 *
 * `ibv_post_send`, `ibv_post_recv`, `ibv_poll_cq` and `ibv_req_notify_cq` are static inline
 * functions in <infiniband/verbs.h> that call through the context's ops table
 * (`qp->context->ops.post_send(...)`): there is no symbol to dlopen, so they are called through
 * the function pointers read from `struct ibv_context` (bun:ffi CFunction), once per context.
 *
 * Struct offsets are those of x86-64 Linux with rdma-core's headers; tests/ffi/verbs-layout.test.ts
 * checks every one of them against <infiniband/verbs.h> and <rdma/rdma_cma.h> with a C compiler.
 *
 * Buffers: allocated as JavaScript ArrayBuffers (page-aligned views), not natively, and kept
 * referenced by the Endpoint for as long as they are registered. JSC does not move ArrayBuffer
 * storage, and a view handed out can never outlive the memory it points into (a natively
 * allocated area freed at close could be, by a payload view someone kept).
 */
import { CFunction, dlopen, FFIType, type Pointer, ptr, read } from "bun:ffi";
import { alignedBuffer } from "./libc.ts";

/** Offsets and sizes (x86-64), checked against the headers by tests/ffi/verbs-layout.test.ts. */
export const LAYOUT = {
  "ibv_context.ops.poll_cq": 96,
  "ibv_context.ops.req_notify_cq": 104,
  "ibv_context.ops.post_send": 208,
  "ibv_context.ops.post_recv": 216,
  "ibv_cq.context": 0,
  "ibv_qp.context": 0,
  "ibv_qp.qp_num": 52,
  "ibv_comp_channel.fd": 8,
  "ibv_mr.lkey": 36,
  "sizeof ibv_sge": 16,
  "ibv_sge.addr": 0,
  "ibv_sge.length": 8,
  "ibv_sge.lkey": 12,
  "sizeof ibv_send_wr": 128,
  "ibv_send_wr.wr_id": 0,
  "ibv_send_wr.next": 8,
  "ibv_send_wr.sg_list": 16,
  "ibv_send_wr.num_sge": 24,
  "ibv_send_wr.opcode": 28,
  "ibv_send_wr.send_flags": 32,
  "sizeof ibv_recv_wr": 32,
  "ibv_recv_wr.wr_id": 0,
  "ibv_recv_wr.next": 8,
  "ibv_recv_wr.sg_list": 16,
  "ibv_recv_wr.num_sge": 24,
  "sizeof ibv_wc": 48,
  "ibv_wc.wr_id": 0,
  "ibv_wc.status": 8,
  "ibv_wc.opcode": 12,
  "ibv_wc.byte_len": 20,
  "sizeof ibv_qp_init_attr": 64,
  "ibv_qp_init_attr.send_cq": 8,
  "ibv_qp_init_attr.recv_cq": 16,
  "ibv_qp_init_attr.cap.max_send_wr": 32,
  "ibv_qp_init_attr.cap.max_recv_wr": 36,
  "ibv_qp_init_attr.cap.max_send_sge": 40,
  "ibv_qp_init_attr.cap.max_recv_sge": 44,
  "ibv_qp_init_attr.cap.max_inline_data": 48,
  "ibv_qp_init_attr.qp_type": 52,
  "ibv_qp_init_attr.sq_sig_all": 56,
} as const;

/** Enum values from <infiniband/verbs.h>, checked the same way. */
export const CONSTANTS = {
  IBV_WR_SEND: 2,
  IBV_SEND_SIGNALED: 2,
  IBV_WC_SUCCESS: 0,
  IBV_WC_WR_FLUSH_ERR: 5,
  IBV_WC_SEND: 0,
  IBV_WC_RECV: 128,
  IBV_QPT_RC: 2,
  IBV_ACCESS_LOCAL_WRITE: 1,
} as const;

const L = LAYOUT;
const C = CONSTANTS;

const SYMBOLS = {
  ibv_get_device_list: { args: [FFIType.ptr], returns: FFIType.ptr },
  ibv_free_device_list: { args: [FFIType.ptr], returns: FFIType.void },
  ibv_get_device_name: { args: [FFIType.ptr], returns: FFIType.cstring },
  ibv_alloc_pd: { args: [FFIType.ptr], returns: FFIType.ptr },
  ibv_dealloc_pd: { args: [FFIType.ptr], returns: FFIType.i32 },
  ibv_reg_mr: { args: [FFIType.ptr, FFIType.ptr, FFIType.u64, FFIType.i32], returns: FFIType.ptr },
  ibv_dereg_mr: { args: [FFIType.ptr], returns: FFIType.i32 },
  ibv_create_comp_channel: { args: [FFIType.ptr], returns: FFIType.ptr },
  ibv_destroy_comp_channel: { args: [FFIType.ptr], returns: FFIType.i32 },
  ibv_create_cq: { args: [FFIType.ptr, FFIType.i32, FFIType.ptr, FFIType.ptr, FFIType.i32], returns: FFIType.ptr },
  ibv_destroy_cq: { args: [FFIType.ptr], returns: FFIType.i32 },
  ibv_get_cq_event: { args: [FFIType.ptr, FFIType.ptr, FFIType.ptr], returns: FFIType.i32 },
  ibv_ack_cq_events: { args: [FFIType.ptr, FFIType.u32], returns: FFIType.void },
  __errno_location: { args: [], returns: FFIType.ptr },
} as const;

/**
 * The symbols, typed loosely: pointers are plain numbers in this file (addresses below 2^53, as on
 * every Linux target), which bun:ffi accepts for FFIType.ptr.
 */
type Lib = { symbols: { [K in keyof typeof SYMBOLS]: (...args: unknown[]) => any }; close(): void };
let lib: Lib | null | undefined;
let loadError = "";

/** The library, or null (loadProblem() says why). Loaded once. */
export function loadVerbs(): Lib | null {
  if (lib !== undefined) return lib;
  try {
    lib = dlopen("libibverbs.so.1", SYMBOLS) as unknown as Lib;
  } catch (e) {
    lib = null;
    loadError = (e as Error).message;
  }
  return lib;
}

export class VerbsError extends Error {}

/** errno of the last failed call on this thread, read right after it. */
export function lastErrno(l: Lib): number {
  const p = l.symbols.__errno_location();
  return p === null ? 0 : read.i32(p as Pointer, 0);
}

/**
 * Why this host cannot do RDMA, or null when it has at least one device. For status output:
 * "libibverbs is not installed …", "no RDMA device on this host".
 */
export function rdmaProblem(): string | null {
  const l = loadVerbs();
  if (l === null) {
    return `libibverbs cannot be loaded (${loadError.split("\n")[0]}): install libibverbs1, librdmacm1 and ibverbs-providers`;
  }
  return devices().length === 0 ? "no RDMA device on this host" : null;
}

/** Names of this host's RDMA devices (e.g. rxe0, mlx5_0); [] without libibverbs. */
export function devices(): string[] {
  const l = loadVerbs();
  if (l === null) return [];
  const count = new Int32Array(1);
  const list = l.symbols.ibv_get_device_list(ptr(count));
  if (list === null) return [];
  const names: string[] = [];
  for (let i = 0; i < count[0]!; i++) {
    const dev = read.ptr(list, i * 8);
    if (dev) names.push(String(l.symbols.ibv_get_device_name(dev)));
  }
  l.symbols.ibv_free_device_list(list);
  return names;
}

/** The inline data-path calls of one ibv_context, bound once from its ops table. */
interface Ops {
  poll_cq: (cq: number, n: number, wc: number) => number;
  req_notify_cq: (cq: number, solicited_only: number) => number;
  post_send: (qp: number, wr: number, bad: number) => number;
  post_recv: (qp: number, wr: number, bad: number) => number;
}

const opsByContext = new Map<number, Ops>();

function opsOf(context: number): Ops {
  let ops = opsByContext.get(context);
  if (ops !== undefined) return ops;
  const fn = (off: number, args: FFIType[]) => {
    const p = read.ptr(context, off);
    if (!p) throw new VerbsError(`ibv_context has no function at offset ${off}`);
    return CFunction({ ptr: p as Pointer, args, returns: FFIType.i32 }) as unknown as (...a: number[]) => number;
  };
  ops = {
    poll_cq: fn(L["ibv_context.ops.poll_cq"], [FFIType.ptr, FFIType.i32, FFIType.ptr]),
    req_notify_cq: fn(L["ibv_context.ops.req_notify_cq"], [FFIType.ptr, FFIType.i32]),
    post_send: fn(L["ibv_context.ops.post_send"], [FFIType.ptr, FFIType.ptr, FFIType.ptr]),
    post_recv: fn(L["ibv_context.ops.post_recv"], [FFIType.ptr, FFIType.ptr, FFIType.ptr]),
  };
  opsByContext.set(context, ops);
  return ops;
}

/** Writes a pointer-sized value (< 2^53) as two 32-bit halves: no BigInt per call. */
function setPtr(u32: Uint32Array, index: number, value: number): void {
  u32[index] = value >>> 0;
  u32[index + 1] = Math.floor(value / 0x1_0000_0000);
}

export interface EndpointShape {
  send_slots: number;
  recv_slots: number;
  slot_bytes: number;
}

/** One completion: which slot, whether it was a receive, its status, and bytes received. */
export interface Completions {
  /** Slot of the i-th completion. */
  slot: Int32Array;
  /** 1 for a receive, 0 for a send. */
  recv: Uint8Array;
  /** ibv_wc_status (0 = success). */
  status: Int32Array;
  byte_len: Int32Array;
}

/** wr_id bit that marks a receive (slots are below it). */
const RECV_BIT = 0x1_0000;
/** Completions reaped per ibv_poll_cq call. */
export const POLL_BATCH = 32;

export function newCompletions(): Completions {
  return {
    slot: new Int32Array(POLL_BATCH),
    recv: new Uint8Array(POLL_BATCH),
    status: new Int32Array(POLL_BATCH),
    byte_len: new Int32Array(POLL_BATCH),
  };
}

/**
 * Native resources of one connection's queue pair, built on the device context rdma_cm picked.
 * Created by rdmacm.ts (which owns the cm_id and the QP itself); the queue pair pointer is set
 * by it once rdma_create_qp succeeded.
 */
export class Endpoint {
  readonly send: Uint8Array;
  readonly recv: Uint8Array;
  readonly slot_bytes: number;
  readonly send_slots: number;
  readonly recv_slots: number;
  /** The completion channel's fd (watched while idle: ffi/fd-watch.ts). */
  readonly channel_fd: number;
  private readonly l: Lib;
  private readonly ops: Ops;
  private pd = 0;
  private channel = 0;
  private cq_ = 0;
  private sendMr = 0;
  private recvMr = 0;
  private sendBase = 0;
  private recvBase = 0;
  private sendKey = 0;
  private recvKey = 0;
  private qp_ = 0;
  private destroyed = false;
  /** Scratch work requests, reused: posting is synchronous. */
  private readonly sendWr = new Uint32Array(new ArrayBuffer(L["sizeof ibv_send_wr"] + L["sizeof ibv_sge"] + 8));
  private readonly recvWr = new Uint32Array(new ArrayBuffer(L["sizeof ibv_recv_wr"] + L["sizeof ibv_sge"] + 8));
  private readonly sendWrPtr: number;
  private readonly recvWrPtr: number;
  private readonly wc = new Uint32Array(new ArrayBuffer(POLL_BATCH * L["sizeof ibv_wc"]));
  private readonly wcPtr: number;
  private readonly cqOut = new Uint32Array(new ArrayBuffer(16));

  /** `context` is the cm_id's ibv_context (rdmacm.ts). */
  constructor(context: number, shape: EndpointShape) {
    const l = loadVerbs();
    if (l === null) throw new VerbsError(rdmaProblem() ?? "libibverbs is not available");
    this.l = l;
    this.ops = opsOf(context);
    this.slot_bytes = shape.slot_bytes;
    this.send_slots = shape.send_slots;
    this.recv_slots = shape.recv_slots;
    if (shape.send_slots + shape.recv_slots >= RECV_BIT) throw new VerbsError("too many slots");
    this.send = alignedBuffer(shape.send_slots * shape.slot_bytes);
    this.recv = alignedBuffer(shape.recv_slots * shape.slot_bytes);
    this.sendWrPtr = ptr(this.sendWr);
    this.recvWrPtr = ptr(this.recvWr);
    this.wcPtr = ptr(this.wc);
    try {
      this.pd = this.check(l.symbols.ibv_alloc_pd(context), "ibv_alloc_pd");
      this.channel = this.check(l.symbols.ibv_create_comp_channel(context), "ibv_create_comp_channel");
      const cqe = shape.send_slots + shape.recv_slots;
      this.cq_ = this.check(l.symbols.ibv_create_cq(context, cqe, null, this.channel, 0), "ibv_create_cq");
      this.sendBase = ptr(this.send);
      this.recvBase = ptr(this.recv);
      this.sendMr = this.check(l.symbols.ibv_reg_mr(this.pd, this.sendBase, this.send.length, C.IBV_ACCESS_LOCAL_WRITE), "ibv_reg_mr (send)");
      this.recvMr = this.check(l.symbols.ibv_reg_mr(this.pd, this.recvBase, this.recv.length, C.IBV_ACCESS_LOCAL_WRITE), "ibv_reg_mr (receive)");
      this.sendKey = read.u32(this.sendMr, L["ibv_mr.lkey"]);
      this.recvKey = read.u32(this.recvMr, L["ibv_mr.lkey"]);
    } catch (e) {
      this.destroy();
      throw e;
    }
    this.channel_fd = read.i32(this.channel, L["ibv_comp_channel.fd"]);
  }

  private check(p: number | null, what: string): number {
    if (!p) throw new VerbsError(`${what} failed: errno ${lastErrno(this.l)}`);
    return p;
  }

  /** For rdmacm.ts: the PD and CQ the queue pair is created on. */
  resources(): { pd: number; cq: number } {
    return { pd: this.pd, cq: this.cq_ };
  }

  /** For rdmacm.ts: the queue pair created on this endpoint. */
  setQp(qp: number): void {
    this.qp_ = qp;
  }

  sendSlot(i: number): Uint8Array {
    return this.send.subarray(i * this.slot_bytes, (i + 1) * this.slot_bytes);
  }

  recvSlot(i: number): Uint8Array {
    return this.recv.subarray(i * this.slot_bytes, (i + 1) * this.slot_bytes);
  }

  /** Posts receive slot i. Throws VerbsError (the connection is then unusable). */
  postRecv(i: number): void {
    const w = this.recvWr;
    const sge = L["sizeof ibv_recv_wr"] / 4;
    w.fill(0);
    setPtr(w, L["ibv_recv_wr.wr_id"] / 4, RECV_BIT | i);
    setPtr(w, L["ibv_recv_wr.sg_list"] / 4, this.recvWrPtr + L["sizeof ibv_recv_wr"]);
    w[L["ibv_recv_wr.num_sge"] / 4] = 1;
    setPtr(w, sge + L["ibv_sge.addr"] / 4, this.recvBase + i * this.slot_bytes);
    w[sge + L["ibv_sge.length"] / 4] = this.slot_bytes;
    w[sge + L["ibv_sge.lkey"] / 4] = this.recvKey;
    const bad = this.recvWrPtr + L["sizeof ibv_recv_wr"] + L["sizeof ibv_sge"];
    const r = this.ops.post_recv(this.qp_, this.recvWrPtr, bad);
    if (r !== 0) throw new VerbsError(`ibv_post_recv failed: ${r}`);
  }

  /** Posts the first `length` bytes of send slot i as one signaled SEND. */
  postSend(i: number, length: number): void {
    const w = this.sendWr;
    const sge = L["sizeof ibv_send_wr"] / 4;
    w.fill(0);
    setPtr(w, L["ibv_send_wr.wr_id"] / 4, i);
    setPtr(w, L["ibv_send_wr.sg_list"] / 4, this.sendWrPtr + L["sizeof ibv_send_wr"]);
    w[L["ibv_send_wr.num_sge"] / 4] = 1;
    w[L["ibv_send_wr.opcode"] / 4] = C.IBV_WR_SEND;
    w[L["ibv_send_wr.send_flags"] / 4] = C.IBV_SEND_SIGNALED;
    setPtr(w, sge + L["ibv_sge.addr"] / 4, this.sendBase + i * this.slot_bytes);
    w[sge + L["ibv_sge.length"] / 4] = length;
    w[sge + L["ibv_sge.lkey"] / 4] = this.sendKey;
    const bad = this.sendWrPtr + L["sizeof ibv_send_wr"] + L["sizeof ibv_sge"];
    const r = this.ops.post_send(this.qp_, this.sendWrPtr, bad);
    if (r !== 0) throw new VerbsError(`ibv_post_send failed: ${r}`);
  }

  /** Reaps up to POLL_BATCH completions into `out`; returns how many (0: none). */
  poll(out: Completions): number {
    if (this.destroyed) return 0;
    const n = this.ops.poll_cq(this.cq_, POLL_BATCH, this.wcPtr);
    if (n < 0) throw new VerbsError(`ibv_poll_cq failed: ${n}`);
    const wc = this.wc;
    const stride = L["sizeof ibv_wc"] / 4;
    for (let i = 0; i < n; i++) {
      const id = wc[i * stride + L["ibv_wc.wr_id"] / 4]!;
      out.recv[i] = (id & RECV_BIT) !== 0 ? 1 : 0;
      out.slot[i] = id & (RECV_BIT - 1);
      out.status[i] = wc[i * stride + L["ibv_wc.status"] / 4]!;
      out.byte_len[i] = wc[i * stride + L["ibv_wc.byte_len"] / 4]!;
    }
    return n;
  }

  /** Asks for an event on the completion channel at the next completion (then poll once more). */
  arm(): void {
    const r = this.ops.req_notify_cq(this.cq_, 0);
    if (r !== 0) throw new VerbsError(`ibv_req_notify_cq failed: ${r}`);
  }

  /**
   * Takes the events waiting on the completion channel (its fd is non-blocking: rdmacm.ts sets
   * it) and acknowledges them; returns how many there were.
   */
  takeEvents(): number {
    let n = 0;
    const out = ptr(this.cqOut);
    while (this.l.symbols.ibv_get_cq_event(this.channel, out, out + 8) === 0) n++;
    if (n > 0) this.l.symbols.ibv_ack_cq_events(this.cq_, n);
    return n;
  }

  /**
   * Frees the CQ, channel, MRs and PD (the QP must be destroyed first: rdmacm.ts). Idempotent.
   * The buffers stay valid as JavaScript memory; the device no longer touches them.
   */
  destroy(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    const l = this.l;
    if (this.cq_) l.symbols.ibv_destroy_cq(this.cq_);
    if (this.channel) l.symbols.ibv_destroy_comp_channel(this.channel);
    if (this.sendMr) l.symbols.ibv_dereg_mr(this.sendMr);
    if (this.recvMr) l.symbols.ibv_dereg_mr(this.recvMr);
    if (this.pd) l.symbols.ibv_dealloc_pd(this.pd);
    this.cq_ = this.channel = this.sendMr = this.recvMr = this.pd = 0;
  }
}
