/**
 * The README's "Five minutes with nvmesh" block, run as written with bash: three targets, a
 * TOMA, a 3-way mirror attached and written by fio with verify, one server killed and brought
 * back. What a newcomer reads is what is tested.
 */
import { expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ROOT, requireBinary, requireTool, run } from "../support/proc.ts";

function walkthrough(): string {
  const readme = readFileSync(`${ROOT}/README.md`, "utf8");
  const section = readme.slice(readme.indexOf("## Five minutes with nvmesh"));
  const m = /```sh\n([\s\S]*?)```/.exec(section);
  if (!m) throw new Error("README has no sh block under 'Five minutes with nvmesh'");
  return m[1]!;
}

test("the README's walk-through runs as written: a killed server's leg is rebuilt and fio verifies every block", async () => {
  requireBinary();
  requireTool("fio");
  const script = walkthrough();
  // The block's own ports are fixed (a reader types them); nothing else in the suite uses them.
  // From a file, as a reader's shell would: `bash -c SCRIPT` would carry the block's text in its
  // own command line, where the block's `pkill -f` would find it.
  const dir = mkdtempSync(join(tmpdir(), "nvmesh-readme-"));
  const file = join(dir, "walkthrough.sh");
  writeFileSync(file, `set -e -o pipefail\ntrap 'kill $(jobs -p) 2>/dev/null; wait; case $PWD in /tmp/tmp.*) rm -rf "$PWD";; esac' EXIT\ncd ${ROOT}\n${script}`);
  const r = await run(["bash", file], { timeout_ms: 150_000 });
  rmSync(dir, { recursive: true, force: true });
  const out = r.stdout + r.stderr;
  if (r.code !== 0) console.log(out);
  expect(r.code).toBe(0);
  expect(out).toMatch(/targets +3 up, 0 down/);
  expect(out).toMatch(/volume m1 created/);
  expect(out).toMatch(/state +Degraded/);
  expect(out).toMatch(/state +(Rebuilding|Online)/);
  expect(out).toMatch(/err= 0/);
}, 180_000);
