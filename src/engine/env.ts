/**
 * The one injected environment through which protocol code (target, client, TOMA) reaches the
 * world. The real runtime (src/engine/runtime/) implements it with Bun; the deterministic simulator
 * implements it with virtual time, a seeded PRNG and simulated links. Protocol modules must not use
 * Date.now, setTimeout, Math.random, Bun.connect/listen or node:fs directly (a CI grep enforces it).
 */
import type { Network } from "./net/conn.ts";

/**
 * A local clock. Never compared across machines: it only decides *when to suspect*. It may jump,
 * either way (the simulator does it); code that measures intervals reads it through steadyClock.
 */
export interface Clock {
  now_ms(): number;
}

export interface TimerHandle {
  cancel(): void;
}

export interface Timers {
  after(delay_ms: number, fn: () => void): TimerHandle;
  every(period_ms: number, fn: () => void): TimerHandle;
}

/** Seeded in the simulator, cryptographic in the real runtime. */
export interface Random {
  u32(): number;
  fill(bytes: Uint8Array): void;
}

export interface Logger {
  debug(msg: string, fields?: Record<string, unknown>): void;
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
  error(msg: string, fields?: Record<string, unknown>): void;
}

export interface Env {
  clock: Clock;
  timers: Timers;
  random: Random;
  net: Network;
  log: Logger;
}

/** Resolves after delay_ms of this environment's time. */
export function sleep(env: Env, delay_ms: number): Promise<void> {
  return new Promise((resolve) => env.timers.after(delay_ms, resolve));
}

/** A random 128-bit UUID (RFC 4122 v4 layout) drawn from the environment's randomness. */
export function randomUuid(env: Env): Uint8Array {
  const b = new Uint8Array(16);
  env.random.fill(b);
  b[6] = (b[6]! & 0x0f) | 0x40;
  b[8] = (b[8]! & 0x3f) | 0x80;
  return b;
}
