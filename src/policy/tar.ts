/**
 * Just enough of a tar reader to take `policy.wasm` and `data.json` out of
 * an `opa build` bundle (a gzipped POSIX ustar archive written by Go's
 * archive/tar). Reads regular files only; directories, links and the like
 * are skipped. Entry names are returned without a leading "/".
 *
 * Format: POSIX.1-1988 ustar with POSIX.1-2001 pax extended headers
 * (https://pubs.opengroup.org/onlinepubs/9699919799/utilities/pax.html),
 * plus GNU long names ('L'), which Go writes for long paths in GNU mode.
 */
import { AgateError } from "../core/errors.ts";

const BLOCK = 512;

/** Returns the regular files of a gzipped tar, by name. Throws AgateError("BUNDLE_INVALID") on a malformed archive. */
export function readTarGz(gz: Uint8Array): Map<string, Uint8Array> {
  let tar: Uint8Array;
  try {
    tar = Bun.gunzipSync(gz as Uint8Array<ArrayBuffer>);
  } catch (e) {
    throw new AgateError("BUNDLE_INVALID", "The bundle is not valid gzip; rebuild it with `agate policy build`.", {
      reason: String(e),
    });
  }
  return readTar(tar);
}

/** Returns the regular files of an uncompressed tar, by name. */
export function readTar(tar: Uint8Array): Map<string, Uint8Array> {
  const files = new Map<string, Uint8Array>();
  const text = new TextDecoder();
  let longName: string | undefined; // from a GNU 'L' or pax 'x' header, for the next entry
  let at = 0;
  while (at + BLOCK <= tar.length) {
    const header = tar.subarray(at, at + BLOCK);
    if (header.every((b) => b === 0)) break; // end of archive: two zero blocks
    if (!checksumOk(header)) {
      throw new AgateError("BUNDLE_INVALID", "The bundle's tar header checksum does not match; the file is corrupt.", {
        offset: at,
      });
    }
    const size = octal(header.subarray(124, 136));
    const type = String.fromCharCode(header[156] ?? 0);
    const bodyAt = at + BLOCK;
    if (bodyAt + size > tar.length) {
      throw new AgateError("BUNDLE_INVALID", "The bundle's tar archive is truncated.", {
        offset: at,
        want: bodyAt + size,
        got: tar.length,
      });
    }
    const body = tar.subarray(bodyAt, bodyAt + size);
    at = bodyAt + Math.ceil(size / BLOCK) * BLOCK;

    if (type === "L") {
      longName = cString(text, body);
      continue;
    }
    if (type === "x") {
      longName = paxPath(text, body) ?? longName;
      continue;
    }
    const name = longName ?? ustarName(text, header);
    longName = undefined;
    if (type === "0" || type === "\0") files.set(name.replace(/^\/+/, ""), body);
  }
  return files;
}

function ustarName(text: TextDecoder, header: Uint8Array): string {
  const name = cString(text, header.subarray(0, 100));
  const magic = cString(text, header.subarray(257, 263));
  if (!magic.startsWith("ustar")) return name;
  const prefix = cString(text, header.subarray(345, 500));
  return prefix ? `${prefix}/${name}` : name;
}

function cString(text: TextDecoder, field: Uint8Array): string {
  const end = field.indexOf(0);
  return text.decode(end === -1 ? field : field.subarray(0, end));
}

/** Numeric fields are NUL/space-terminated octal ASCII. */
function octal(field: Uint8Array): number {
  if ((field[0] ?? 0) & 0x80) {
    throw new AgateError("BUNDLE_INVALID", "The bundle holds a file too large for a policy bundle.", {});
  }
  let n = 0;
  for (const b of field) {
    if (b === 0 || b === 0x20) {
      if (n > 0) break;
      continue;
    }
    if (b < 0x30 || b > 0x37) throw new AgateError("BUNDLE_INVALID", "The bundle's tar header has a bad number.", {});
    n = n * 8 + (b - 0x30);
  }
  return n;
}

/** The header checksum is the sum of its bytes with the checksum field read as spaces. */
function checksumOk(header: Uint8Array): boolean {
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 0x20 : (header[i] ?? 0);
  return sum === octal(header.subarray(148, 156));
}

/** Pax records are "<len> <key>=<value>\n", len counting bytes; returns the "path" value if any. */
function paxPath(text: TextDecoder, records: Uint8Array): string | undefined {
  let path: string | undefined;
  let at = 0;
  while (at < records.length) {
    const space = records.indexOf(0x20, at);
    if (space === -1) break;
    const len = Number(text.decode(records.subarray(at, space)));
    if (!Number.isInteger(len) || len <= space - at) break;
    const record = text.decode(records.subarray(space + 1, at + len - 1));
    const eq = record.indexOf("=");
    if (eq !== -1 && record.slice(0, eq) === "path") path = record.slice(eq + 1);
    at += len;
  }
  return path;
}
