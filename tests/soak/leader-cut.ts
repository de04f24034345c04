/**
 * The leader's server pulled off the switch while it holds a leg of a mirror that a client
 * daemon homed on another server writes to: a lab of network namespaces (tests/soak/lab-cluster.ts)
 * with a TOMA on every server, set up so that the leader is not the client's home and holds a
 * leg. Shared by the regression test and a manual run (`npx bun tests/soak/leader-cut.ts`).
 */
import { FioVerify } from "../support/fio.ts";
import { ok } from "../support/proc.ts";
import { LabCluster } from "./lab-cluster.ts";

export interface LeaderCutResult {
  /** The server cut off (0-based) and the one leading after it. */
  cut: number;
  new_leader: number;
  /** From the cut to the leader's step that takes the cut leg out (dead), as `volume show` saw it. */
  step_ms: number;
  /** fio's longest interval without a completion from the cut on. */
  stall_ms: number;
  /** What fio said went wrong (null: nothing). */
  fio_error: string | null;
  /** The client daemon's log and every TOMA's, from the cut on (each line as printed). */
  client_log: string;
  toma_logs: string[];
}

const VOLUME = "cut";

/** The lab, its TOMAs and client daemon logging at debug level when asked (NVMESH_LAB_DEBUG=1). */
class DebugLab extends LabCluster {
  protected override nvmesh(name: string): string[] {
    const argv = super.nvmesh(name);
    if (process.env.NVMESH_LAB_DEBUG !== "1" || !/^(toma\d+|client)$/.test(name)) return argv;
    return [...argv.slice(0, -1), "env", "CONSOLA_LEVEL=4", argv.at(-1)!];
  }
}
const log = (s: string) => console.log(`[leader-cut] ${s}`);

/** Moves the lead to a server other than s1 (the client's home) that holds a leg of the volume. */
async function leaderOnALeg(c: LabCluster, legs: number[]): Promise<number> {
  for (let round = 0; round < 8; round++) {
    const l = await c.leader();
    if (l !== 0 && legs.includes(l)) return l;
    // Its TOMA restarted: another leads meanwhile (the election picks among the others).
    log(`leader s${l + 1} is not a leg's server other than s1: restarting its TOMA`);
    await c.killTomaOn(l);
    await Bun.sleep(3000);
    await c.startTomaOn(l);
    if ((await c.agreement(60_000)) === null) throw new Error("the TOMAs did not agree on a leader after a restart");
  }
  throw new Error("the lead never moved to a leg's server other than s1");
}

export async function leaderCut(opts: { keep_dir?: boolean } = {}): Promise<LeaderCutResult> {
  const c = new DebugLab({ servers: 3, drive_size: "512M", cluster_mode: true });
  try {
    await c.start();
    await c.cli("volume", "create", "--name", VOLUME, "--capacity", "128M", "--raid-level", "1", "--number-of-mirrors", "2");
    const vol = await c.volume(VOLUME);
    const legs = vol.columns.map((_, i) => c.serverOf(vol, i));
    const cut = await leaderOnALeg(c, legs);
    const column = legs.indexOf(cut);
    log(`folder ${c.dir}`);
    log(`legs on ${legs.map((t) => `s${t + 1}`).join(",")}; leader s${cut + 1} holds column ${column}`);
    await c.waitVolume(VOLUME, "online", (v) => v.legs.every((l) => l === "ok"), 60_000);
    const uri = await c.attach(VOLUME);
    const wrap = c.lab.exec("client");
    await ok([...wrap, "fio", "--name=prefill", "--ioengine=nbd", `--uri=${uri}`, "--rw=write", "--bs=64k", "--iodepth=16", "--size=32M", "--verify=crc32c", "--do_verify=0", "--verify_state_save=0"], { timeout_ms: 120_000 });
    const fio = new FioVerify({ uri, dir: c.dir, name: "fio", size: "32M", bs: "4k", iodepth: 8, runtime_s: 3600, wrap, lean_logs: true });
    await Bun.sleep(4000);
    const marks = [c.client!, ...c.tomas.map((d) => d!)].map((d) => d.output.length);
    const cut_at = performance.now();
    await c.lab.setLink(c.server(cut), false);
    log(`s${cut + 1} (the leader's server) pulled off the switch`);
    // The step that takes the cut leg out, as a TOMA logs it (when its line reached us).
    const steps = new RegExp(`topology step volume=${VOLUME} legs=${legs.map((_, i) => (i === column ? "dead" : "\\w+")).join(",")}`);
    const stepAt = (): number | null => {
      for (const [i, d] of c.tomas.entries()) {
        let seen = "";
        for (const ch of d?.chunks ?? []) {
          seen += ch.text;
          if (ch.at_ms >= cut_at && seen.length > marks[i + 1]! && steps.test(seen.slice(marks[i + 1]))) return ch.at_ms - cut_at;
        }
      }
      return null;
    };
    let step_ms = -1;
    while (performance.now() - cut_at < 90_000) {
      const at = stepAt();
      if (at !== null) {
        step_ms = at;
        break;
      }
      await Bun.sleep(200);
    }
    const new_leader = await c.leader();
    await Bun.sleep(4000);
    await c.lab.setLink(c.server(cut), true);
    const out = await fio.stop();
    // fio writes its completion log as it ends.
    // From a little before the cut: fio's clock starts after its own start-up, so the last
    // completion before the cut may carry an earlier time than the cut's.
    const stall = fio.longestStall(fio.fioTime(cut_at) - 2000);
    // Stopped by SIGINT, fio exits 0, 1 or 128 with a clean result; an error shows in its result.
    const fio_error = out.job === null ? `no result (exit ${out.code}): ${out.output}` : out.job.error !== 0 ? `error ${out.job.error}: ${out.output}` : null;
    const [client_log, ...toma_logs] = [c.client!, ...c.tomas.map((d) => d!)].map((d, i) => d.output.slice(marks[i]));
    return { cut, new_leader, step_ms, stall_ms: stall.gap_ms, fio_error, client_log: client_log!, toma_logs };
  } finally {
    await c.destroy(opts.keep_dir ?? false);
  }
}

if (import.meta.main) {
  const r = await leaderCut({ keep_dir: process.env.NVMESH_LAB_KEEP === "1" });
  console.log(`client:\n${r.client_log}`);
  r.toma_logs.forEach((l, i) => console.log(`toma s${i + 1}:\n${l}`));
  if (r.fio_error) log(`fio: ${r.fio_error}`);
  log(`cut s${r.cut + 1}; new leader s${r.new_leader + 1}; leg dead after ${(r.step_ms / 1000).toFixed(1)} s; longest fio stall ${(r.stall_ms / 1000).toFixed(1)} s`);
}
