/**
 * The management API's HTTP/1.1 connections, case by case: keep-alive and pipelined requests
 * answered in order, HEAD, 100-continue, Connection: close, a 401 closing, the deadline for the
 * first request, the idle close of an authenticated connection, and the refusals of the parser
 * (431, 413, 501, 505) each closing the connection with a reason.
 */
import { describe, expect, test } from "bun:test";
import { testEnv } from "../../src/engine/nbd/test-kit.ts";
import { DEFAULT_HTTP_LIMITS, HttpServer } from "../../src/toma/http-conn.ts";
import { type HttpRequest, jsonResponse } from "../../src/toma/http-wire.ts";
import { FuzzConn, settle } from "../support/fuzz.ts";

const utf8 = new TextEncoder();

function setup(limits: Partial<typeof DEFAULT_HTTP_LIMITS> = {}) {
  const env = testEnv();
  const seen: HttpRequest[] = [];
  const server = new HttpServer(
    env,
    async (req) => {
      seen.push(req);
      if (req.headers.get("authorization") !== "Bearer ok") return jsonResponse(401, { error: "no key" });
      return jsonResponse(200, { path: req.target, body: new TextDecoder().decode(req.body) });
    },
    { ...DEFAULT_HTTP_LIMITS, ...limits },
  );
  const conn = new FuzzConn();
  server.handle(conn);
  const text = () => Buffer.concat(conn.sent).toString("latin1");
  return { env, server, conn, seen, text };
}

const AUTH = "Authorization: Bearer ok\r\n";

describe("management HTTP connections", () => {
  test("two pipelined requests in one chunk are answered in order, on one connection", async () => {
    const { conn, text, server } = setup();
    conn.deliver(utf8.encode(`GET /a HTTP/1.1\r\n${AUTH}\r\nPOST /b HTTP/1.1\r\n${AUTH}Content-Length: 2\r\n\r\nhi`));
    await settle(5);
    const t = text();
    expect(t.indexOf('"path":"/a"')).toBeGreaterThan(0);
    expect(t.indexOf('"path":"/b","body":"hi"')).toBeGreaterThan(t.indexOf('"path":"/a"'));
    expect(t.match(/HTTP\/1\.1 200 OK/g)?.length).toBe(2);
    expect(conn.closed).toBe(false);
    expect(server.unauthenticated).toBe(0); // answered with something else than 401: authenticated
  });

  test("HEAD gets the headers and the length, not the body; Connection: close closes after the answer", async () => {
    const { conn, text } = setup();
    conn.deliver(utf8.encode(`HEAD /x HTTP/1.1\r\n${AUTH}Connection: close\r\n\r\n`));
    await settle(5);
    expect(text()).toMatch(/^HTTP\/1\.1 200 OK\r\n.*Content-Length: \d+\r\nConnection: close\r\n\r\n$/s);
    expect(conn.closed).toBe(true);
  });

  test("Expect: 100-continue gets its interim answer before the body is sent", async () => {
    const { conn, text } = setup();
    conn.deliver(utf8.encode(`POST /c HTTP/1.1\r\n${AUTH}Content-Length: 3\r\nExpect: 100-continue\r\n\r\n`));
    await settle();
    expect(text()).toBe("HTTP/1.1 100 Continue\r\n\r\n");
    conn.deliver(utf8.encode("abc"));
    await settle(5);
    expect(text()).toContain('"body":"abc"');
  });

  test("a 401 closes the connection; what followed it is never handled", async () => {
    const { conn, text, seen } = setup();
    conn.deliver(utf8.encode("GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n"));
    await settle(5);
    expect(text()).toStartWith("HTTP/1.1 401 Unauthorized\r\n");
    expect(text()).toContain("Connection: close");
    expect(conn.closed).toBe(true);
    expect(seen.map((r) => r.target)).toEqual(["/a"]);
  });

  test("the deadline closes a connection whose first request is not complete (408), not one being answered", async () => {
    const { env, conn, text, server } = setup();
    conn.deliver(utf8.encode("GET /slow HTTP/1.1\r\nHost: x"));
    await settle();
    env.fireTimers();
    await settle();
    expect(text()).toStartWith("HTTP/1.1 408 Request Timeout\r\n");
    expect(conn.closed).toBe(true);
    expect(server.unauthenticated).toBe(0);
  });

  test("an authenticated connection with no complete request for the idle timeout is closed", async () => {
    const { env, conn } = setup();
    conn.deliver(utf8.encode(`GET /a HTTP/1.1\r\n${AUTH}\r\n`));
    await settle(5);
    expect(conn.closed).toBe(false);
    env.fireTimers(); // the idle timer (the pre-auth deadline was cancelled on authentication)
    await settle();
    expect(conn.closed).toBe(true);
  });

  for (const [what, bytes, status] of [
    ["a head above the limit", `GET / HTTP/1.1\r\nX: ${"a".repeat(20_000)}\r\n\r\n`, 431],
    ["a body above the limit", "POST / HTTP/1.1\r\nContent-Length: 70000\r\n\r\n", 413],
    ["a chunked body", "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 501],
    ["HTTP/2", "GET / HTTP/2\r\n\r\n", 505],
    ["garbage", "\x00\x01\x02 nonsense\r\n\r\n", 400],
    ["two different lengths", "POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400],
  ] as const) {
    test(`${what}: ${status}, closed, never handled`, async () => {
      const { conn, text, seen, env } = setup();
      conn.deliver(utf8.encode(bytes));
      await settle(3);
      expect(text()).toStartWith(`HTTP/1.1 ${status} `);
      expect(conn.closed).toBe(true);
      expect(seen).toEqual([]);
      expect(env.logged.some((l) => l.msg === "closing management connection")).toBe(true);
    });
  }
});
