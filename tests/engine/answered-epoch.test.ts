/** The cache epoch a target states in its answers (drive-table.ts answeredEpoch). */
import { expect, test } from "bun:test";
import { answeredEpoch, type ServedDrive } from "../../src/engine/target/drive-table.ts";

const served = (cache_epoch: number, epoch_bumps: number, epoch_salt: number) =>
  ({ drive: { data: { cache_epoch } }, epoch_bumps, epoch_salt }) as unknown as ServedDrive;

test("the drive's own epoch until a LOSSY_COPY; each bump changes it; a restart after bumps or a later cache loss never lands on a stated one", () => {
  expect(answeredEpoch(served(2, 0, 12345))).toBe(2);
  const stated = new Set<number>();
  for (let b = 0; b < 1000; b++) stated.add(answeredEpoch(served(2, b, 12345)));
  expect(stated.size).toBe(1000);
  // Restarted (bumps back to 0, new salt), then the cache lost once or twice more.
  for (const e of [2, 3, 4]) {
    if (e !== 2) expect(stated.has(answeredEpoch(served(e, 0, 999)))).toBe(false);
    for (let b = 1; b < 50; b++) expect(stated.has(answeredEpoch(served(e, b, 999)))).toBe(false);
  }
});
