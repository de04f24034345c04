#!/usr/bin/env node
/**
 * Checks that a fresh clone installs the same dependency tree on any day: every dependency in
 * package.json is an exact version (a range or "latest" lets `npm ci` fail, or install something
 * else, the day a new version is published), and package-lock.json records exactly those versions.
 *
 * Plain Node on purpose: `.ci/run` runs it before `npm ci`, when Bun is not installed yet, so a
 * stale lock is reported in one clear line instead of npm's usage dump. The test suite runs the
 * same function (tests/install/pins.test.ts).
 *
 *   node tests/install/check-pins.mjs [DIR]     exit 0 when pinned and in sync, 1 otherwise
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const SECTIONS = ["dependencies", "devDependencies", "optionalDependencies"];
const EXACT = /^\d+\.\d+\.\d+$/;

/** Every problem found, each a sentence that says what to do; [] when all is well. */
export function pinProblems(dir) {
  const pkg = JSON.parse(readFileSync(join(dir, "package.json"), "utf8"));
  let lock;
  try {
    lock = JSON.parse(readFileSync(join(dir, "package-lock.json"), "utf8"));
  } catch (e) {
    return [`package-lock.json cannot be read (${e.message}): run 'npm install' and commit the lock file`];
  }
  const problems = [];
  const root = lock.packages?.[""] ?? {};
  for (const sec of SECTIONS) {
    for (const [name, spec] of Object.entries(pkg[sec] ?? {})) {
      if (!EXACT.test(spec)) {
        problems.push(`package.json ${sec}: ${name} is "${spec}", not an exact version: write the version to install (npm view ${name} version)`);
        continue;
      }
      if (root[sec]?.[name] !== spec) {
        problems.push(`package-lock.json does not list ${name}@${spec} in ${sec} as package.json does: run 'npm install' and commit the lock file`);
      }
      const locked = lock.packages?.[`node_modules/${name}`]?.version;
      if (locked !== spec) {
        problems.push(`package-lock.json installs ${name}@${locked ?? "(missing)"}, package.json asks for ${spec}: run 'npm install' and commit the lock file`);
      }
    }
    for (const name of Object.keys(root[sec] ?? {})) {
      if (!(name in (pkg[sec] ?? {}))) {
        problems.push(`package-lock.json lists ${name} in ${sec}, package.json does not: run 'npm install' and commit the lock file`);
      }
    }
  }
  for (const [name, spec] of Object.entries(pkg.overrides ?? {})) {
    if (typeof spec === "string" && !EXACT.test(spec)) problems.push(`package.json overrides: ${name} is "${spec}", not an exact version`);
  }
  return problems;
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  const dir = process.argv[2] ?? process.cwd();
  const problems = pinProblems(dir);
  for (const p of problems) console.error(`dependency pins: ${p}`);
  if (problems.length > 0) process.exit(1);
  console.log("dependency pins: every dependency is an exact version and the lock file agrees");
}
