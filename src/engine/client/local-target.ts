/**
 * A client daemon that hosts a target in its own process (`nvmesh client serve --drive`) reaches
 * that target's drives over an in-process connection (net/pipe.ts) instead of a socket. The
 * TOMA only knows the target by its network address, so each new target session is opened as
 * usual; if the target answers HELLO with the serving id of the one in this process, that
 * session is closed and a new one is opened in-process, with the same HELLO, AUTH and fencing.
 */
import type { Env } from "../env.ts";
import type { FrameLink } from "../net/frame-link.ts";
import type { HelloRequest } from "../wire/control.ts";
import type { TargetSession } from "../wire/session-api.ts";
import type { OpenSession } from "./target-pool.ts";

export interface LocalTarget {
  /** TargetInfo.serving of the target in this process. */
  serving: string;
  /** A new in-process link to it (the other end handed to the target). */
  connect(): FrameLink;
}

export type SessionOver = (env: Env, link: FrameLink, address: string, hello: HelloRequest) => Promise<TargetSession>;

export function viaLocalTarget(open: OpenSession, local: LocalTarget, over: SessionOver): OpenSession {
  return async (env, address, hello) => {
    const s = await open(env, address, hello);
    if (s.info.serving !== local.serving) return s;
    s.close();
    const inproc = await over(env, local.connect(), address, hello);
    env.log.info("target reached in-process", { target: address });
    return inproc;
  };
}
