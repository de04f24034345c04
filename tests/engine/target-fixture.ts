/**
 * Shared set-up for the target and session tests: drives, a target listening on 127.0.0.1:0 over
 * real Bun sockets, and a logger that records what the target said (tests assert on it).
 */
import type { FormattedDrive } from "../../src/engine/drive/formatted-api.ts";
import { AlreadyClaimedError, StaleGenerationError } from "../../src/engine/drive/formatted-api.ts";
import { MemoryStore } from "../../src/engine/drive/memory-store.ts";
import type { Env, Logger } from "../../src/engine/env.ts";
import type { Listener } from "../../src/engine/net/conn.ts";
import { realEnv } from "../../src/engine/runtime/real-env.ts";
import { TargetService } from "../../src/engine/target/service.ts";
import { NIL_UUID, uuidFromString, uuidToString } from "../../src/engine/uuid.ts";
import type { DriveInfo, MetaSlot } from "../../src/engine/wire/control.ts";
import { type Session, type SessionOptions, openSession } from "../../src/engine/wire/session.ts";

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
 * A FormattedDrive over a MemoryStore, standing in for formatDrive() until it lands: the data
 * area is the whole store; metadata slots and the claim live in RAM with the interface's errors.
 */
export function memoryDrive(extent_size_bytes = 64 * 1024, extent_count = 16): FormattedDrive {
  const data = new MemoryStore(extent_size_bytes * extent_count);
  const info: DriveInfo = {
    drive_uuid: randomUuidString(),
    cluster_uuid: NIL_UUID,
    path: "memory",
    size_bytes: data.size_bytes + 1024 * 1024,
    data_offset_bytes: 1024 * 1024,
    extent_size_bytes,
    extent_count,
    format_version: 1,
    state: "ok",
  };
  let slot: MetaSlot = { generation: 0, payload: null };
  return {
    info,
    data,
    async metaRead() {
      return { generation: slot.generation, payload: slot.payload?.slice() ?? null };
    },
    async metaWrite(generation, payload) {
      if (generation <= slot.generation) {
        throw new StaleGenerationError(`generation ${generation} is not newer than ${slot.generation}`);
      }
      slot = { generation, payload: payload.slice() };
    },
    async claim(cluster_uuid) {
      if (info.cluster_uuid !== NIL_UUID) throw new AlreadyClaimedError(`claimed by ${info.cluster_uuid}`);
      info.cluster_uuid = cluster_uuid;
    },
    async close() {
      await data.close();
    },
  };
}

export interface TargetHarness {
  env: Env;
  service: TargetService;
  listener: Listener;
  address: string;
  logs: LogLine[];
  drives: FormattedDrive[];
  session(opts?: SessionOptions): Promise<Session>;
  stop(): void;
}

export async function startTarget(
  drives: FormattedDrive[],
  opts: { max_inflight_per_conn?: number } = {},
): Promise<TargetHarness> {
  const logs: LogLine[] = [];
  const env = realEnv("target-test", recordingLogger(logs));
  const service = new TargetService(env, { name: "t1", drives, ...opts });
  const listener = await env.net.listen("127.0.0.1:0", (c) => service.handle(c));
  const sessions: Session[] = [];
  return {
    env,
    service,
    listener,
    address: listener.address,
    logs,
    drives,
    async session(sopts) {
      const s = await openSession(env, listener.address, { version: 1, role: "client", name: "test" }, sopts);
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
