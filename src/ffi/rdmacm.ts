/**
 * The narrow librdmacm facade (rdma-core's librdmacm.so.1): reliable-connected queue pairs set up
 * the way TCP connections are (an IP address and a port; rdma_cm resolves the device and route,
 * and exchanges a few bytes of private data with the connection request and its answer).
 *
 * One event channel per process carries the events of every cm_id (connection requests on a
 * listener, a connect's progress, disconnects); its fd is non-blocking, so `CmEvents.take()`
 * never blocks: it is called when ffi/fd-watch.ts reports the fd readable. Pointers never leave
 * src/ffi: callers hold CmId objects and get events naming them.
 */
import { dlopen, FFIType, type Pointer, ptr, read } from "bun:ffi";
import { libc } from "./libc.ts";
import { Endpoint, type EndpointShape, LAYOUT as VL, CONSTANTS as VC, VerbsError } from "./verbs.ts";

/** Offsets (x86-64), checked against <rdma/rdma_cma.h> by tests/ffi/verbs-layout.test.ts. */
export const LAYOUT = {
  "rdma_cm_id.verbs": 0,
  "rdma_cm_id.qp": 24,
  "rdma_cm_id.route.addr.dst_addr": 160,
  "sizeof rdma_cm_event": 80,
  "rdma_cm_event.id": 0,
  "rdma_cm_event.listen_id": 8,
  "rdma_cm_event.event": 16,
  "rdma_cm_event.status": 20,
  "rdma_cm_event.param.conn.private_data": 24,
  "rdma_cm_event.param.conn.private_data_len": 32,
  "sizeof rdma_conn_param": 24,
  "rdma_conn_param.private_data": 0,
  "rdma_conn_param.private_data_len": 8,
  "rdma_conn_param.responder_resources": 9,
  "rdma_conn_param.initiator_depth": 10,
  "rdma_conn_param.retry_count": 12,
  "rdma_conn_param.rnr_retry_count": 13,
  "rdma_event_channel.fd": 0,
} as const;

/** enum rdma_cm_event_type and RDMA_PS_TCP, checked the same way. */
export const EVENTS = {
  RDMA_CM_EVENT_ADDR_RESOLVED: 0,
  RDMA_CM_EVENT_ADDR_ERROR: 1,
  RDMA_CM_EVENT_ROUTE_RESOLVED: 2,
  RDMA_CM_EVENT_ROUTE_ERROR: 3,
  RDMA_CM_EVENT_CONNECT_REQUEST: 4,
  RDMA_CM_EVENT_CONNECT_RESPONSE: 5,
  RDMA_CM_EVENT_CONNECT_ERROR: 6,
  RDMA_CM_EVENT_UNREACHABLE: 7,
  RDMA_CM_EVENT_REJECTED: 8,
  RDMA_CM_EVENT_ESTABLISHED: 9,
  RDMA_CM_EVENT_DISCONNECTED: 10,
  RDMA_CM_EVENT_DEVICE_REMOVAL: 11,
  RDMA_CM_EVENT_ADDR_CHANGE: 14,
  RDMA_CM_EVENT_TIMEWAIT_EXIT: 15,
  RDMA_PS_TCP: 262,
} as const;

const L = LAYOUT;
const E = EVENTS;

const SYMBOLS = {
  rdma_create_event_channel: { args: [], returns: FFIType.ptr },
  rdma_create_id: { args: [FFIType.ptr, FFIType.ptr, FFIType.ptr, FFIType.i32], returns: FFIType.i32 },
  rdma_destroy_id: { args: [FFIType.ptr], returns: FFIType.i32 },
  rdma_bind_addr: { args: [FFIType.ptr, FFIType.ptr], returns: FFIType.i32 },
  rdma_listen: { args: [FFIType.ptr, FFIType.i32], returns: FFIType.i32 },
  rdma_resolve_addr: { args: [FFIType.ptr, FFIType.ptr, FFIType.ptr, FFIType.i32], returns: FFIType.i32 },
  rdma_resolve_route: { args: [FFIType.ptr, FFIType.i32], returns: FFIType.i32 },
  rdma_create_qp: { args: [FFIType.ptr, FFIType.ptr, FFIType.ptr], returns: FFIType.i32 },
  rdma_destroy_qp: { args: [FFIType.ptr], returns: FFIType.void },
  rdma_connect: { args: [FFIType.ptr, FFIType.ptr], returns: FFIType.i32 },
  rdma_accept: { args: [FFIType.ptr, FFIType.ptr], returns: FFIType.i32 },
  rdma_reject: { args: [FFIType.ptr, FFIType.ptr, FFIType.u8], returns: FFIType.i32 },
  rdma_disconnect: { args: [FFIType.ptr], returns: FFIType.i32 },
  rdma_get_cm_event: { args: [FFIType.ptr, FFIType.ptr], returns: FFIType.i32 },
  rdma_ack_cm_event: { args: [FFIType.ptr], returns: FFIType.i32 },
  rdma_get_src_port: { args: [FFIType.ptr], returns: FFIType.u16 },
  rdma_event_str: { args: [FFIType.i32], returns: FFIType.cstring },
  __errno_location: { args: [], returns: FFIType.ptr },
} as const;

/**
 * The symbols, typed loosely: pointers are plain numbers in this file (addresses below 2^53, as on
 * every Linux target), which bun:ffi accepts for FFIType.ptr.
 */
type Lib = { symbols: { [K in keyof typeof SYMBOLS]: (...args: unknown[]) => any }; close(): void };
let lib: Lib | null | undefined;
let loadError = "";

function load(): Lib {
  if (lib === undefined) {
    try {
      lib = dlopen("librdmacm.so.1", SYMBOLS) as unknown as Lib;
    } catch (e) {
      lib = null;
      loadError = (e as Error).message.split("\n")[0]!;
    }
  }
  if (lib === null) throw new VerbsError(`librdmacm cannot be loaded (${loadError}): install librdmacm1`);
  return lib;
}

function errno(l: Lib): number {
  const p = l.symbols.__errno_location();
  return p === null ? 0 : read.i32(p as Pointer, 0);
}

export type CmEventType =
  | "addr_resolved"
  | "route_resolved"
  | "connect_request"
  | "established"
  | "disconnected"
  | "error"
  | "other";

export interface CmEvent {
  type: CmEventType;
  /** The id the event is about (for connect_request: the new id of the incoming connection). */
  id: CmId;
  /** connect_request: the listener it arrived on. */
  listener: CmId | null;
  /** connect_request, established: the peer's private data (a copy). */
  private_data: Uint8Array;
  /** error: what failed, for people ("REJECTED", "UNREACHABLE: status -110", …). */
  error: string;
}

/** A sockaddr_in for an IPv4 address "a.b.c.d" and a port. */
function sockaddrIn(ip: string, port: number): Uint8Array {
  const parts = ip.split(".").map(Number);
  if (parts.length !== 4 || parts.some((p) => !Number.isInteger(p) || p < 0 || p > 255)) {
    throw new VerbsError(`RDMA needs an IPv4 address, got '${ip}'`);
  }
  const sa = new Uint8Array(16);
  sa[0] = 2; // AF_INET (little-endian u16)
  sa[2] = port >>> 8; // network byte order
  sa[3] = port & 0xff;
  sa.set(parts, 4);
  return sa;
}

/** The process's rdma_cm event channel and the ids on it. */
export class CmEvents {
  readonly fd: number;
  private readonly l: Lib;
  private readonly channel: number;
  readonly ids = new Map<number, CmId>();
  private readonly out = new Uint32Array(new ArrayBuffer(8));

  constructor() {
    this.l = load();
    const ch = this.l.symbols.rdma_create_event_channel();
    if (!ch) throw new VerbsError(`rdma_create_event_channel failed: errno ${errno(this.l)}`);
    this.channel = ch;
    this.fd = read.i32(ch, L["rdma_event_channel.fd"]);
    const c = libc();
    if (c === null || c.setNonBlocking(this.fd) !== 0) throw new VerbsError("cannot make the rdma_cm event channel non-blocking");
  }

  /** A new id on this channel (RDMA_PS_TCP: reliable connected). */
  createId(): CmId {
    const out = new Uint32Array(2);
    if (this.l.symbols.rdma_create_id(this.channel, ptr(out), null, E.RDMA_PS_TCP) !== 0) {
      throw new VerbsError(`rdma_create_id failed: errno ${errno(this.l)}`);
    }
    return this.adopt(out[0]! + out[1]! * 0x1_0000_0000);
  }

  private adopt(p: number): CmId {
    const id = new CmId(this.l, this, p);
    this.ids.set(p, id);
    return id;
  }

  /** The next event, or null when none is waiting (never blocks). Copied, then acknowledged. */
  take(): CmEvent | null {
    const l = this.l;
    if (l.symbols.rdma_get_cm_event(this.channel, ptr(this.out)) !== 0) return null;
    const ev = this.out[0]! + this.out[1]! * 0x1_0000_0000;
    const type = read.i32(ev, L["rdma_cm_event.event"]);
    const status = read.i32(ev, L["rdma_cm_event.status"]);
    const idp = read.ptr(ev, L["rdma_cm_event.id"]);
    const listenp = read.ptr(ev, L["rdma_cm_event.listen_id"]);
    let private_data: Uint8Array = new Uint8Array(0);
    if (type === E.RDMA_CM_EVENT_CONNECT_REQUEST || type === E.RDMA_CM_EVENT_ESTABLISHED) {
      const pd = read.ptr(ev, L["rdma_cm_event.param.conn.private_data"]);
      const n = read.u8(ev, L["rdma_cm_event.param.conn.private_data_len"]);
      if (pd && n > 0) {
        private_data = new Uint8Array(n);
        for (let i = 0; i < n; i++) private_data[i] = read.u8(pd, i);
      }
    }
    const listener = listenp ? (this.ids.get(listenp) ?? null) : null;
    const id = type === E.RDMA_CM_EVENT_CONNECT_REQUEST ? this.adopt(idp) : (this.ids.get(idp) ?? this.adopt(idp));
    const name = String(l.symbols.rdma_event_str(type));
    l.symbols.rdma_ack_cm_event(ev);
    let t: CmEventType;
    switch (type) {
      case E.RDMA_CM_EVENT_ADDR_RESOLVED: t = "addr_resolved"; break;
      case E.RDMA_CM_EVENT_ROUTE_RESOLVED: t = "route_resolved"; break;
      case E.RDMA_CM_EVENT_CONNECT_REQUEST: t = "connect_request"; break;
      case E.RDMA_CM_EVENT_ESTABLISHED: t = "established"; break;
      case E.RDMA_CM_EVENT_DISCONNECTED:
      case E.RDMA_CM_EVENT_DEVICE_REMOVAL: t = "disconnected"; break;
      case E.RDMA_CM_EVENT_ADDR_ERROR:
      case E.RDMA_CM_EVENT_ROUTE_ERROR:
      case E.RDMA_CM_EVENT_CONNECT_ERROR:
      case E.RDMA_CM_EVENT_UNREACHABLE:
      case E.RDMA_CM_EVENT_REJECTED: t = "error"; break;
      default: t = "other";
    }
    return { type: t, id, listener, private_data, error: t === "error" ? `${name} (status ${status})` : name };
  }
}

/** One rdma_cm id: a listener, or one connection with its Endpoint (queue pair, buffers). */
export class CmId {
  endpoint: Endpoint | null = null;
  private destroyed = false;
  private hasQp = false;

  constructor(
    private readonly l: Lib,
    private readonly events: CmEvents,
    private readonly p: number,
  ) {}

  private check(r: number, what: string): void {
    if (r !== 0) throw new VerbsError(`${what} failed: errno ${errno(this.l)}`);
  }

  /** Binds to an IPv4 address ("0.0.0.0": every RDMA device) and port, and listens. */
  listen(ip: string, port: number, backlog = 64): void {
    this.check(this.l.symbols.rdma_bind_addr(this.p, sockaddrIn(ip, port)), `rdma_bind_addr ${ip}:${port}`);
    this.check(this.l.symbols.rdma_listen(this.p, backlog), "rdma_listen");
  }

  /** The peer's IPv4 address ("a.b.c.d"), from the id's route. */
  peerAddress(): string {
    const at = L["rdma_cm_id.route.addr.dst_addr"];
    return [4, 5, 6, 7].map((i) => read.u8(this.p as Pointer, at + i)).join(".");
  }

  /** The port bound (after listen; a port 0 resolved). */
  get port(): number {
    const be = this.l.symbols.rdma_get_src_port(this.p) as number; // network byte order
    return ((be & 0xff) << 8) | (be >>> 8);
  }

  /** Starts resolving the peer's address (an addr_resolved or error event follows). */
  resolveAddr(ip: string, port: number, timeout_ms: number): void {
    this.check(this.l.symbols.rdma_resolve_addr(this.p, null, sockaddrIn(ip, port), timeout_ms), `rdma_resolve_addr ${ip}:${port}`);
  }

  /** Starts resolving the route (a route_resolved or error event follows). */
  resolveRoute(timeout_ms: number): void {
    this.check(this.l.symbols.rdma_resolve_route(this.p, timeout_ms), "rdma_resolve_route");
  }

  /**
   * Builds the endpoint (PD, CQ, channel, registered slots) on the device this id resolved to,
   * and an RC queue pair on it. Call before connect/accept, then post the receives.
   */
  createEndpoint(shape: EndpointShape): Endpoint {
    const context = read.ptr(this.p, L["rdma_cm_id.verbs"]);
    if (!context) throw new VerbsError("the rdma_cm id has no device yet");
    const ep = new Endpoint(context, shape);
    this.endpoint = ep;
    const c = libc();
    if (c === null || c.setNonBlocking(ep.channel_fd) !== 0) throw new VerbsError("cannot make the completion channel non-blocking");
    const { pd, cq } = ep.resources();
    const a = new Uint32Array(new ArrayBuffer(VL["sizeof ibv_qp_init_attr"]));
    const put = (off: number, v: number) => {
      a[off / 4] = v >>> 0;
      a[off / 4 + 1] = Math.floor(v / 0x1_0000_0000);
    };
    put(VL["ibv_qp_init_attr.send_cq"], cq);
    put(VL["ibv_qp_init_attr.recv_cq"], cq);
    a[VL["ibv_qp_init_attr.cap.max_send_wr"] / 4] = shape.send_slots;
    a[VL["ibv_qp_init_attr.cap.max_recv_wr"] / 4] = shape.recv_slots;
    a[VL["ibv_qp_init_attr.cap.max_send_sge"] / 4] = 1;
    a[VL["ibv_qp_init_attr.cap.max_recv_sge"] / 4] = 1;
    a[VL["ibv_qp_init_attr.qp_type"] / 4] = VC.IBV_QPT_RC;
    this.check(this.l.symbols.rdma_create_qp(this.p, pd, ptr(a)), "rdma_create_qp");
    this.hasQp = true;
    ep.setQp(read.ptr(this.p, L["rdma_cm_id.qp"]));
    return ep;
  }

  /** Connects (the peer's answer comes as an established or error event). */
  connect(private_data: Uint8Array): void {
    this.check(this.l.symbols.rdma_connect(this.p, connParam(private_data)), "rdma_connect");
  }

  /** Accepts an incoming connection request (an established event follows). */
  accept(private_data: Uint8Array): void {
    this.check(this.l.symbols.rdma_accept(this.p, connParam(private_data)), "rdma_accept");
  }

  /** Refuses an incoming connection request. */
  reject(): void {
    this.l.symbols.rdma_reject(this.p, null, 0);
  }

  /** Starts an orderly disconnect (both sides get a disconnected event). */
  disconnect(): void {
    if (!this.destroyed) this.l.symbols.rdma_disconnect(this.p);
  }

  /** Frees the queue pair, the endpoint and the id. Idempotent. */
  destroy(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    if (this.hasQp) this.l.symbols.rdma_destroy_qp(this.p);
    this.endpoint?.destroy();
    this.events.ids.delete(this.p);
    this.l.symbols.rdma_destroy_id(this.p);
  }
}

/**
 * struct rdma_conn_param with our private data (≤ 56 bytes for RDMA_PS_TCP). librdmacm copies the
 * private data during the call; the copy made here is kept referenced (connParamKeep) so the GC
 * cannot take it between ptr() and the call.
 */
function connParam(private_data: Uint8Array): Uint8Array {
  if (private_data.length > 56) throw new VerbsError("rdma_cm private data is limited to 56 bytes");
  const p = new Uint8Array(L["sizeof rdma_conn_param"]);
  const data = private_data.slice();
  const addr = ptr(data);
  const v = new Uint32Array(p.buffer);
  v[0] = addr >>> 0;
  v[1] = Math.floor(addr / 0x1_0000_0000);
  p[L["rdma_conn_param.private_data_len"]] = data.length;
  p[L["rdma_conn_param.responder_resources"]] = 1;
  p[L["rdma_conn_param.initiator_depth"]] = 1;
  p[L["rdma_conn_param.retry_count"]] = 7;
  p[L["rdma_conn_param.rnr_retry_count"]] = 7; // 7: retry forever on receiver-not-ready
  connParamKeep = data;
  return p;
}
let connParamKeep: Uint8Array | null = null;
