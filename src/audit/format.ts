/**
 * # agate audit log segments, format version 2
 *
 * An audit log is a directory of segment files holding a hash-chained
 * sequence of records. Each record is a canonical JSON object framed by its
 * length and a CRC-32C.
 *
 * ## Example
 *
 * A log whose first record was written by `append({type: "command",
 * text: "SELECT 1"})` at 2025-01-01T00:00:00.000Z holds one file,
 * `seg-00000000000000000000.agl`:
 *
 * ```
 * 00000000  41 47 4c 31 00 00 00 02                           |AGL1....|       file header
 * 00000008  00 00 00 99 41 6b 4d 38                           |....AkM8|       frame header: length 153, CRC-32C 0x416b4d38
 * 00000010  7b 22 69 22 3a 30 2c 22 70 72 65 76 22 3a 22 30  |{"i":0,"prev":"0|  payload (153 bytes)
 * ...
 * ```
 *
 * where the payload is
 *
 * ```
 * {"i":0,"prev":"0000000000000000000000000000000000000000000000000000000000000000","t":"2025-01-01T00:00:00.000Z","text":"SELECT 1","type":"command","v":2}
 * ```
 *
 * and the next record's `prev` is the RFC 6962 leaf hash of those 153
 * bytes, SHA-256 of 0x00 || payload
 * (`{ printf '\0'; printf '%s' '<payload>'; } | sha256sum`):
 * `c04adfcbf93ed5782ea4f7f19fe4fc290fa9a8297b843d8d6da46748fa107af6`.
 * (Checked by test/audit.test.ts, "format example".)
 *
 * ## Conventions
 *
 * The key words MUST, MUST NOT, SHOULD and MAY are as in BCP 14 (RFC 2119,
 * RFC 8174) when in capitals. `||` is concatenation; integers are unsigned
 * big-endian (`uint32`). CRC-32C is the Castagnoli CRC of RFC 3720 §12.1
 * (check value crc32c("123456789") = 0xE3069283). SHA-256 is FIPS 180-4;
 * hashes are written as 64 lower-case hex digits.
 *
 * ## Segments
 *
 * - A segment file MUST be named `seg-` || the index of its first record as
 *   20 decimal digits, zero-padded || `.agl`. Readers MUST ignore files whose
 *   names do not match `^seg-[0-9]{20}\.agl$`.
 * - A segment MUST start with the 8-byte file header `AGL1` || uint32(2).
 *   A reader MUST reject any other magic or version.
 * - The header is followed by zero or more frames and nothing else.
 * - Segments, in order of their names, MUST hold consecutive records: the
 *   name of each segment MUST equal the number of records in all earlier
 *   segments.
 * - A writer MUST start a new segment only between records. It starts one
 *   before a record that would take the current segment past its size
 *   limit (default 64 MiB), unless the current segment holds no record yet;
 *   so a segment is at most the limit, or one record if that record alone
 *   is larger.
 * - A writer MUST make a segment's records durable before it writes to the
 *   next segment, and MUST fsync the directory after creating a segment.
 *
 * ## Frames
 *
 * - A frame is uint32(length) || uint32(CRC-32C(payload)) || payload.
 * - length MUST be between 1 and 16 MiB (16,777,216) inclusive. A writer
 *   MUST refuse a larger record (error AUDIT_RECORD_TOO_LARGE).
 * - A reader MUST reject a frame whose CRC-32C does not match its payload.
 *
 * ## Records
 *
 * - The payload MUST be a UTF-8 JSON object in canonical form (keys sorted
 *   by UTF-16 code units at every depth, no insignificant whitespace,
 *   RFC 8785 number and string forms).
 * - It MUST carry `v` = 2, `i` = its index (the first record of the log is
 *   0), `prev` = the hex leaf hash (below) of the previous record's payload
 *   (64 zeros for record 0) and `t` = when it was written, RFC 3339 UTC with
 *   milliseconds (`2025-01-01T00:00:00.000Z`). All other keys are the
 *   caller's; a caller MUST NOT set `v`, `i`, `prev` or `t`.
 * - A verifier MUST check every CRC, every index and every `prev`; the
 *   chain makes a changed, removed or reordered record visible at the next
 *   record.
 *
 * ## Merkle tree
 *
 * - The log is a Merkle tree as in RFC 9162 §2.1 (RFC 6962 §2.1) whose
 *   leaves are the record payloads in index order: leaf hash
 *   SHA-256(0x00 || payload), interior node SHA-256(0x01 || left || right).
 * - A checkpoint is a C2SP tlog-checkpoint (origin line, decimal tree size,
 *   base64 root hash) signed as a C2SP signed note with Ed25519. The
 *   writer appends each one to `checkpoints.agl` (same file header and
 *   framing as a segment) as a frame whose payload is the canonical JSON
 *   object `{"note":"<the signed note's text>"}` (UTF-8; the note is a JSON
 *   string, so its newlines are `\n`). A reader MUST reject a frame that is
 *   not such an object. (Format version 2 has always written this object;
 *   earlier text of this spec said "the signed note's text", which was
 *   wrong.) It MUST write a checkpoint only after the records it covers
 *   are durable, and MUST make the checkpoint durable before publishing it.
 *   Checkpoint sizes in the file MUST NOT decrease.
 * - `tree.hashes` holds the tree's hashes (leaf hashes and completed
 *   interior nodes, 32 bytes each, in the order they complete, as Go's
 *   sumdb/tlog stores them). It is a cache a writer MAY rebuild from the
 *   records; a verifier MUST NOT trust it, and a writer MUST rebuild it
 *   (not refuse the log) when it disagrees with the records or with the
 *   latest checkpoint's root.
 * - test/vectors/*.json are small logs byte for byte with their leaf
 *   hashes, roots at every size and signed checkpoints (written by
 *   scripts/vectors.ts) to check a reader against.
 *
 * ## Recovery
 *
 * - A torn tail is damage (an incomplete frame, a frame failing its CRC or
 *   length check, garbage) after which the last segment holds no valid
 *   frame. A writer opening the log MUST truncate a torn tail to the end of
 *   the last valid frame, make the truncation durable, and report it.
 * - Damage followed by a valid frame is not a torn tail: a writer MUST
 *   NOT open such a log (error AUDIT_CORRUPT) and MUST NOT truncate it.
 * - `writer.state` (32 bytes: `AGW1 ` || `open ` or `clean` || ` ` || a
 *   record count as 20 decimal digits || `\n`) bounds the records a writer
 *   made. While open, the count is a durable reservation at least the
 *   records written (before writing records, a writer MUST make sure an
 *   fdatasynced marker covers them); at a clean close it is the exact size.
 *   A writer opening a log MUST refuse records past the count (error
 *   AUDIT_UNSIGNED_TAIL), or, without the file, past the latest checkpoint;
 *   only a deliberate `agate recover --accept` or `--cut` clears that.
 */
import { AgateError } from "../core/errors.ts";
import { canonicalParts, canonicalRecord, joinRecordParts } from "./canonical.ts";
import { crc32cRange } from "./crc32c.ts";
import { leafHash } from "./merkle.ts";

export const FORMAT_VERSION = 2;
export const FILE_HEADER_BYTES = 8;
export const FRAME_HEADER_BYTES = 8;
export const MAX_PAYLOAD_BYTES = 16 * 1024 * 1024;
export const DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024;
export const ZERO_HASH = "0".repeat(64);

/** Keys the log sets on every record; a caller's fields must not use them. */
export const RESERVED_KEYS = ["v", "i", "prev", "t"] as const;

const MAGIC = [0x41, 0x47, 0x4c, 0x31]; // "AGL1"
const SEGMENT_NAME = /^seg-(\d{20})\.agl$/;

export function encodeFileHeader(): Buffer {
  const b = Buffer.alloc(FILE_HEADER_BYTES);
  b.set(MAGIC, 0);
  b.writeUInt32BE(FORMAT_VERSION, 4);
  return b;
}

/** Why `header` (the first 8 bytes of a segment) is not a current-version header, or null if it is. */
export function checkFileHeader(header: Uint8Array): string | null {
  if (header.length < FILE_HEADER_BYTES) return `file is ${header.length} bytes, shorter than the ${FILE_HEADER_BYTES}-byte header`;
  if (MAGIC.some((m, k) => header[k] !== m)) return "magic is not AGL1";
  const version = Buffer.from(header.buffer, header.byteOffset, FILE_HEADER_BYTES).readUInt32BE(4);
  if (version !== FORMAT_VERSION) return `format version is ${version}, this build reads ${FORMAT_VERSION}`;
  return null;
}

export function segmentName(firstIndex: number): string {
  return `seg-${String(firstIndex).padStart(20, "0")}.agl`;
}

/** First record index named by a segment file, or null if `name` is not a segment file. */
export function parseSegmentName(name: string): number | null {
  const m = SEGMENT_NAME.exec(name);
  return m ? Number(m[1]) : null;
}

/**
 * The payload of record `i`: canonical JSON of the caller's fields plus
 * v, i, prev and t. Throws AUDIT_BAD_RECORD if the fields are not JSON or
 * use a reserved key, AUDIT_RECORD_TOO_LARGE past MAX_PAYLOAD_BYTES.
 */
export function encodeRecord(i: number, prev: string, t: string, fields: Record<string, unknown>): Buffer {
  const payload = Buffer.from(encodePayload(i, prev, t, fields), "utf8");
  if (payload.length > MAX_PAYLOAD_BYTES) throw tooLarge(payload.length);
  return payload;
}

/**
 * encodeRecord's payload as a string, before UTF-8 encoding and the size
 * check (the writer encodes it straight into its batch buffer and checks
 * the size there). Throws AUDIT_BAD_RECORD.
 */
export function encodePayload(i: number, prev: string, t: string, fields: RecordFields): string {
  if (fields instanceof EncodedFields) return joinRecordParts(fields.parts, fields.at, FORMAT_VERSION, i, prev, t);
  checkFields(fields);
  return canonicalRecord(fields, FORMAT_VERSION, i, prev, t);
}

function checkFields(fields: Record<string, unknown>): void {
  // A toJSON() of its own would make the record whatever it returns, not an object with the log's keys.
  if (typeof fields !== "object" || fields === null || Array.isArray(fields) || typeof (fields as { toJSON?: unknown }).toJSON === "function") {
    throw new AgateError("AUDIT_BAD_RECORD", "Cannot write an audit record: fields must be a JSON object.");
  }
  for (const key of RESERVED_KEYS) {
    if (Object.hasOwn(fields, key)) {
      throw new AgateError("AUDIT_BAD_RECORD", `Cannot write an audit record: the log sets "${key}" itself; rename that field.`, { key });
    }
  }
}

/**
 * A record's fields already in canonical JSON, in the five parts canonicalParts() makes, at `at` in `parts`:
 * what a worker thread hands the writer (src/workers), so that the one writer only joins and hashes.
 */
export class EncodedFields {
  constructor(
    readonly parts: readonly string[],
    readonly at: number,
  ) {}
}

/** What the writer appends: fields, or fields a worker thread encoded. */
export type RecordFields = Record<string, unknown> | EncodedFields;

/** `fields` as EncodedFields' parts (throws AUDIT_BAD_RECORD as encodePayload does). */
export function encodeFields(fields: Record<string, unknown>): string[] {
  checkFields(fields);
  return canonicalParts(fields);
}

/** AUDIT_RECORD_TOO_LARGE for a payload of `bytes`. */
export function tooLarge(bytes: number): AgateError {
  return new AgateError("AUDIT_RECORD_TOO_LARGE", `An audit record is ${bytes} bytes; the limit is ${MAX_PAYLOAD_BYTES}. Record less (e.g. a digest of the body).`, {
    got: bytes,
    max: MAX_PAYLOAD_BYTES,
  });
}

/** uint32(length) || uint32(CRC-32C(payload)) || payload. */
export function encodeFrame(payload: Uint8Array): Buffer {
  const frame = Buffer.allocUnsafe(FRAME_HEADER_BYTES + payload.length);
  frame.set(payload, FRAME_HEADER_BYTES);
  writeFrameHeader(frame, 0, payload.length);
  return frame;
}

/**
 * Fill in the header of the frame at `b[at]` whose payload (`length`
 * bytes) is already in place at `b[at + FRAME_HEADER_BYTES]`.
 */
export function writeFrameHeader(b: Buffer, at: number, length: number): void {
  const start = at + FRAME_HEADER_BYTES;
  b.writeUInt32BE(length, at);
  b.writeUInt32BE(crc32cRange(b, start, start + length), at + 4);
}

/** Hex leaf hash of a payload, SHA-256(0x00 || payload): the next record's `prev`. */
export function hashPayload(payload: Uint8Array): string {
  return Buffer.from(leafHash(payload)).toString("hex");
}
