/**
 * CRC-32C (Castagnoli), the checksum that frames audit records.
 *
 * Reflected polynomial 0x82F63B78 (RFC 3720 §12.1, the iSCSI CRC), initial
 * value 0xFFFFFFFF, final XOR 0xFFFFFFFF. Check value:
 * crc32c("123456789") = 0xE3069283.
 *
 * Table-driven, eight bytes per step ("slicing-by-8"): T[0] is the classic
 * byte table and T[k][n] is T[0][n] advanced k more zero bytes.
 */

const POLY = 0x82f63b78;
const T = new Uint32Array(8 * 256);

for (let n = 0; n < 256; n++) {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ POLY : c >>> 1;
  T[n] = c >>> 0;
}
for (let n = 0; n < 256; n++) {
  for (let k = 1; k < 8; k++) {
    const prev = T[(k - 1) * 256 + n]!;
    T[k * 256 + n] = (prev >>> 8) ^ T[prev & 0xff]!;
  }
}

const encoder = new TextEncoder();

/**
 * CRC-32C of `data` (strings are hashed as UTF-8). Pass a previous result as
 * `crc` to continue a checksum over several pieces.
 */
export function crc32c(data: Uint8Array | string, crc = 0): number {
  const b = typeof data === "string" ? encoder.encode(data) : data;
  return crc32cRange(b, 0, b.length, crc);
}

/** CRC-32C of `b[start, end)`, without making a view of it. */
export function crc32cRange(b: Uint8Array, start: number, end: number, crc = 0): number {
  let c = ~crc >>> 0;
  let i = start;
  const end8 = end - ((end - start) % 8);
  for (; i < end8; i += 8) {
    const lo = c ^ (b[i]! | (b[i + 1]! << 8) | (b[i + 2]! << 16) | (b[i + 3]! << 24));
    c =
      T[1792 + (lo & 0xff)]! ^
      T[1536 + ((lo >>> 8) & 0xff)]! ^
      T[1280 + ((lo >>> 16) & 0xff)]! ^
      T[1024 + (lo >>> 24)]! ^
      T[768 + b[i + 4]!]! ^
      T[512 + b[i + 5]!]! ^
      T[256 + b[i + 6]!]! ^
      T[b[i + 7]!]!;
  }
  for (; i < end; i++) c = T[(c ^ b[i]!) & 0xff]! ^ (c >>> 8);
  return ~c >>> 0;
}
