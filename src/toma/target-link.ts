/**
 * The TOMA's view of one configured target: keeps a session open (reconnecting with backoff),
 * polls its drive list, and decides "down" by local timeouts only. Never decides what is true
 * about a drive's data; only where a drive is served and whether the target answers.
 */
import type { Env, TimerHandle } from "../engine/env.ts";
import type { DriveInfo } from "../engine/wire/control.ts";
import type { TargetSession } from "../engine/wire/session-api.ts";

export type Connect = (address: string) => Promise<TargetSession>;

export interface LinkTimings {
  /** How often the drive list is polled (hot-plug, moved drives). */
  poll_ms: number;
  /** A request or connect not answered within this is a suspected failure. */
  request_timeout_ms: number;
  backoff_min_ms: number;
  backoff_max_ms: number;
}

export const DEFAULT_LINK_TIMINGS: LinkTimings = {
  poll_ms: 1000,
  request_timeout_ms: 5000,
  backoff_min_ms: 100,
  backoff_max_ms: 5000,
};

export class TimeoutError extends Error {}

/** Rejects with TimeoutError when `p` has not settled after timeout_ms of env time. */
export function withTimeout<T>(env: Env, p: Promise<T>, timeout_ms: number, what: string): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const t = env.timers.after(timeout_ms, () => reject(new TimeoutError(`${what}: no answer in ${timeout_ms} ms`)));
    p.then(
      (x) => {
        t.cancel();
        resolve(x);
      },
      (e) => {
        t.cancel();
        reject(e);
      },
    );
  });
}

export class TargetLink {
  session: TargetSession | null = null;
  /** Drives as last listed; empty while down. */
  drives: DriveInfo[] = [];
  target_name: string | null = null;
  version: string | null = null;
  last_error: string | null = null;
  /** Set once the target answered at least once since the TOMA started. */
  ever_up = false;
  /** Local clock reading of the last up/down transition. */
  since_ms: number;
  /** Called whenever up/down or the drive list changes. */
  onChange: (() => void) | null = null;

  private backoff_ms: number;
  private retry: TimerHandle | null = null;
  private poll: TimerHandle | null = null;
  private polling = false;
  private stopped = false;

  constructor(
    private readonly env: Env,
    readonly address: string,
    private readonly connect: Connect,
    private readonly timings: LinkTimings,
  ) {
    this.backoff_ms = timings.backoff_min_ms;
    this.since_ms = env.clock.now_ms();
  }

  get up(): boolean {
    return this.session !== null;
  }

  start(): void {
    void this.attempt();
  }

  stop(): void {
    this.stopped = true;
    this.retry?.cancel();
    this.poll?.cancel();
    const s = this.session;
    this.session = null;
    s?.close();
  }

  /** Updates the cached listing after a change this TOMA made (a claim), until the next poll. */
  patchDrive(info: DriveInfo): void {
    this.drives = this.drives.map((d) => (d.drive_uuid === info.drive_uuid ? info : d));
  }

  /**
   * Declares the session dead (e.g. a request timed out) and reconnects. The reason is recorded
   * (last_error, the "target down" log line) before the session is closed: closing it calls its
   * onClose, which would otherwise record "closed by the requester" instead of the cause.
   * `of`: the session the unanswered request went on; once the link has a newer one (a request
   * sent before a reconnect timing out after it), there is nothing to suspect.
   */
  suspect(reason: string, of: TargetSession | null = this.session): void {
    const s = this.session;
    if (s === null || s !== of) return;
    this.lost(reason);
    s.close(reason);
  }

  private async attempt(): Promise<void> {
    if (this.stopped) return;
    let s: TargetSession;
    try {
      s = await withTimeout(this.env, this.connect(this.address), this.timings.request_timeout_ms, `connect ${this.address}`);
    } catch (e) {
      this.last_error = (e as Error).message;
      this.scheduleRetry();
      return;
    }
    if (this.stopped) {
      s.close();
      return;
    }
    this.session = s;
    this.ever_up = true;
    this.last_error = null;
    this.backoff_ms = this.timings.backoff_min_ms;
    this.since_ms = this.env.clock.now_ms();
    this.target_name = s.info.target_name;
    this.version = s.info.version;
    this.drives = s.info.drives;
    s.onClose = (reason) => {
      if (this.session === s) this.lost(reason);
    };
    this.env.log.info("target up", { target: this.address, drives: this.drives.length });
    this.poll = this.env.timers.every(this.timings.poll_ms, () => void this.pollDrives(s));
    this.onChange?.();
  }

  private async pollDrives(s: TargetSession): Promise<void> {
    if (this.polling || this.session !== s) return;
    this.polling = true;
    try {
      const drives = await withTimeout(this.env, s.listDrives(), this.timings.request_timeout_ms, `list drives of ${this.address}`);
      if (this.session !== s) return;
      const changed = JSON.stringify(drives) !== JSON.stringify(this.drives);
      this.drives = drives;
      if (changed) this.onChange?.();
    } catch (e) {
      this.suspect((e as Error).message, s);
    } finally {
      this.polling = false;
    }
  }

  private lost(reason: string): void {
    if (this.session === null && this.retry !== null) return;
    this.session = null;
    this.drives = [];
    this.poll?.cancel();
    this.poll = null;
    this.last_error = reason;
    this.since_ms = this.env.clock.now_ms();
    this.env.log.warn("target down", { target: this.address, reason });
    this.onChange?.();
    this.scheduleRetry();
  }

  private scheduleRetry(): void {
    if (this.stopped) return;
    const delay = this.backoff_ms;
    this.backoff_ms = Math.min(this.backoff_ms * 2, this.timings.backoff_max_ms);
    this.retry?.cancel();
    this.retry = this.env.timers.after(delay, () => {
      this.retry = null;
      void this.attempt();
    });
  }
}
