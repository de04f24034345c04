/**
 * A fresh clone installs the same way on any day: exact dependency versions, the lock file in
 * sync, Bun itself pinned, and `npm ci` on a clone of this repository succeeding with no warning
 * a newcomer would have to wonder about. The clone test uses the npm registry (CI reaches it).
 */
import { expect, test } from "bun:test";
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ROOT, run } from "../support/proc.ts";
// @ts-expect-error: a plain .mjs module without type declarations (it runs under Node in .ci/run)
import { pinProblems } from "./check-pins.mjs";

const pkg = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8"));

test("every dependency is an exact version and package-lock.json agrees", () => {
  expect(pinProblems(ROOT)).toEqual([]);
});

test("the check fails, saying what to do, on a range, on 'latest' and on a stale lock", () => {
  const dir = mkdtempSync(join(tmpdir(), "nvmesh-pins-"));
  try {
    cpSync(join(ROOT, "package-lock.json"), join(dir, "package-lock.json"));
    const bad = structuredClone(pkg);
    bad.dependencies.citty = `^${pkg.dependencies.citty}`;
    bad.devDependencies["@types/bun"] = "latest";
    bad.dependencies.consola = "0.0.1";
    writeFileSync(join(dir, "package.json"), JSON.stringify(bad));
    const problems: string[] = pinProblems(dir);
    expect(problems.some((p) => p.includes("citty") && p.includes("not an exact version"))).toBe(true);
    expect(problems.some((p) => p.includes("@types/bun") && p.includes("not an exact version"))).toBe(true);
    expect(problems.some((p) => p.includes("consola") && p.includes("run 'npm install'"))).toBe(true);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("the Bun running the suite is the pinned one", () => {
  expect(Bun.version).toBe(pkg.devDependencies.bun);
});

test("npm ci on a fresh clone of this repository installs cleanly, with no warning", async () => {
  const dir = mkdtempSync(join(tmpdir(), "nvmesh-clone-"));
  try {
    const clone = await run(["git", "clone", "--quiet", "--no-local", ROOT, join(dir, "nvmesh")], { timeout_ms: 60_000 });
    expect(clone.stderr).toBe("");
    expect(clone.code).toBe(0);
    // The clone holds what is committed: the check must be about the committed files.
    const cloned = join(dir, "nvmesh");
    // As a newcomer runs it: not under `npm test`, whose npm_* variables would leak in.
    const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.toLowerCase().startsWith("npm_")));
    const ci = await run(["npm", "ci"], { timeout_ms: 240_000, cwd: cloned, base_env: env });
    const out = ci.stdout + ci.stderr;
    if (ci.code !== 0) console.log(out);
    expect(ci.code).toBe(0);
    expect(out).not.toMatch(/npm (warn|WARN|error|ERR)/);
    const bun = await run([join(cloned, "node_modules/.bin/bun"), "--version"]);
    expect(bun.stdout.trim()).toBe(pkg.devDependencies.bun);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}, 300_000);
