/** Drives, clusters and volumes are known by UUIDs; on the wire 16 bytes, in text the usual form. */
export function uuidToString(b: Uint8Array): string {
  if (b.length !== 16) throw new Error(`uuid must be 16 bytes, got ${b.length}`);
  const h = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

export function uuidFromString(s: string): Uint8Array {
  const h = s.replace(/-/g, "");
  if (!/^[0-9a-fA-F]{32}$/.test(h)) throw new Error(`invalid uuid '${s}'`);
  const b = new Uint8Array(16);
  for (let i = 0; i < 16; i++) b[i] = parseInt(h.slice(i * 2, i * 2 + 2), 16);
  return b;
}

export const NIL_UUID = "00000000-0000-0000-0000-000000000000";

export function isNilUuid(b: Uint8Array): boolean {
  return b.every((x) => x === 0);
}
