/**
 * The set of exports an NBD server offers, by name. The client daemon adds an export when it
 * attaches a volume and removes it when it detaches; the server reacts to removals by draining the
 * connections that serve that export (see NbdServer.detach).
 */
import type { DriveStore } from "../drive/store.ts";
import { MAX_STRING_BYTES } from "./constants.ts";

export interface NbdExport {
  /** Anything that implements DriveStore: a drive, a remote drive, a volume. */
  readonly store: DriveStore;
  /** Shown to clients by NBD_OPT_LIST and NBD_INFO_DESCRIPTION. */
  readonly description?: string;
  /** Advertise NBD_FLAG_READ_ONLY and refuse writes, trims and zeroing with EPERM. */
  readonly read_only?: boolean;
}

type RemoveListener = (name: string, exp: NbdExport) => void;

const utf8 = new TextEncoder();

/** Why a name cannot be an export name, or null when it can. */
export function invalidExportName(name: string): string | null {
  if (name.includes("\0")) return "export name contains NUL";
  if (utf8.encode(name).length > MAX_STRING_BYTES) return `export name longer than ${MAX_STRING_BYTES} bytes`;
  return null;
}

/**
 * What one listener's connections may see: NBD_OPT_LIST lists `names()`, and EXPORT_NAME, INFO
 * and GO find only what `get` finds. The registry itself sees everything; a view (`view`) sees
 * the names it was given.
 */
export interface ExportLookup {
  get(name: string): NbdExport | undefined;
  names(): string[];
}

export class ExportRegistry implements ExportLookup {
  private readonly byName = new Map<string, NbdExport>();
  private readonly removeListeners = new Set<RemoveListener>();

  add(name: string, exp: NbdExport): void {
    const why = invalidExportName(name);
    if (why) throw new Error(`cannot add NBD export '${name}': ${why}`);
    if (exp.description !== undefined && utf8.encode(exp.description).length > MAX_STRING_BYTES) {
      throw new Error(`cannot add NBD export '${name}': description longer than ${MAX_STRING_BYTES} bytes`);
    }
    if (this.byName.has(name)) throw new Error(`NBD export '${name}' already exists`);
    this.byName.set(name, exp);
  }

  /** Removes the export; connections already serving it are drained by the server. */
  remove(name: string): NbdExport | undefined {
    const exp = this.byName.get(name);
    if (!exp) return undefined;
    this.byName.delete(name);
    for (const fn of [...this.removeListeners]) fn(name, exp);
    return exp;
  }

  get(name: string): NbdExport | undefined {
    return this.byName.get(name);
  }

  /** Names in insertion order (the order NBD_OPT_LIST reports them). */
  names(): string[] {
    return [...this.byName.keys()];
  }

  /**
   * The exports among `names` (live: one added later under a listed name shows, one removed
   * vanishes): one listener, one volume, unless the operator listed more.
   */
  view(names: Iterable<string>): ExportLookup {
    const only = new Set(names);
    return {
      get: (name) => (only.has(name) ? this.byName.get(name) : undefined),
      names: () => this.names().filter((n) => only.has(n)),
    };
  }

  /** Returns the unsubscribe function. */
  onRemove(fn: RemoveListener): () => void {
    this.removeListeners.add(fn);
    return () => this.removeListeners.delete(fn);
  }
}
