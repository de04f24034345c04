/**
 * The protocol core must reach the world only through the injected Env, or the simulator cannot
 * drive it. This keeps direct clocks, timers, randomness, sockets and files out of protocol code;
 * the runtime adapters (runtime/ folders) and the ffi layer are the only places allowed them.
 */
import { expect, test } from "bun:test";
import { Glob } from "bun";

const FORBIDDEN = [
  /\bDate\.now\(/,
  /\bperformance\.now\(/,
  /\bsetTimeout\(/,
  /\bsetInterval\(/,
  /\bMath\.random\(/,
  /\bBun\.(connect|listen|serve|file|write|spawn)\(/,
  /from "(node:)?(fs|net|child_process)(\/promises)?"/,
  /\bfetch\(/,
];

const ALLOWED = /\/runtime\/|\/ffi\/|\/api-client\.ts$/;

test("protocol modules in src/engine and src/toma use no direct I/O, clocks or randomness", async () => {
  const offenders: string[] = [];
  for (const dir of ["src/engine", "src/toma"]) {
    for await (const path of new Glob(`${dir}/**/*.ts`).scan(".")) {
      if (ALLOWED.test(path)) continue;
      const lines = (await Bun.file(path).text()).split("\n");
      lines.forEach((line, i) => {
        if (/^\s*(\/\/|\*)/.test(line)) return;
        for (const re of FORBIDDEN) if (re.test(line)) offenders.push(`${path}:${i + 1}: ${line.trim()}`);
      });
    }
  }
  expect(offenders).toEqual([]);
});

test("layers point one way: engine never imports toma or cmd; toma never imports cmd", async () => {
  const offenders: string[] = [];
  for (const [dir, banned] of [
    ["src/engine", /from "\.\.\/.*(toma|cmd)\//],
    ["src/toma", /from "\.\.\/.*cmd\//],
    ["src/ffi", /from "\.\.\/(engine|toma|cmd)\//],
  ] as const) {
    for await (const path of new Glob(`${dir}/**/*.ts`).scan(".")) {
      const text = await Bun.file(path).text();
      for (const line of text.split("\n")) if (banned.test(line)) offenders.push(`${path}: ${line.trim()}`);
    }
  }
  expect(offenders).toEqual([]);
});
