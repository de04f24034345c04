/**
 * NBD URIs (the NBD URI standard, as nbdinfo and qemu take them) to what connectNbd needs:
 *   nbd://HOST[:PORT]/EXPORT            → "HOST:PORT" (port 10809 by default)
 *   nbd+unix:///EXPORT?socket=PATH      → "unix:PATH"
 */
export const NBD_DEFAULT_PORT = 10809;

export function parseNbdUri(uri: string): { address: string; export_name: string } | string {
  let u: URL;
  try {
    u = new URL(uri);
  } catch {
    return `not a URI: '${uri}'`;
  }
  const export_name = decodeURIComponent(u.pathname.replace(/^\//, ""));
  if (u.protocol === "nbd+unix:") {
    const socket = u.searchParams.get("socket");
    if (u.host !== "") return `nbd+unix URI must have no host: '${uri}'`;
    if (!socket) return `nbd+unix URI needs ?socket=PATH: '${uri}'`;
    return { address: `unix:${socket}`, export_name };
  }
  if (u.protocol === "nbd:") {
    if (u.hostname === "") return `nbd URI needs a host: '${uri}'`;
    const host = u.hostname.startsWith("[") ? u.hostname.slice(1, -1) : u.hostname;
    return { address: `${host}:${u.port || NBD_DEFAULT_PORT}`, export_name };
  }
  return `unsupported NBD URI scheme '${u.protocol}' (use nbd:// or nbd+unix://)`;
}
