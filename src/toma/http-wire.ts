/**
 * HTTP/1.1 as the management API speaks it, parsed by hand so that every byte a stranger sends
 * is bounded before it is kept: a request head of at most `max_head_bytes`, a body announced by
 * Content-Length of at most `max_body_bytes` (refused from the header alone, before one byte of
 * it is read), no chunked bodies. Push-driven and sans-I/O: feed() bytes, get requests or an
 * error to answer before closing. Never throws on input.
 *
 * What is not spoken, on purpose: chunked request bodies (411/501: every client we have sends a
 * length), obsolete line folding, absolute-form targets, HTTP/2. Bare LF line ends are accepted
 * (RFC 9112 §2.2 allows a recipient to).
 */

export interface HttpWireLimits {
  /** Request line and headers together. */
  max_head_bytes: number;
  max_headers: number;
  max_body_bytes: number;
}

export const DEFAULT_HTTP_WIRE_LIMITS: HttpWireLimits = {
  max_head_bytes: 16 * 1024,
  max_headers: 100,
  max_body_bytes: 64 * 1024,
};

export interface HttpRequest {
  method: string;
  /** Origin form: "/v1/volumes?x=1". */
  target: string;
  /** Lower-case names; a repeated header's values joined with ", " (RFC 9110 §5.3). */
  headers: Map<string, string>;
  body: Uint8Array;
  /** The client asked to close after this request (or speaks HTTP/1.0 without keep-alive). */
  close: boolean;
}

/** A request that cannot be served: answered with this status, then the connection closes. */
export interface HttpWireError {
  status: number;
  reason: string;
}

export interface HttpResponse {
  status: number;
  headers: [string, string][];
  body: Uint8Array;
  /**
   * False for an answer that proves nothing about the requester (a route anyone may use, such as
   * a management nonce): it does not make the connection an authenticated one.
   */
  authenticates?: boolean;
}

const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
const TARGET = /^\/[\x21-\x7e]*$/;
const utf8 = new TextEncoder();
const latin1 = new TextDecoder("latin1");

export const REASONS: Record<number, string> = {
  100: "Continue",
  200: "OK",
  201: "Created",
  400: "Bad Request",
  401: "Unauthorized",
  404: "Not Found",
  405: "Method Not Allowed",
  408: "Request Timeout",
  409: "Conflict",
  410: "Gone",
  411: "Length Required",
  413: "Content Too Large",
  431: "Request Header Fields Too Large",
  500: "Internal Server Error",
  501: "Not Implemented",
  503: "Service Unavailable",
  505: "HTTP Version Not Supported",
  507: "Insufficient Storage",
};

type State = "head" | "body" | "failed";

/**
 * One connection's request stream. feed() consumes bytes; after it, `request` holds a complete
 * request (take() it, and feed the rest after answering), or `error` says what to answer before
 * closing. `expectsContinue` is set once a head asked for "100-continue" and its body is wanted.
 */
export class HttpRequestParser {
  request: HttpRequest | null = null;
  error: HttpWireError | null = null;
  /** The head asked for 100-continue and its body is now awaited: send "100 Continue" once. */
  expectsContinue = false;
  private state: State = "head";
  private head = new Uint8Array(0);
  private headLen = 0;
  private pending: Omit<HttpRequest, "body"> | null = null;
  private body = new Uint8Array(0);
  private bodyFilled = 0;

  constructor(private readonly limits: HttpWireLimits = DEFAULT_HTTP_WIRE_LIMITS) {}

  /** True while a head has begun (some bytes of the next request arrived). */
  get started(): boolean {
    return this.headLen > 0 || this.state === "body";
  }

  /** Hands over the complete request; the parser then waits for the next one. */
  take(): HttpRequest | null {
    const r = this.request;
    this.request = null;
    return r;
  }

  /**
   * Consumes src[pos..] until a request is complete, an error is found, or the bytes run out;
   * returns how many bytes were consumed. Stops at each request: call again after take().
   */
  feed(src: Uint8Array, pos = 0): number {
    const start = pos;
    while (pos < src.length && this.request === null && this.state !== "failed") {
      if (this.state === "head") pos += this.feedHead(src, pos);
      else pos += this.feedBody(src, pos);
    }
    return pos - start;
  }

  private fail(status: number, reason: string): void {
    this.state = "failed";
    this.error = { status, reason };
    this.head = new Uint8Array(0);
    this.body = new Uint8Array(0);
  }

  /** Copies head bytes up to and including the blank line that ends the head. */
  private feedHead(src: Uint8Array, pos: number): number {
    const start = pos;
    while (pos < src.length) {
      const b = src[pos++]!;
      if (this.headLen === 0 && (b === 0x0d || b === 0x0a)) continue; // RFC 9112 §2.2: skip empty lines before a request
      if (this.headLen >= this.limits.max_head_bytes) {
        this.fail(431, `request head above ${this.limits.max_head_bytes} bytes`);
        return pos - start;
      }
      if (this.headLen === this.head.length) this.growHead();
      this.head[this.headLen++] = b;
      if (b === 0x0a && this.headEnds()) {
        this.parseHead();
        return pos - start;
      }
    }
    return pos - start;
  }

  private growHead(): void {
    const next = new Uint8Array(Math.min(this.limits.max_head_bytes, Math.max(512, this.head.length * 2)));
    next.set(this.head.subarray(0, this.headLen));
    this.head = next;
  }

  /** The head ends with an empty line: LF LF or LF CR LF. */
  private headEnds(): boolean {
    const n = this.headLen;
    if (n >= 2 && this.head[n - 2] === 0x0a) return true;
    return n >= 3 && this.head[n - 2] === 0x0d && this.head[n - 3] === 0x0a;
  }

  private parseHead(): void {
    const text = latin1.decode(this.head.subarray(0, this.headLen));
    this.head = new Uint8Array(0); // the head is small, but a keep-alive connection need not keep it
    this.headLen = 0;
    const lines = text.split("\n").map((l) => (l.endsWith("\r") ? l.slice(0, -1) : l));
    while (lines.length > 0 && lines[lines.length - 1] === "") lines.pop();
    const line = lines.shift() ?? "";
    const parts = line.split(" ");
    if (parts.length !== 3) return this.fail(400, "malformed request line");
    const [method, target, version] = parts as [string, string, string];
    if (!TOKEN.test(method)) return this.fail(400, "malformed method");
    if (!/^HTTP\/1\.[01]$/.test(version)) {
      return /^HTTP\/\d(\.\d)?$/.test(version) ? this.fail(505, `${version} is not supported; use HTTP/1.1`) : this.fail(400, "malformed HTTP version");
    }
    if (!TARGET.test(target)) return this.fail(400, "the request target must be a path (origin form)");
    if (lines.length > this.limits.max_headers) return this.fail(431, `more than ${this.limits.max_headers} header fields`);
    const headers = new Map<string, string>();
    for (const l of lines) {
      if (l.startsWith(" ") || l.startsWith("\t")) return this.fail(400, "obsolete line folding is not accepted");
      const colon = l.indexOf(":");
      if (colon <= 0) return this.fail(400, "malformed header field");
      const name = l.slice(0, colon);
      if (!TOKEN.test(name)) return this.fail(400, "malformed header field name");
      const value = l.slice(colon + 1).trim();
      if (/[\x00-\x08\x0a-\x1f\x7f]/.test(value)) return this.fail(400, "control character in a header field value");
      const key = name.toLowerCase();
      const had = headers.get(key);
      headers.set(key, had === undefined ? value : `${had}, ${value}`);
    }
    if (headers.has("transfer-encoding")) {
      return this.fail(501, "request bodies must carry Content-Length (Transfer-Encoding is not accepted)");
    }
    let length = 0;
    const cl = headers.get("content-length");
    if (cl !== undefined) {
      const values = new Set(cl.split(",").map((x) => x.trim()));
      const only = values.size === 1 ? [...values][0]! : "";
      if (!/^\d{1,15}$/.test(only)) return this.fail(400, "malformed Content-Length");
      length = Number(only);
    }
    if (length > this.limits.max_body_bytes) {
      // Refused from the header alone: the body is neither read nor allocated.
      return this.fail(413, `request body of ${length} bytes above ${this.limits.max_body_bytes}`);
    }
    const conn = (headers.get("connection") ?? "").toLowerCase();
    const close = version === "HTTP/1.0" ? !/\bkeep-alive\b/.test(conn) : /\bclose\b/.test(conn);
    this.pending = { method, target, headers, close };
    if (length === 0) return this.complete(new Uint8Array(0));
    this.expectsContinue = (headers.get("expect") ?? "").toLowerCase() === "100-continue" && version === "HTTP/1.1";
    this.body = new Uint8Array(length);
    this.bodyFilled = 0;
    this.state = "body";
  }

  private feedBody(src: Uint8Array, pos: number): number {
    const n = Math.min(this.body.length - this.bodyFilled, src.length - pos);
    this.body.set(src.subarray(pos, pos + n), this.bodyFilled);
    this.bodyFilled += n;
    if (this.bodyFilled === this.body.length) {
      const body = this.body;
      this.body = new Uint8Array(0);
      this.complete(body);
    }
    return n;
  }

  private complete(body: Uint8Array): void {
    this.request = { ...this.pending!, body };
    this.pending = null;
    this.expectsContinue = false;
    this.state = "head";
  }
}

/** The bytes of a response. `head_only` for HEAD requests (Content-Length stays, the body goes). */
export function encodeResponse(r: HttpResponse, opts: { close: boolean; head_only?: boolean }): Uint8Array {
  let head = `HTTP/1.1 ${r.status} ${REASONS[r.status] ?? "Unknown"}\r\n`;
  for (const [k, v] of r.headers) {
    const name = k.toLowerCase();
    if (name === "content-length" || name === "connection" || name === "transfer-encoding") continue; // ours to set
    head += `${k}: ${v.replace(/[\r\n]/g, " ")}\r\n`;
  }
  head += `Content-Length: ${r.body.length}\r\n`;
  if (opts.close) head += "Connection: close\r\n";
  head += "\r\n";
  const h = utf8.encode(head);
  const body = opts.head_only ? new Uint8Array(0) : r.body;
  const out = new Uint8Array(h.length + body.length);
  out.set(h);
  out.set(body, h.length);
  return out;
}

/** A JSON response of the management API's shape ({error} on refusals). */
export function jsonResponse(status: number, value: unknown): HttpResponse {
  return { status, headers: [["Content-Type", "application/json;charset=utf-8"]], body: utf8.encode(JSON.stringify(value)) };
}

export const CONTINUE_BYTES = utf8.encode("HTTP/1.1 100 Continue\r\n\r\n");
