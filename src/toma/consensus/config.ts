/**
 * A configuration (who votes, who only learns) and the single-server changes to it. A node uses
 * the last configuration in its log, committed or not (Raft thesis §4.1), so the configuration at
 * an index is the snapshot's, updated by every conf entry after it up to that index.
 */
import { assert } from "../../engine/assert.ts";
import { type ConfChange, type Config, type Entry, MAX_MEMBERS, type Member, type NodeId, type Snapshot } from "./types.ts";

/** A configuration where every id is a voter: the bootstrap configuration. */
export function votersConfig(ids: readonly NodeId[], address: (id: NodeId) => string = () => ""): Config {
  const members = [...new Set(ids)].sort().map((id) => ({ id, voter: true, address: address(id) }));
  return { members };
}

export function member(c: Config, id: NodeId): Member | undefined {
  return c.members.find((m) => m.id === id);
}

export function isVoter(c: Config, id: NodeId): boolean {
  return member(c, id)?.voter === true;
}

export function voterIds(c: Config): NodeId[] {
  return c.members.filter((m) => m.voter).map((m) => m.id);
}

export function memberIds(c: Config): NodeId[] {
  return c.members.map((m) => m.id);
}

/** Why `change` cannot be applied to `c`, or null. Never leaves a configuration without voters. */
export function changeProblem(c: Config, change: ConfChange): string | null {
  const m = member(c, change.node);
  switch (change.op) {
    case "add_learner":
      if (m) return `${change.node} is already a member`;
      if (c.members.length >= MAX_MEMBERS) return `a configuration holds at most ${MAX_MEMBERS} members`;
      return null;
    case "promote":
      if (!m) return `${change.node} is not a member`;
      if (m.voter) return `${change.node} is already a voter`;
      return null;
    case "remove":
      if (!m) return `${change.node} is not a member`;
      if (m.voter && voterIds(c).length === 1) return `${change.node} is the last voter`;
      return null;
  }
}

export function applyChange(c: Config, change: ConfChange): Config {
  const why = changeProblem(c, change);
  assert(why === null, () => `configuration change ${describeChange(change)} is invalid: ${why}`);
  switch (change.op) {
    case "add_learner": {
      const members = [...c.members, { id: change.node, voter: false, address: change.address }];
      return { members: members.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0)) };
    }
    case "promote":
      return { members: c.members.map((m) => (m.id === change.node ? { ...m, voter: true } : m)) };
    case "remove":
      return { members: c.members.filter((m) => m.id !== change.node) };
  }
}

/**
 * The configuration in force at `index`: the snapshot's, then every conf entry up to `index`.
 * Conf entries in a log were each checked against the configuration before them when proposed, so
 * an invalid one here means the log itself is wrong (applyChange asserts).
 */
export function configAt(snapshot: Snapshot, entries: readonly Entry[], index: number): Config {
  let c = snapshot.config;
  for (const e of entries) {
    if (e.index > index) break;
    if (e.kind === "conf") c = applyChange(c, e.change);
  }
  return c;
}

/** Why a configuration read from a peer or a drive is malformed, or null. */
export function configProblem(c: Config): string | null {
  for (let i = 1; i < c.members.length; i++) {
    if (!(c.members[i - 1]!.id < c.members[i]!.id)) return "members are not sorted and distinct";
  }
  return null;
}

export function describeChange(change: ConfChange): string {
  return `${change.op} ${change.node}`;
}

export function describeConfig(c: Config): string {
  const voters = c.members.filter((m) => m.voter).map((m) => m.id);
  const learners = c.members.filter((m) => !m.voter).map((m) => m.id);
  return `voters=(${voters.join(",")})` + (learners.length ? ` learners=(${learners.join(",")})` : "");
}
