/**
 * Each planted bug of the consensus layer (src/engine/planted-bugs.ts) is caught: by the model
 * test within a stated number of seeds, or by the transcript written for it. A checker that never
 * fails proves nothing; the same seeds and transcripts pass without the bugs (model.test.ts,
 * record-model.test.ts, transcripts.test.ts).
 */
import { afterEach, describe, expect, test } from "bun:test";
import { type PlantedBug, plantedBugs } from "../../../src/engine/planted-bugs.ts";
import { runModel } from "./model.ts";
import { runRecordModel } from "./record-model.ts";
import { runTranscript } from "./transcript-runner.ts";

afterEach(() => {
  for (const k of Object.keys(plantedBugs) as PlantedBug[]) plantedBugs[k] = false;
});

function firstCaught(bug: PlantedBug, within: number, run: (seed: number) => string | null): { seed: number; failure: string } | null {
  plantedBugs[bug] = true;
  for (let seed = 1; seed <= within; seed++) {
    const failure = run(seed);
    if (failure) return { seed, failure };
  }
  return null;
}

describe("the consensus model catches", () => {
  const cases: [PlantedBug, number, RegExp][] = [
    ["raft_vote_twice", 50, /two leaders in term/],
    ["raft_commit_without_majority", 50, /lacks entry|applies .* another TOMA applied/],
    ["raft_send_before_persist", 100, /lacks entry|two leaders in term|another TOMA applied/],
    ["raft_no_check_quorum", 50, /still leads term .* without a majority answering/],
  ];
  for (const [bug, within, why] of cases) {
    test(`${bug} (within ${within} seeds)`, () => {
      const found = firstCaught(bug, within, (seed) => {
        const r = runModel(seed);
        return r.violation && why.test(r.violation) ? r.violation : null;
      });
      expect(found).not.toBeNull();
      console.log(`${bug}: caught by seed ${found!.seed}: ${found!.failure.split("\n")[0]!.slice(0, 160)}`);
    }, 120_000);
  }
});

describe("the record model catches", () => {
  test("record_intersect_previous_only (the obvious drive-set rule; within 3000 seeds)", () => {
    const found = firstCaught("record_intersect_previous_only", 3000, (seed) => runRecordModel(seed).violation);
    expect(found).not.toBeNull();
    console.log(`record_intersect_previous_only: caught by seed ${found!.seed}: ${found!.failure}`);
  }, 120_000);
});

describe("a transcript catches", () => {
  const cases: [PlantedBug, string][] = [
    ["raft_commit_old_term_by_counting", "figure8.txt"],
    ["raft_conf_change_before_own_term", "conf_change_own_term.txt"],
    ["raft_vote_twice", "vote_once_across_restart.txt"],
    ["raft_read_without_confirmation", "read_index.txt"],
  ];
  for (const [bug, file] of cases) {
    test(`${bug} (${file})`, async () => {
      const text = await Bun.file(`tests/toma/consensus/testdata/${file}`).text();
      expect(runTranscript(text)).toBe(text);
      plantedBugs[bug] = true;
      const actual = runTranscript(text);
      expect(actual).not.toBe(text);
      if (bug !== "raft_vote_twice" && bug !== "raft_read_without_confirmation") expect(actual).toContain("VIOLATION");
      const first = actual.split("\n").find((l) => l.startsWith("VIOLATION")) ?? firstDifference(text, actual);
      console.log(`${bug}: ${file} now shows: ${first}`);
    });
  }
});

function firstDifference(a: string, b: string): string {
  const x = a.split("\n");
  const y = b.split("\n");
  const i = x.findIndex((line, k) => line !== y[k]);
  return `line ${i + 1}: expected '${x[i]}', got '${y[i]}'`;
}
