/**
 * Stale topology generations found from one writer's own records. A client numbers its sends to
 * a volume (seq) at the moment it plans them with its current topology, and its topology only
 * moves forward; so for a correct client, seq and generation grow together. A record whose
 * generation is below that of a record with a lower seq of the same client and volume was written
 * with a topology the client had already left behind: a stale write. The rule needs no clock and
 * no other client, and it holds on every layout (mirrored or not). It cannot see a client that
 * never wrote with the newer generation (then its legs, if mirrored, may: legs.ts).
 *
 * Memory: per (client, volume), one entry per generation seen (lowest and highest seq).
 */

export interface OrderRecord {
  client_id: number;
  volume_uuid: string;
  generation: number;
  seq: number;
}

/** Generation `generation` of this writer is stale above seq `after_seq`. */
export interface StaleRule {
  client_id: number;
  volume_uuid: string;
  generation: number;
  /** The lowest seq written with a newer generation... */
  after_seq: number;
  /** ...and that generation. */
  newer_generation: number;
}

interface SeqRange {
  min_seq: number;
  max_seq: number;
}

function writerKey(r: { client_id: number; volume_uuid: string }): string {
  return `${r.client_id}|${r.volume_uuid}`;
}

export class GenerationOrder {
  private readonly writers = new Map<string, { client_id: number; volume_uuid: string; gens: Map<number, SeqRange> }>();
  private rules: Map<string, StaleRule> | null = null;
  /** The last writer seen: consecutive sectors almost always share it (no key string per sector). */
  private last: { client_id: number; volume_uuid: string; gens: Map<number, SeqRange> } | null = null;

  /** Records one trusted header. */
  add(r: OrderRecord): void {
    let w = this.last;
    if (w === null || w.client_id !== r.client_id || w.volume_uuid !== r.volume_uuid) {
      const k = writerKey(r);
      let found = this.writers.get(k);
      if (found === undefined) this.writers.set(k, (found = { client_id: r.client_id, volume_uuid: r.volume_uuid, gens: new Map() }));
      this.last = w = found;
    }
    const g = w.gens.get(r.generation);
    if (g === undefined) w.gens.set(r.generation, { min_seq: r.seq, max_seq: r.seq });
    else {
      if (r.seq < g.min_seq) g.min_seq = r.seq;
      if (r.seq > g.max_seq) g.max_seq = r.seq;
    }
  }

  /** After every record was added: the generations that were used after a newer one. */
  finish(): StaleRule[] {
    const out: StaleRule[] = [];
    for (const w of this.writers.values()) {
      const gens = [...w.gens.entries()].sort((a, b) => a[0] - b[0]);
      // Walking down from the newest generation: the lowest seq of any newer generation.
      let min: { seq: number; generation: number } | null = null;
      for (let i = gens.length - 1; i >= 0; i--) {
        const [generation, range] = gens[i]!;
        if (min !== null && range.max_seq > min.seq) {
          out.push({ client_id: w.client_id, volume_uuid: w.volume_uuid, generation, after_seq: min.seq, newer_generation: min.generation });
        }
        if (min === null || range.min_seq < min.seq) min = { seq: range.min_seq, generation };
      }
    }
    this.rules = new Map(out.map((r) => [`${writerKey(r)}|${r.generation}`, r]));
    return out;
  }

  /** The rule this record breaks (finish() first), or null. */
  stale(r: OrderRecord): StaleRule | null {
    const rule = this.rules?.get(`${writerKey(r)}|${r.generation}`);
    return rule !== undefined && r.seq > rule.after_seq ? rule : null;
  }
}
