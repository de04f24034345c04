/**
 * The process the drive-store conformance suite kills: opens a file store (thread pool, io_uring
 * or io_uring with O_DIRECT), then writes blocks 0..N-1 (4 KiB each, block i holding
 * pattern(4096, 1000 + i)) with 16 in flight, every third with FUA and a flush after every tenth,
 * printing "acked i" as each write is acknowledged. The parent kills it mid-way.
 *   bun tests/support/store-crash-child.ts threadpool|io_uring|io_uring-direct PATH N
 */
import { openDriveStore, type DriveIo } from "../../src/engine/runtime/open-drive-store.ts";

const [io, path, count] = process.argv.slice(2) as [DriveIo, string, string];
const blocks = Number(count);
const store = await openDriveStore(path, { io });

function pattern(length: number, seed: number): Uint8Array<ArrayBuffer> {
  const b = new Uint8Array(length);
  for (let i = 0; i < length; i++) b[i] = (i * 31 + seed * 7 + (i >> 8)) & 0xff;
  return b;
}

let next = 0;
async function writer(): Promise<void> {
  while (next < blocks) {
    const i = next++;
    await store.write(i * 4096, pattern(4096, 1000 + i), i % 3 === 0);
    console.log(`acked ${i}`);
    if (i % 10 === 9) await store.flush();
    // Slow enough that the parent's kill lands while writes are in flight.
    await Bun.sleep(1);
  }
}
await Promise.all(Array.from({ length: 16 }, writer));
await store.close();
console.log("done");
