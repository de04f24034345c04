/**
 * The real implementation of Env on Bun: wall timers, performance.now, crypto randomness and
 * TCP/unix sockets. The only place in the engine allowed to touch these directly.
 */
import { consola } from "consola";
import type { Env, Logger, TimerHandle } from "../env.ts";
import { BunNetwork } from "./real-net.ts";

function fmt(msg: string, fields?: Record<string, unknown>): string {
  if (!fields) return msg;
  const kv = Object.entries(fields)
    .map(([k, v]) => `${k}=${typeof v === "string" ? v : JSON.stringify(v)}`)
    .join(" ");
  return `${msg} ${kv}`;
}

export function consolaLogger(tag: string): Logger {
  const c = consola.withTag(tag);
  return {
    debug: (m, f) => c.debug(fmt(m, f)),
    info: (m, f) => c.info(fmt(m, f)),
    warn: (m, f) => c.warn(fmt(m, f)),
    error: (m, f) => c.error(fmt(m, f)),
  };
}

export function realEnv(tag: string, log: Logger = consolaLogger(tag)): Env {
  return {
    clock: { now_ms: () => performance.now() },
    timers: {
      after(delay_ms, fn): TimerHandle {
        const t = setTimeout(fn, delay_ms);
        return { cancel: () => clearTimeout(t) };
      },
      every(period_ms, fn): TimerHandle {
        const t = setInterval(fn, period_ms);
        return { cancel: () => clearInterval(t) };
      },
    },
    random: {
      u32: () => crypto.getRandomValues(new Uint32Array(1))[0]!,
      fill: (b) => {
        for (let i = 0; i < b.length; i += 65536) crypto.getRandomValues(b.subarray(i, i + 65536));
      },
    },
    net: new BunNetwork(),
    log,
  };
}
