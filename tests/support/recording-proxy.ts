/**
 * A listener on the network, for tests that attack the management API: a TCP proxy in front of
 * the TOMA that forwards every byte both ways and records what each connection's requester sent.
 * `replay` then sends recorded bytes to the TOMA again, byte for byte, over a fresh connection,
 * as someone who recorded them would.
 */
import type { Socket, TCPSocketListener } from "bun";

export interface Recorded {
  /** Everything the requester sent on one connection, in order. */
  sent: Buffer;
}

export class RecordingProxy {
  readonly connections: Recorded[] = [];
  private readonly listener: TCPSocketListener<{ rec: Recorded; upstream: Promise<Socket> }>;

  constructor(private readonly target: { hostname: string; port: number }) {
    const self = this;
    this.listener = Bun.listen<{ rec: Recorded; upstream: Promise<Socket> }>({
      hostname: "127.0.0.1",
      port: 0,
      socket: {
        open(down) {
          const rec: Recorded = { sent: Buffer.alloc(0) };
          self.connections.push(rec);
          down.data = {
            rec,
            upstream: Bun.connect({
              ...self.target,
              socket: {
                data(_up, chunk) {
                  down.write(chunk);
                },
                close() {
                  down.end();
                },
                error() {
                  down.end();
                },
              },
            }),
          };
        },
        async data(down, chunk) {
          down.data.rec.sent = Buffer.concat([down.data.rec.sent, chunk]);
          (await down.data.upstream).write(chunk);
        },
        async close(down) {
          (await down.data.upstream).end();
        },
        error() {},
      },
    });
  }

  get address(): string {
    return `127.0.0.1:${this.listener.port}`;
  }

  /** The recorded HTTP requests, each exactly as sent: head, then Content-Length bytes of body. */
  requests(): string[] {
    const out: string[] = [];
    for (const c of this.connections) {
      const text = c.sent.toString("latin1");
      let at = 0;
      while (at < text.length) {
        const head = text.indexOf("\r\n\r\n", at);
        if (head < 0) break;
        const length = Number(/^content-length: *(\d+)/im.exec(text.slice(at, head))?.[1] ?? 0);
        const end = head + 4 + length;
        out.push(text.slice(at, end));
        at = end;
      }
    }
    return out;
  }

  stop(): void {
    this.listener.stop(true);
  }
}

/** Sends `bytes` to the TOMA on a fresh connection; returns the HTTP status codes answered, in order. */
export async function replay(to: { hostname: string; port: number }, bytes: Buffer | string, answers: number): Promise<{ statuses: number[]; text: string }> {
  let text = "";
  const done = Promise.withResolvers<void>();
  const statuses = () => [...text.matchAll(/^HTTP\/1\.1 (\d{3})/gm)].map((m) => Number(m[1]));
  const sock = await Bun.connect({
    ...to,
    socket: {
      data(_s, chunk) {
        text += Buffer.from(chunk).toString("latin1");
        if (statuses().length >= answers) done.resolve();
      },
      close() {
        done.resolve();
      },
      error() {
        done.resolve();
      },
    },
  });
  sock.write(bytes);
  const timer = setTimeout(() => done.resolve(), 5000);
  await done.promise;
  clearTimeout(timer);
  sock.end();
  return { statuses: statuses(), text };
}
