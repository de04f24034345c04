/**
 * The floor of one extra hop: round trips between two Bun processes over TCP loopback, a 64-byte
 * request (a frame header) answered by a 4160-byte response (header + 4 KiB), no work in
 * between. Compare with fio-matrix's QD1 latencies: nvmesh's path has this hop on top of the NBD
 * hop that nbdkit's path has too. With --unix the same over a unix socket (the path a client
 * could take to a target on its own host; nvmesh has no such path yet). Usage: bun bench/tcp-pingpong.ts [--count 100000] [--unix]
 */
import { rmSync } from "node:fs";

const argv = process.argv.slice(2);
const RESPONSE_BYTES = 4160;
const UNIX = argv.includes("--unix");
const SOCKET_PATH = `/tmp/nvmesh-pingpong-${argv[0] === "--serve" ? process.ppid : process.pid}.sock`;

if (argv[0] === "--serve") {
  const resp = new Uint8Array(RESPONSE_BYTES);
  const socket = {
    open: (s: Bun.Socket) => void (UNIX || s.setNoDelay(true)),
    data: (s: Bun.Socket) => void s.write(resp),
  };
  const l = UNIX ? Bun.listen({ unix: SOCKET_PATH, socket }) : Bun.listen({ hostname: "127.0.0.1", port: 0, socket });
  console.log(`port ${"port" in l && l.port !== undefined ? l.port : 0}`);
} else {
  const i = argv.indexOf("--count");
  const N = i >= 0 ? Number(argv[i + 1]) : 100_000;
  const server = Bun.spawn([process.execPath, import.meta.path, "--serve", ...(UNIX ? ["--unix"] : [])], { stdout: "pipe" });
  const reader = server.stdout.getReader();
  const first = new TextDecoder().decode((await reader.read()).value);
  const port = Number(/port (\d+)/.exec(first)![1]);
  const req = new Uint8Array(64);
  let n = 0;
  let got = 0;
  let t0 = 0;
  const done = Promise.withResolvers<number>();
  const socket = {
    data(s: Bun.Socket, d: Uint8Array) {
      got += d.length;
      if (got < RESPONSE_BYTES) return;
      got -= RESPONSE_BYTES;
      if (++n === N) return done.resolve(performance.now() - t0);
      s.write(req);
    },
  };
  const sock = UNIX ? await Bun.connect({ unix: SOCKET_PATH, socket }) : await Bun.connect({ hostname: "127.0.0.1", port, socket });
  if (!UNIX) sock.setNoDelay(true);
  t0 = performance.now();
  sock.write(req);
  const ms = await done.promise;
  console.log(`${N} round trips over ${UNIX ? "a unix socket" : "TCP loopback"}, ${((ms * 1000) / N).toFixed(1)} us each`);
  sock.end();
  server.kill();
  if (UNIX) rmSync(SOCKET_PATH, { force: true }); // the killed server leaves its socket file behind
}
