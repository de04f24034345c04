/**
 * The struct offsets and enum values the verbs and rdma_cm facades (src/ffi/verbs.ts, rdmacm.ts)
 * write and read by hand, checked against rdma-core's own headers: a C program prints offsetof()
 * and sizeof() of each field, compiled here with the system's C compiler. Needs gcc and the
 * headers at test time only (apt-get install -y gcc libibverbs-dev librdmacm-dev); the product
 * needs neither.
 */
import { expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { CONSTANTS as VC, LAYOUT as VL } from "../../src/ffi/verbs.ts";
import { EVENTS as RE, LAYOUT as RL } from "../../src/ffi/rdmacm.ts";
import { ok, requireTool } from "../support/proc.ts";

/** "sizeof T" or "T.a.b" → the C expression that measures it. */
function measure(key: string): string {
  if (key.startsWith("sizeof ")) return `sizeof(struct ${key.slice(7)})`;
  const dot = key.indexOf(".");
  return `offsetof(struct ${key.slice(0, dot)}, ${key.slice(dot + 1)})`;
}

test("every offset, size and constant the facades use matches <infiniband/verbs.h> and <rdma/rdma_cma.h>", async () => {
  requireTool("gcc");
  const headers = ["/usr/include/infiniband/verbs.h", "/usr/include/rdma/rdma_cma.h"];
  for (const h of headers) {
    if (!(await Bun.file(h).exists())) throw new Error(`${h} is missing: apt-get install -y libibverbs-dev librdmacm-dev`);
  }
  const dir = mkdtempSync(`${tmpdir()}/verbs-layout-`);
  try {
    const ours: Record<string, number> = { ...VL, ...RL, ...VC, ...RE };
    const lines = Object.keys(ours).map((k) => {
      const expr = k.startsWith("sizeof ") || k.includes(".") ? measure(k) : k;
      return `  printf("%s %ld\\n", ${JSON.stringify(k)}, (long)(${expr}));`;
    });
    writeFileSync(
      `${dir}/layout.c`,
      `#include <stdio.h>\n#include <stddef.h>\n#include <infiniband/verbs.h>\n#include <rdma/rdma_cma.h>\nint main(void) {\n${lines.join("\n")}\n  return 0;\n}\n`,
    );
    await ok(["gcc", "-o", `${dir}/layout`, `${dir}/layout.c`]);
    const theirs: Record<string, number> = {};
    for (const line of (await ok([`${dir}/layout`])).trim().split("\n")) {
      const i = line.lastIndexOf(" ");
      theirs[line.slice(0, i)] = Number(line.slice(i + 1));
    }
    expect(theirs).toEqual(ours);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
