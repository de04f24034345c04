/**
 * What signing costs the management API: the same request (`GET /v1/cluster`, and a client
 * daemon's watch that knows nothing yet) against a TOMA with a key, every request signed over a
 * fresh nonce (two HTTP round trips), and against a TOMA started --insecure (one), each a real
 * process on loopback. Prints the mean time per request of each, the median of several rounds,
 * and the ratio.
 *
 *   npm run build && node_modules/.bin/bun bench/mgmt-auth.ts [--requests 500] [--rounds 3]
 */
import { tomaClient } from "../src/toma/api-client.ts";
import { Cluster } from "../tests/support/cluster.ts";
import { flag, median, printTable } from "./common.ts";

const REQUESTS = Number(flag("requests", "500"));
const ROUNDS = Number(flag("rounds", "3"));

async function measure(keyed: boolean): Promise<{ cluster_us: number; watch_us: number }> {
  const c = await new Cluster({ targets: 1, drive_size: "256M", key: keyed }).start();
  try {
    const admin = tomaClient(c.toma_addr, { key: c.key });
    const daemon = tomaClient(c.toma_addr, { key: c.clientKey });
    const { client_id } = (await daemon.call("POST", "/v1/clients", { name: "bench" })) as { client_id: number };
    const time = async (f: () => Promise<unknown>) => {
      const rounds: number[] = [];
      for (let r = 0; r < ROUNDS; r++) {
        const t0 = performance.now();
        for (let i = 0; i < REQUESTS; i++) await f();
        rounds.push(((performance.now() - t0) * 1000) / REQUESTS);
      }
      return median(rounds);
    };
    return {
      cluster_us: await time(() => admin.cluster()),
      // known=-1: answered at once (the long poll is not what is measured).
      watch_us: await time(() => daemon.call("GET", `/v1/clients/${client_id}/watch?known=-1&stable=-1`)),
    };
  } finally {
    await c.destroy();
  }
}

const signed = await measure(true);
const open = await measure(false);
printTable([
  { request: "GET /v1/cluster (admin)", "signed us": signed.cluster_us.toFixed(0), "--insecure us": open.cluster_us.toFixed(0), ratio: (signed.cluster_us / open.cluster_us).toFixed(2) },
  { request: "GET watch (client daemon)", "signed us": signed.watch_us.toFixed(0), "--insecure us": open.watch_us.toFixed(0), ratio: (signed.watch_us / open.watch_us).toFixed(2) },
]);
console.log(`\n${REQUESTS} sequential requests per round, median of ${ROUNDS} rounds; TOMA, target and this process on one machine`);
