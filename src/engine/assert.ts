/**
 * Invariant checks that stay on in production (TigerBeetle's rule): a broken invariant means the
 * process's own state is wrong, and carrying on could write that wrong state to drives or peers.
 * Stopping loudly is the safe failure. Never use it for input from the network or a drive: bad
 * input gets a clear error and changes nothing.
 */
export class AssertionError extends Error {
  override name = "AssertionError";
}

export function assert(condition: unknown, message: string | (() => string)): asserts condition {
  if (!condition) throw new AssertionError(typeof message === "string" ? message : message());
}
