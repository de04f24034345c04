/**
 * The demo's child processes: nvmesh daemons started from this same executable, their output kept
 * (and the last lines shown when something fails), and nvmesh admin commands run to completion.
 */
import type { Subprocess } from "bun";
import { createServer } from "node:net";
import { selfCommand } from "./self.ts";

export interface Child {
  name: string;
  proc: Subprocess<"ignore", "pipe", "pipe">;
  output: string;
}

export function spawnChild(name: string, args: string[], log: string[]): Child {
  const proc = Bun.spawn([...selfCommand(), ...args], {
    stdin: "ignore",
    stdout: "pipe",
    stderr: "pipe",
    env: { ...process.env, NO_COLOR: "1" },
  });
  const child: Child = { name, proc, output: "" };
  const pump = async (s: ReadableStream<Uint8Array>) => {
    const dec = new TextDecoder();
    for await (const chunk of s) {
      const text = dec.decode(chunk, { stream: true });
      child.output += text;
      for (const line of text.split("\n")) if (line.trim()) log.push(`[${name}] ${line.trim()}`);
      if (log.length > 1000) log.splice(0, log.length - 1000);
    }
  };
  void pump(proc.stdout);
  void pump(proc.stderr);
  return child;
}

export async function waitForOutput(child: Child, re: RegExp, timeout_ms = 30_000): Promise<RegExpMatchArray> {
  const deadline = performance.now() + timeout_ms;
  for (;;) {
    const m = child.output.match(re);
    if (m) return m;
    if (child.proc.exitCode !== null) throw new Error(`${child.name} exited:\n${child.output}`);
    if (performance.now() > deadline) throw new Error(`${child.name} did not start in time:\n${child.output}`);
    await Bun.sleep(50);
  }
}

/** Runs `nvmesh ARGS…` to completion; throws with its message on a non-zero exit. */
export async function runNvmesh(cmd: string[]): Promise<string> {
  const p = Bun.spawn([...selfCommand(), ...cmd], { stdout: "pipe", stderr: "pipe", env: { ...process.env, NO_COLOR: "1" } });
  const [out, err, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
  if (code !== 0) throw new Error(`nvmesh ${cmd.join(" ")} failed: ${err || out}`);
  return out;
}

/** A deterministic pattern: every 512-byte sector names its own offset, so misplacement shows. */
export function pattern(offset: number, length: number, seed: number): Uint8Array {
  const b = new Uint8Array(length);
  const dv = new DataView(b.buffer);
  for (let i = 0; i < length; i += 8) {
    const pos = offset + i;
    dv.setUint32(i, Math.floor(pos / 512), true);
    dv.setUint32(i + 4, (pos * 2654435761 + seed) >>> 0, true);
  }
  return b;
}

/**
 * A 127.0.0.1 port free now, for a daemon whose address others must know before it starts (a TOMA
 * of a TOMA cluster is given every TOMA's address).
 */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const port = (srv.address() as { port: number }).port;
      srv.close(() => resolve(port));
    });
  });
}
