/**
 * Runs a transcript: a text file of commands, each followed by the output it must produce, in the
 * style of etcd raft's testdata (datadriven). A block is one command line, a line `----`, then
 * the expected output up to a blank line. Lines starting with `#` between blocks are comments.
 *
 * Commands (ids are node ids; lists are comma-separated):
 *   init voters=1,2,3 [learners=4] [election=10] [heartbeat=1] [max-entries=64] [chunk=BYTES]
 *                                    founders from one bootstrap snapshot; chunk: snapshot bytes
 *                                    per message (small, so that a snapshot takes several)
 *   add-node ID                      a blank node in no configuration (a new or amnesic TOMA)
 *   tick IDS [xN]                    N ticks on each node, its Ready handled after each
 *   campaign ID                      start an election now (through PreVote)
 *   step FROM TO TYPE k=v ...        hand TO a message made up here (no entries), e.g.
 *                                    `step 3 1 vote term=5 last_index=2 last_term=2`; missing
 *                                    numbers are 0, `reject=true` for a rejection
 *   propose ID DATA                  leader: append a normal entry
 *   propose-conf ID OP NODE          OP: add-learner, promote, remove
 *   read-index ID CTX                leader: ask for a read point
 *   compact ID INDEX                 the node's application snapshots its state at INDEX
 *   stabilize [IDS]                  deliver messages and handle Readys until nothing moves
 *   run IDS xN                       N rounds of: one tick on each node, then stabilize; prints
 *                                    only the nodes' trace lines (a network that delivers promptly)
 *   deliver FROM->TO                 deliver what is queued on one link (and handle the receiver)
 *   drop FROM->TO                    discard what is queued on one link
 *   drop FROM->TO N                  discard the Nth message (from 1) queued on one link
 *   dup FROM->TO                     what is queued on one link is queued twice (each message again, after)
 *   reverse FROM->TO                 what is queued on one link arrives in the reverse order
 *   snapshot-lost ID TO              the transport tells leader ID that a snapshot chunk to TO was lost
 *   queued FROM->TO                  print what is queued on one link, without delivering it
 *   cut FROM->TO                     from now on, messages FROM->TO are lost (one way)
 *   partition A,B|C,D[|...]          only these cuts from now: every link between the groups, both ways
 *   heal                             undo every cut
 *   crash ID                         the node stops; memory lost, its drives keep the last persist
 *   restart ID                       the node starts again from what it persisted
 *   amnesia ID as NEWID              ID is gone for good; NEWID starts blank on that server
 *   set-random ID N                  the node's election jitter is N ticks from now on
 *   status [IDS] | log ID | applied ID | progress ID
 *
 * Output: messages delivered (`1->2 app ...`), each node's trace lines (`1: became leader ...`),
 * read points confirmed, and `VIOLATION:` when two nodes apply different entries at one index
 * (never in a recorded transcript; the planted-bug test expects it). Ready summaries are not
 * printed: the world always persists a Ready before sending its messages. REWRITE=1 regenerates
 * the expected blocks; every regenerated block must be read and judged by a person.
 */
import { assert } from "../../../src/engine/assert.ts";
import { describeConfig, votersConfig } from "../../../src/toma/consensus/config.ts";
import { describeEntry, describeMessage } from "../../../src/toma/consensus/messages.ts";
import { blankDurableState, bootstrapDurableState, Raft, type Ready } from "../../../src/toma/consensus/raft.ts";
import { type ConfChange, type DurableState, MAX_SNAPSHOT_CHUNK_BYTES, type Message, type NodeId } from "../../../src/toma/consensus/types.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();

/** The application of a transcript: the list of applied payloads; its snapshot is that list as JSON. */
class App {
  applied: string[] = [];
  index = 0;
  install(index: number, data: Uint8Array): void {
    this.applied = data.length ? (JSON.parse(dec.decode(data)) as string[]) : [];
    this.index = index;
  }
  data(): Uint8Array {
    return enc.encode(JSON.stringify(this.applied));
  }
}

interface Node {
  id: NodeId;
  raft: Raft | null;
  persisted: DurableState;
  app: App;
  random: number;
}

export class TranscriptWorld {
  readonly nodes = new Map<NodeId, Node>();
  /** Queued messages per link "from->to", in send order. */
  private readonly queues = new Map<string, Message[]>();
  private readonly cuts = new Set<string>();
  /** What each index was applied as, by anyone: a second, different one is printed as a VIOLATION. */
  private readonly applied = new Map<number, string>();
  private out: string[] = [];
  /** While set, delivered messages are not printed (trace lines still are). */
  private quiet = false;
  private election = 10;
  private heartbeat = 1;
  private max_entries = 64;
  private chunk = MAX_SNAPSHOT_CHUNK_BYTES;

  run(cmd: string): string {
    this.out = [];
    const [name, ...args] = cmd.trim().split(/\s+/);
    const kv = Object.fromEntries(args.filter((a) => a.includes("=")).map((a) => a.split("=", 2) as [string, string]));
    const pos = args.filter((a) => !a.includes("="));
    switch (name) {
      case "init": {
        this.election = Number(kv.election ?? 10);
        this.heartbeat = Number(kv.heartbeat ?? 1);
        this.max_entries = Number(kv["max-entries"] ?? 64);
        this.chunk = Number(kv.chunk ?? MAX_SNAPSHOT_CHUNK_BYTES);
        const voters = list(kv.voters);
        const learners = list(kv.learners);
        const config = votersConfig(voters);
        for (const l of learners) config.members.push({ id: l, voter: false, address: "" });
        config.members.sort((a, b) => (a.id < b.id ? -1 : 1));
        for (const id of [...voters, ...learners]) this.addNode(id, bootstrapDurableState(config, enc.encode("[]")));
        break;
      }
      case "add-node":
        this.addNode(pos[0]!, blankDurableState());
        break;
      case "tick": {
        const n = pos[1]?.startsWith("x") ? Number(pos[1].slice(1)) : 1;
        for (let i = 0; i < n; i++) {
          for (const id of list(pos[0])) {
            this.live(id).tick();
            this.handleReady(id);
          }
        }
        break;
      }
      case "campaign":
        this.live(pos[0]!).campaign();
        this.handleReady(pos[0]!);
        break;
      case "step": {
        const [from, to, type] = pos as [string, string, string];
        const fields: Record<string, unknown> = { type, from, to };
        const numbers: Record<string, string[]> = {
          pre_vote: ["term", "last_index", "last_term"],
          vote: ["term", "last_index", "last_term"],
          pre_vote_resp: ["term"],
          vote_resp: ["term"],
          app: ["term", "prev_index", "prev_term", "commit"],
          app_resp: ["term", "index", "hint_index", "hint_term"],
          heartbeat: ["term", "commit", "read_round"],
          heartbeat_resp: ["term", "read_round"],
        };
        assert(numbers[type], `step: no made-up ${type} messages`);
        for (const k of numbers[type]) fields[k] = Number(kv[k] ?? 0);
        if (type.endsWith("_resp") && type !== "heartbeat_resp") fields.reject = kv.reject === "true";
        if (type === "app") fields.entries = [];
        const m = fields as Message;
        this.print(describeMessage(m));
        this.live(to).step(m);
        this.handleReady(to);
        break;
      }
      case "propose": {
        const r = this.live(pos[0]!).propose(enc.encode(pos.slice(1).join(" ")));
        this.print(r.ok ? `proposed at ${r.term}/${r.index}` : `refused: ${r.reason}`);
        this.handleReady(pos[0]!);
        break;
      }
      case "propose-conf": {
        const op = pos[1]!.replace("-", "_");
        const node = pos[2]!;
        const change = (op === "add_learner" ? { op, node, address: "" } : { op, node }) as ConfChange;
        const r = this.live(pos[0]!).proposeConfChange(change);
        this.print(r.ok ? `proposed at ${r.term}/${r.index}` : `refused: ${r.reason}`);
        this.handleReady(pos[0]!);
        break;
      }
      case "read-index": {
        const r = this.live(pos[0]!).readIndex(Number(pos[1]));
        if (!r.ok) this.print(`refused: ${r.reason}`);
        this.handleReady(pos[0]!);
        break;
      }
      case "compact": {
        const node = this.nodes.get(pos[0]!)!;
        const index = Number(pos[1]);
        assert(node.app.index === index, `compact ${index}: the application is at ${node.app.index}`);
        node.raft!.compact(index, node.app.data());
        this.handleReady(node.id);
        break;
      }
      case "stabilize":
        this.stabilize(pos[0] ? new Set(list(pos[0])) : null);
        break;
      case "run": {
        const n = pos[1]?.startsWith("x") ? Number(pos[1].slice(1)) : 1;
        this.quiet = true;
        try {
          for (let i = 0; i < n; i++) {
            for (const id of list(pos[0])) {
              this.live(id).tick();
              this.handleReady(id);
            }
            this.stabilize(null);
          }
        } finally {
          this.quiet = false;
        }
        break;
      }
      case "deliver": {
        const [from, to] = pos[0]!.split("->") as [string, string];
        this.deliverLink(from, to);
        this.handleReady(to);
        break;
      }
      case "drop":
        if (pos[1] === undefined) this.queues.delete(pos[0]!);
        else this.queues.get(pos[0]!)?.splice(Number(pos[1]) - 1, 1);
        break;
      case "dup": {
        const q = this.queues.get(pos[0]!);
        if (q) q.push(...q);
        break;
      }
      case "reverse":
        this.queues.get(pos[0]!)?.reverse();
        break;
      case "snapshot-lost":
        this.live(pos[0]!).reportSnapshot(pos[1]!, false);
        this.handleReady(pos[0]!);
        break;
      case "queued":
        for (const m of this.queues.get(pos[0]!) ?? []) this.print(describeMessage(m));
        break;
      case "cut":
        this.cuts.add(pos[0]!);
        break;
      case "partition": {
        this.cuts.clear();
        const groups = pos[0]!.split("|").map(list);
        for (const a of groups) for (const b of groups) if (a !== b) for (const x of a) for (const y of b) this.cuts.add(`${x}->${y}`);
        break;
      }
      case "heal":
        this.cuts.clear();
        break;
      case "crash":
        // Messages already on their way to it stay queued: delivered after a restart, or lost
        // (skipped at delivery) while it is down.
        this.nodes.get(pos[0]!)!.raft = null;
        break;
      case "restart": {
        const node = this.nodes.get(pos[0]!)!;
        assert(node.raft === null, `${node.id} is running`);
        this.startRaft(node);
        break;
      }
      case "amnesia": {
        assert(pos[1] === "as", "amnesia ID as NEWID");
        const old = this.nodes.get(pos[0]!)!;
        old.raft = null;
        this.nodes.delete(old.id);
        for (const k of [...this.queues.keys()]) if (k.endsWith(`->${old.id}`)) this.queues.delete(k);
        this.addNode(pos[2]!, blankDurableState());
        break;
      }
      case "set-random":
        this.nodes.get(pos[0]!)!.random = Number(pos[1]);
        break;
      case "status":
        for (const id of pos[0] ? list(pos[0]) : [...this.nodes.keys()]) this.print(this.statusLine(id));
        break;
      case "log": {
        const r = this.live(pos[0]!);
        const s = r.snapshot();
        this.print(`${s.term}/${s.index} snapshot ${describeConfig(s.config)}`);
        for (const e of r.entries()) this.print(describeEntry(e));
        break;
      }
      case "applied": {
        const app = this.nodes.get(pos[0]!)!.app;
        this.print(`index=${app.index} [${app.applied.map((a) => JSON.stringify(a)).join(", ")}]`);
        break;
      }
      case "progress": {
        for (const [id, p] of Object.entries(this.live(pos[0]!).status().progress)) this.print(`${id}: match=${p.match} next=${p.next} ${p.state}`);
        break;
      }
      default:
        throw new Error(`unknown command '${name}'`);
    }
    return this.out.length ? this.out.join("\n") : "ok";
  }

  /** What the command that threw had printed before it threw. */
  partial(): string[] {
    return this.out;
  }

  private addNode(id: NodeId, start: DurableState): void {
    assert(!this.nodes.has(id), `${id} exists`);
    const node: Node = { id, raft: null, persisted: start, app: new App(), random: 0 };
    this.nodes.set(id, node);
    this.startRaft(node);
  }

  private startRaft(node: Node): void {
    node.app = new App();
    node.raft = new Raft(
      {
        id: node.id,
        election_ticks: this.election,
        heartbeat_ticks: this.heartbeat,
        max_entries_per_msg: this.max_entries,
        max_snapshot_chunk_bytes: this.chunk,
        random: (n) => Math.min(node.random, n - 1),
        trace: (line) => this.print(`${node.id}: ${line}`),
      },
      node.persisted,
    );
    this.handleReady(node.id);
  }

  private live(id: NodeId): Raft {
    const r = this.nodes.get(id)?.raft;
    assert(r, `${id} is not running`);
    return r;
  }

  private print(line: string): void {
    this.out.push(line);
  }

  /** Persist, then send, then apply: the runtime's order. */
  private handleReady(id: NodeId): boolean {
    const node = this.nodes.get(id);
    const r = node?.raft;
    if (!node || !r || !r.hasReady()) return false;
    const rd: Ready = r.ready();
    if (rd.persist) node.persisted = rd.persist;
    for (const m of rd.messages) {
      const link = `${m.from}->${m.to}`;
      if (this.cuts.has(link) || !this.nodes.has(m.to)) continue;
      let q = this.queues.get(link);
      if (!q) this.queues.set(link, (q = []));
      q.push(m);
    }
    if (rd.snapshot) node.app.install(rd.snapshot.index, rd.snapshot.data);
    for (const e of rd.committed) {
      assert(e.index === node.app.index + 1, `${id} applies ${e.index} after ${node.app.index}`);
      const what = describeEntry(e);
      const before = this.applied.get(e.index);
      if (before !== undefined && before !== what) this.print(`VIOLATION: ${id} applies ${what}, another node applied ${before}`);
      this.applied.set(e.index, what);
      node.app.index = e.index;
      if (e.kind === "normal" && e.data.length > 0) node.app.applied.push(dec.decode(e.data));
    }
    for (const rs of rd.read_states) this.print(`${id}: read ${rs.ctx} ready at index ${rs.index}`);
    r.advance(rd);
    return true;
  }

  private deliverLink(from: NodeId, to: NodeId): boolean {
    const q = this.queues.get(`${from}->${to}`);
    if (!q || q.length === 0) return false;
    this.queues.delete(`${from}->${to}`);
    for (const m of q) {
      const r = this.nodes.get(to)?.raft;
      if (!this.quiet) this.print(describeMessage(m) + (r ? "" : " (lost: down)"));
      r?.step(m);
    }
    return true;
  }

  private stabilize(only: Set<NodeId> | null): void {
    const inScope = (id: NodeId) => only === null || only.has(id);
    for (let round = 0; round < 1000; round++) {
      let moved = false;
      for (const id of [...this.nodes.keys()].sort()) if (inScope(id)) moved = this.handleReady(id) || moved;
      for (const link of [...this.queues.keys()].sort()) {
        const [from, to] = link.split("->") as [string, string];
        if (inScope(from) && inScope(to)) moved = this.deliverLink(from, to) || moved;
      }
      if (!moved) return;
    }
    throw new Error("stabilize did not settle in 1000 rounds");
  }

  private statusLine(id: NodeId): string {
    const node = this.nodes.get(id)!;
    if (!node.raft) return `${id}: down`;
    const s = node.raft.status();
    return (
      `${id}: ${s.role} term=${s.term} vote=${s.vote ?? "-"} lead=${s.lead ?? "-"} commit=${s.commit} applied=${s.applied} ` +
      `last=${s.last_term}/${s.last_index}${s.snapshot_index > 1 ? ` snap=${s.snapshot_index}` : ""} ${describeConfig(s.config)}`
    );
  }
}

function list(s: string | undefined): string[] {
  return s ? s.split(",").filter(Boolean) : [];
}

/** Runs every block of a transcript; returns the file with the actual outputs in place. */
export function runTranscript(text: string): string {
  const world = new TranscriptWorld();
  const lines = text.split("\n");
  const result: string[] = [];
  let i = 0;
  while (i < lines.length) {
    const line = lines[i]!;
    if (line.trim() === "" || line.startsWith("#")) {
      result.push(line);
      i++;
      continue;
    }
    assert(lines[i + 1] === "----", `line ${i + 2}: expected ---- after command '${line}'`);
    let output: string;
    try {
      output = world.run(line);
    } catch (e) {
      output = [...world.partial(), `error: ${(e as Error).message}`].join("\n");
    }
    result.push(line, "----", output);
    i += 2;
    while (i < lines.length && lines[i]!.trim() !== "") i++;
  }
  return result.join("\n");
}
