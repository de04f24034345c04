/**
 * Real targets for TOMA tests: TargetService instances on 127.0.0.1:0 over MemoryStore-backed,
 * really formatted drives, and TOMAs with short timings. Faults: stop a whole target (sockets
 * closed, port gone), hot-unplug a drive, move a drive to another target.
 */
import { formatDrive } from "../../src/engine/drive/format.ts";
import type { FormattedDrive } from "../../src/engine/drive/formatted-api.ts";
import { openDrive } from "../../src/engine/drive/formatted-drive.ts";
import { MemoryStore } from "../../src/engine/drive/memory-store.ts";
import type { Env, Logger } from "../../src/engine/env.ts";
import type { Listener } from "../../src/engine/net/conn.ts";
import { realEnv } from "../../src/engine/runtime/real-env.ts";
import { TargetService } from "../../src/engine/target/service.ts";
import { uuidToString } from "../../src/engine/uuid.ts";
import { type ApiResponse, makeApiHandler } from "../../src/toma/api.ts";
import { INSECURE_CALLER } from "../../src/toma/api-auth.ts";
import { Toma } from "../../src/toma/toma.ts";

export const MiB = 1024 * 1024;

export const quietLogger: Logger = { debug() {}, info() {}, warn() {}, error() {} };

export const testEnv = (): Env => realEnv("toma-test", quietLogger);

export async function memoryDrive(name: string, size_bytes = 24 * MiB): Promise<FormattedDrive> {
  const store = new MemoryStore(size_bytes);
  await formatDrive(store, { drive_uuid: uuidToString(crypto.getRandomValues(new Uint8Array(16))), extent_size_bytes: MiB });
  return openDrive(store, `mem:${name}`);
}

export class TestTarget {
  service: TargetService;
  listener: Listener | null = null;
  address = "";

  constructor(
    readonly env: Env,
    readonly name: string,
    readonly drives: FormattedDrive[],
  ) {
    this.service = new TargetService(env, { name, drives });
  }

  async start(port = 0): Promise<void> {
    this.listener = await this.env.net.listen(`127.0.0.1:${port}`, (c) => this.service.handle(c));
    this.address = this.listener.address;
  }

  /** The whole server dies: connections and listener closed. */
  kill(): void {
    this.service.closeAll();
    this.listener?.close();
    this.listener = null;
  }

  /** Comes back on the same port with the same drives (a reboot). */
  async revive(): Promise<void> {
    this.service = new TargetService(this.env, { name: this.name, drives: this.drives });
    await this.start(Number(this.address.split(":").pop()));
  }
}

export async function startTargets(env: Env, drivesPerTarget: number[]): Promise<TestTarget[]> {
  const out: TestTarget[] = [];
  for (const [i, n] of drivesPerTarget.entries()) {
    const drives = await Promise.all(Array.from({ length: n }, (_, j) => memoryDrive(`t${i}d${j}`)));
    const t = new TestTarget(env, `t${i}`, drives);
    await t.start();
    out.push(t);
  }
  return out;
}

export const FAST = { poll_ms: 30, sync_ms: 30, request_timeout_ms: 1000, backoff_min_ms: 20, backoff_max_ms: 100 };

/** The routes (api.ts) as a test calls them, as an administrator of a TOMA without a key would. */
export type TestApi = (method: string, path: string, body?: unknown) => Promise<ApiResponse>;

/** The routes with every right (signatures and who may do what: api-auth.test.ts, api.test.ts). */
export function adminApi(toma: Toma): TestApi {
  const routes = makeApiHandler(toma);
  return (method, path, body) => routes(method, path, body, INSECURE_CALLER);
}

export function startToma(env: Env, targets: TestTarget[], opts: { cluster_uuid?: string } = {}): { toma: Toma; api: TestApi } {
  const toma = new Toma(env, { name: "toma-test", targets: targets.map((t) => t.address), timings: FAST, ...opts });
  toma.start();
  return { toma, api: adminApi(toma) };
}

/**
 * The management API's fixture: two targets of one drive each, a ready TOMA with both drives as
 * members, and a volume "existing" of 1 MiB. Stop with toma.stop() and each target's kill().
 */
export async function apiFixture(env: Env): Promise<{ targets: TestTarget[]; toma: Toma; api: TestApi }> {
  const targets = await startTargets(env, [1, 1]);
  const { toma, api } = startToma(env, targets);
  await toma.whenReady(5000);
  await until("2 member drives", () => toma.state?.drives.length === 2);
  const r = await api("POST", "/v1/volumes", { name: "existing", capacity_bytes: MiB, raid_level: "concatenated" });
  if (r.status !== 201) throw new Error(`creating the fixture's volume answered ${r.status}: ${JSON.stringify(r.body)}`);
  return { targets, toma, api };
}

/** Polls `cond` every 10 ms until true, or throws with `what` after timeout_ms. */
export async function until(what: string, cond: () => boolean | Promise<boolean>, timeout_ms = 5000): Promise<void> {
  const end = performance.now() + timeout_ms;
  while (!(await cond())) {
    if (performance.now() > end) throw new Error(`timed out waiting for: ${what}`);
    await Bun.sleep(10);
  }
}
