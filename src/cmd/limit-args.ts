/**
 * The flags that bound what a daemon's ports allow (docs/protocol.md and docs/nbd.md, "Limits"):
 * how long and how many connections may stay unauthenticated, and how many payload bytes may be
 * in flight over all connections. Shared by `target serve`, `client serve` and `toma run`.
 */
import type { PreAuthLimits } from "../engine/limits/preauth.ts";
import { parseDuration, parsePositiveInt, parseSize } from "./args.ts";

export const preauthArgs = {
  "auth-timeout": {
    type: "string" as const,
    description: "close a connection that has not authenticated after this long (e.g. 10s)",
    default: "10s",
  },
  "max-unauthenticated": {
    type: "string" as const,
    description: "connections waiting to authenticate at once; more are refused (logged)",
  },
};

export function preauthLimits(
  args: { "auth-timeout": string; "max-unauthenticated"?: string },
  defaults: PreAuthLimits,
): PreAuthLimits {
  return {
    auth_timeout_ms: parseDuration(args["auth-timeout"], "--auth-timeout"),
    max_unauthenticated: parsePositiveInt(args["max-unauthenticated"], "--max-unauthenticated") ?? defaults.max_unauthenticated,
  };
}

export const payloadBudgetArg = {
  "payload-budget": {
    type: "string" as const,
    description: "payload bytes in flight over all connections before they wait (target 256M, NBD 128M)",
  },
};

/** The flag's value in bytes; undefined leaves the server's own default. */
export function payloadBudget(args: { "payload-budget"?: string }): number | undefined {
  const v = args["payload-budget"];
  return v === undefined ? undefined : parseSize(v, "--payload-budget");
}
