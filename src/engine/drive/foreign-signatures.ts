/**
 * Recognises what else a drive might hold, so format refuses to destroy a filesystem or volume
 * someone forgot about. Only the signatures of what is likely on a Linux server's disks; an
 * unknown one is not proof of emptiness, which is why format also takes `force`.
 */

/** Bytes from offset 0 that cover every signature below. */
export const FOREIGN_PROBE_BYTES = 68 * 1024;

interface Signature {
  name: string;
  offset: number;
  magic: number[];
}

const ascii = (s: string) => Array.from(s, (c) => c.charCodeAt(0));

const SIGNATURES: Signature[] = [
  { name: "ext2/3/4 filesystem", offset: 1080, magic: [0x53, 0xef] },
  { name: "XFS filesystem", offset: 0, magic: ascii("XFSB") },
  { name: "btrfs filesystem", offset: 65600, magic: ascii("_BHRfS_M") },
  { name: "LUKS encrypted volume", offset: 0, magic: [...ascii("LUKS"), 0xba, 0xbe] },
  { name: "LVM physical volume", offset: 512, magic: ascii("LABELONE") },
  { name: "GPT partition table", offset: 512, magic: ascii("EFI PART") },
  { name: "Linux swap", offset: 4086, magic: ascii("SWAPSPACE2") },
  { name: "Linux md RAID member (1.1)", offset: 0, magic: [0xfc, 0x4e, 0x2b, 0xa9] },
  { name: "Linux md RAID member (1.2)", offset: 4096, magic: [0xfc, 0x4e, 0x2b, 0xa9] },
  { name: "DOS/MBR partition table", offset: 510, magic: [0x55, 0xaa] },
];

/** The name of the first known foreign signature in the drive's first bytes, or null. */
export function detectForeignSignature(head: Uint8Array): string | null {
  for (const s of SIGNATURES) {
    if (head.length < s.offset + s.magic.length) continue;
    if (s.magic.every((m, i) => head[s.offset + i] === m)) return s.name;
  }
  return null;
}
