/**
 * The floor of one extra hop: round trips between two Bun processes over TCP loopback, a 64-byte
 * request (a frame header) answered by a 4160-byte response (header + 4 KiB), no work in
 * between. Compare with fio-matrix's QD1 latencies: nvmesh's path has this hop on top of the NBD
 * hop that nbdkit's path has too. Usage: bun bench/tcp-pingpong.ts [--count 100000]
 */
const argv = process.argv.slice(2);
const RESPONSE_BYTES = 4160;

if (argv[0] === "--serve") {
  const resp = new Uint8Array(RESPONSE_BYTES);
  const l = Bun.listen({
    hostname: "127.0.0.1",
    port: 0,
    socket: {
      open: (s) => void s.setNoDelay(true),
      data: (s) => void s.write(resp),
    },
  });
  console.log(`port ${l.port}`);
} else {
  const i = argv.indexOf("--count");
  const N = i >= 0 ? Number(argv[i + 1]) : 100_000;
  const server = Bun.spawn([process.execPath, import.meta.path, "--serve"], { stdout: "pipe" });
  const reader = server.stdout.getReader();
  const first = new TextDecoder().decode((await reader.read()).value);
  const port = Number(/port (\d+)/.exec(first)![1]);
  const req = new Uint8Array(64);
  let n = 0;
  let got = 0;
  let t0 = 0;
  const done = Promise.withResolvers<number>();
  const sock = await Bun.connect({
    hostname: "127.0.0.1",
    port,
    socket: {
      data(s, d) {
        got += d.length;
        if (got < RESPONSE_BYTES) return;
        got -= RESPONSE_BYTES;
        if (++n === N) return done.resolve(performance.now() - t0);
        s.write(req);
      },
    },
  });
  sock.setNoDelay(true);
  t0 = performance.now();
  sock.write(req);
  const ms = await done.promise;
  console.log(`${N} round trips, ${((ms * 1000) / N).toFixed(1)} us each`);
  sock.end();
  server.kill();
}
