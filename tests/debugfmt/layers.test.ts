/**
 * debugfmt sits beside the engine: the engine's data path will import it, so it imports nothing
 * from cmd or toma, and outside its runtime/ folder it touches no file, clock or randomness.
 */
import { expect, test } from "bun:test";
import { Glob } from "bun";

const FORBIDDEN = [
  /\bDate\.now\(/,
  /\bperformance\.now\(/,
  /\bsetTimeout\(/,
  /\bMath\.random\(/,
  /\bBun\.(connect|listen|serve|file|write|spawn)\(/,
  /from "(node:)?(fs|net|child_process)(\/promises)?"/,
];

test("src/debugfmt imports nothing from cmd or toma, and only runtime/ does I/O", async () => {
  const offenders: string[] = [];
  for await (const path of new Glob("src/debugfmt/**/*.ts").scan(".")) {
    const lines = (await Bun.file(path).text()).split("\n");
    lines.forEach((line, i) => {
      if (/from "(\.\.\/)+(cmd|toma)\//.test(line)) offenders.push(`${path}:${i + 1}: ${line.trim()}`);
      if (path.includes("/runtime/") || /^\s*(\/\/|\*)/.test(line)) return;
      for (const re of FORBIDDEN) if (re.test(line)) offenders.push(`${path}:${i + 1}: ${line.trim()}`);
    });
  }
  expect(offenders).toEqual([]);
});
