/**
 * What every facade over a C library does alike: the library is opened once, on first use, and
 * may be missing (the caller then takes its fallback); errno is read through the library's own
 * `__errno_location`, right after the call that failed, on the thread that made it.
 */
import { read, type Pointer } from "bun:ffi";

/** `open` runs once, at the first call; a throw (no such library, a missing symbol) gives null. */
export function lazyLibrary<T>(open: () => T): () => T | null {
  let lib: T | null | undefined;
  return () => {
    if (lib === undefined) {
      try {
        lib = open();
      } catch {
        lib = null;
      }
    }
    return lib;
  };
}

/** errno of the last failed call on this thread. */
export function errnoOf(l: { symbols: { __errno_location: () => unknown } }): number {
  // bun:ffi types a returned pointer by the whole table's return types; it is a Pointer or null.
  const p = l.symbols.__errno_location() as Pointer | null;
  return p === null ? 0 : read.i32(p, 0);
}
