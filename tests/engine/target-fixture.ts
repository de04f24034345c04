/**
 * Shared set-up for the target and session tests: drives, a target listening on 127.0.0.1:0 over
 * real Bun sockets, and a logger that records what the target said (tests assert on it).
 */
import { FileStore } from "../../src/engine/runtime/file-store.ts";
import { formatDrive } from "../../src/engine/drive/format.ts";
import type { FormattedDrive } from "../../src/engine/drive/formatted-api.ts";
import { openDrive } from "../../src/engine/drive/formatted-drive.ts";
import { MemoryStore } from "../../src/engine/drive/memory-store.ts";
import type { Env, Logger } from "../../src/engine/env.ts";
import type { Listener } from "../../src/engine/net/conn.ts";
import { realEnv } from "../../src/engine/runtime/real-env.ts";
import { TargetService } from "../../src/engine/target/service.ts";
import { DriveTable } from "../../src/engine/target/drive-table.ts";
import type { Requester, TargetContext } from "../../src/engine/target/execute.ts";
import { uuidFromString, uuidToString } from "../../src/engine/uuid.ts";
import { type Session, type SessionOptions, openSession } from "../../src/engine/wire/session.ts";
import { TargetError } from "../../src/engine/wire/session-api.ts";
import type { ClusterKey } from "../../src/engine/wire/cluster-key.ts";
import { Status, Status as StatusName } from "../../src/engine/wire/header.ts";
import type { FenceVolume, HelloRequest, VolumeBinding } from "../../src/engine/wire/control.ts";
import { expect } from "bun:test";

export interface LogLine {
  level: string;
  msg: string;
  fields?: Record<string, unknown>;
}

export function recordingLogger(lines: LogLine[]): Logger {
  const rec = (level: string) => (msg: string, fields?: Record<string, unknown>) => {
    lines.push({ level, msg, fields });
  };
  return { debug: rec("debug"), info: rec("info"), warn: rec("warn"), error: rec("error") };
}

export function randomUuidString(): string {
  return uuidToString(crypto.getRandomValues(new Uint8Array(16)));
}

/**
 * A real formatted drive (formatDrive + openDrive) over a MemoryStore. With 1 MiB extents an
 * 8 MiB store has a 3 MiB data area; use dataBytes() rather than assuming a size.
 */
export async function memoryDrive(size_mib = 8): Promise<FormattedDrive> {
  const store = new MemoryStore(size_mib * 1024 * 1024);
  await formatDrive(store, { drive_uuid: randomUuidString(), extent_size_bytes: 1024 * 1024 });
  return await openDrive(store, "memory");
}

/** A memory drive whose data-area writes wait until release(); its bitmap and metadata do not. */
export async function gatedDrive(size_mib = 8, held = Infinity): Promise<{ drive: FormattedDrive; release: () => void; started: () => number }> {
  const d = await memoryDrive(size_mib);
  const gate = Promise.withResolvers<void>();
  let started = 0;
  const data = Object.create(d.data) as typeof d.data;
  data.write = async (offset, src, fua) => {
    // The first `held` writes wait for release(); later ones run at once.
    if (++started <= held) await gate.promise;
    return d.data.write(offset, src, fua);
  };
  const drive = Object.create(d, { data: { value: data } }) as FormattedDrive;
  return { drive, release: () => gate.resolve(), started: () => started };
}

/** A real formatted drive in a file (FileStore), created in dir. */
export async function fileDrive(path: string, size_mib = 8): Promise<FormattedDrive> {
  const store = await FileStore.open(path, { create_size_bytes: size_mib * 1024 * 1024 });
  await formatDrive(store, { drive_uuid: randomUuidString(), extent_size_bytes: 1024 * 1024 });
  return await openDrive(store, path);
}

/** Bytes a request may address on d. */
export function dataBytes(d: FormattedDrive): number {
  return d.info.extent_count * d.info.extent_size_bytes;
}

export interface TargetHarness {
  env: Env;
  service: TargetService;
  listener: Listener;
  address: string;
  logs: LogLine[];
  drives: FormattedDrive[];
  /**
   * A role "client" session bound to a volume (default FIXTURE_VOLUME, which owns every extent
   * of every drive). With fencing on, its client_id (default 0) is first registered on every
   * drive for that volume, with its generation (default 0) as the minimum, through the TOMA
   * session.
   */
  session(opts?: SessionOptions & { volume?: VolumeBinding | null }): Promise<Session>;
  /** A role "toma" session (one, opened on first use): FENCE, LOCK_LIST, stale unlocks. */
  toma(): Promise<Session>;
  /** A new role "admin" session: the drives' metadata and CLAIM, which a client may not touch. */
  admin(): Promise<Session>;
  stop(): void;
}

export async function startTarget(
  drives: FormattedDrive[],
  opts: { max_inflight_per_conn?: number; fencing?: boolean; writeback_ms?: number; cluster_key?: Uint8Array; payload_budget_bytes?: number } = {},
): Promise<TargetHarness> {
  const logs: LogLine[] = [];
  const env = realEnv("target-test", recordingLogger(logs));
  const service = new TargetService(env, { name: "t1", drives, ...opts });
  const listener = await env.net.listen("127.0.0.1:0", (c) => service.handle(c));
  const sessions: Session[] = [];
  const serverKey: ClusterKey | null = opts.cluster_key ? { kind: "server", key: opts.cluster_key } : null;
  let tomaSession: Promise<Session> | null = null;
  const toma = () => {
    tomaSession ??= openSession(env, listener.address, { version: 1, role: "toma", name: "test-toma" }, { cluster_key: serverKey }).then((s) => {
      sessions.push(s);
      return s;
    });
    return tomaSession;
  };
  return {
    env,
    service,
    listener,
    address: listener.address,
    logs,
    drives,
    async session(sopts) {
      const volume = sopts?.volume === undefined ? FIXTURE_VOLUME : sopts.volume;
      if (opts.fencing && volume !== null) {
        const t = await toma();
        const reg = { client_id: sopts?.client_id ?? 0, min_generation: sopts?.generation ?? 0, volumes: [volume.uuid] };
        for (const d of drives) {
          const whole = volume === FIXTURE_VOLUME ? [wholeDrive(d)] : [];
          await t.fence(uuidBytes(d), { replace: false, volumes: whole, set: [reg], remove: [] });
        }
      }
      const hello: HelloRequest = { version: 1, role: "client", name: `test-${sessions.length}` };
      if (volume !== null) hello.volume = volume;
      const s = await openSession(env, listener.address, hello, { cluster_key: serverKey, ...sopts });
      sessions.push(s);
      return s;
    },
    toma,
    async admin() {
      const s = await openSession(env, listener.address, { version: 1, role: "admin", name: `test-admin-${sessions.length}` }, { cluster_key: serverKey });
      sessions.push(s);
      return s;
    },
    stop() {
      for (const s of sessions) s.close();
      service.closeAll();
      listener.close();
    },
  };
}

/** The volume fixture sessions serve unless told otherwise: every extent of every drive. */
export const FIXTURE_VOLUME: VolumeBinding = { uuid: "0f0f0f0f-0000-4000-8000-000000000001", incarnation: 1 };

/** FIXTURE_VOLUME's entry in a drive's fence table: the whole data area. */
export function wholeDrive(d: FormattedDrive): FenceVolume {
  return { volume_uuid: FIXTURE_VOLUME.uuid, incarnation: FIXTURE_VOLUME.incarnation, extents: [[0, d.info.extent_count]] };
}

export function uuidBytes(d: FormattedDrive): Uint8Array {
  return uuidFromString(d.info.drive_uuid);
}

/** Bytes that differ per (seed, offset), so a misplaced block never compares equal. */
export function pattern(seed: number, length: number): Uint8Array<ArrayBuffer> {
  const b = new Uint8Array(length);
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    b[i] = x & 0xff;
  }
  return b;
}

/**
 * A MemoryStore whose reads or writes wait at a gate while `gated`, until the test opens it.
 * `holds` picks which operations the gate holds (by default: every write).
 */
export class GatedStore extends MemoryStore {
  gated = false;
  private waiting: (() => void)[] = [];

  constructor(
    size_bytes: number,
    private readonly holds: (op: "read" | "write", offset: number) => boolean = (op) => op === "write",
  ) {
    super(size_bytes);
  }

  private async gate(op: "read" | "write", offset: number): Promise<void> {
    if (this.gated && this.holds(op, offset)) await new Promise<void>((r) => this.waiting.push(r));
  }

  override async read(offset: number, dst: Uint8Array): Promise<void> {
    await this.gate("read", offset);
    return super.read(offset, dst);
  }

  override async write(offset: number, src: Uint8Array, fua: boolean): Promise<void> {
    await this.gate("write", offset);
    return super.write(offset, src, fua);
  }

  open(): void {
    this.gated = false;
    for (const w of this.waiting.splice(0)) w();
  }

  /** Operations waiting at the gate. */
  get blocked(): number {
    return this.waiting.length;
  }
}

/**
 * "ok", or a target's refusal as "STATUS", with " newest=N" when it names a control-plane
 * version; anything else is thrown on.
 */
export async function outcomeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return "ok";
  } catch (e) {
    if (e instanceof TargetError) return `${Status[e.status]}${e.version === null ? "" : ` newest=${e.version}`}`;
    throw e;
  }
}

/** Waits (up to about a second) until cond() holds, then asserts it. */
export async function until(cond: () => boolean): Promise<void> {
  for (let i = 0; i < 1000 && !cond(); i++) await Bun.sleep(1);
  expect(cond()).toBe(true);
}

/** "ok", or "STATUS: message" of a target's refusal (other errors are thrown). */
export async function outcome(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return "ok";
  } catch (e) {
    if (e instanceof TargetError) return `${StatusName[e.status]}: ${e.message}`;
    throw e;
  }
}

/** "ok", or the status a target refused the request with. */
export async function statusOf(p: Promise<unknown>): Promise<Status | "ok"> {
  try {
    await p;
    return "ok";
  } catch (e) {
    if (e instanceof TargetError) return e.status;
    throw e;
  }
}

/** A target context serving one drive, for calling execute() directly (no connection, no log). */
export function executeContext(drive: FormattedDrive, fencing = false): { ctx: TargetContext; table: DriveTable } {
  const table = new DriveTable();
  table.add(drive, 1);
  const silent = { debug() {}, info() {}, warn() {}, error() {} };
  const ctx: TargetContext = { drives: table, log: silent, fencing, auth: null, info: () => ({ target_name: "t", version: "1", drives: [] }) };
  return { ctx, table };
}

/** The requester execute() is called for: a client bound to FIXTURE_VOLUME, or a TOMA. */
export function executeRequester(role: "client" | "toma"): Requester {
  return { role, volume: role === "client" ? FIXTURE_VOLUME : null, ended: new AbortController().signal, park: () => false, unpark() {} };
}
