/**
 * Start-up recovery: find where the log ends and make that end clean.
 *
 * Only the last segment is scanned (earlier ones are `agate verify`'s job).
 * A torn tail there is truncated to the end of the last valid frame and
 * reported; damage followed by a valid frame is corruption of history, and
 * the log refuses to open (AUDIT_CORRUPT) rather than cut it away.
 */
import { open, type FileHandle } from "node:fs/promises";
import { AgateError } from "../core/errors.ts";
import { FILE_HEADER_BYTES, ZERO_HASH, encodeFileHeader } from "./format.ts";
import { leafHash } from "./merkle.ts";
import { findFrameAfter, scanSegment, type SegmentFile } from "./segments.ts";

export interface Tail {
  /** The last segment, open for reading and writing. */
  fh: FileHandle;
  segment: SegmentFile;
  /** Bytes in the last segment (its valid end). */
  bytes: number;
  /** Records in the last segment. */
  records: number;
  /** Records in the whole log: the next index. */
  size: number;
  /** Leaf hash (hex) of the last record's payload (ZERO_HASH for an empty log). */
  lastHash: string;
  /** Leaf hashes of the last segment's records, in order. */
  leaves: Uint8Array[];
}

export type Warn = (msg: string, facts: object) => void;

/** Recover the end of a log from its segments (at least one, in order). */
export async function recoverTail(segments: SegmentFile[], warn: Warn): Promise<Tail> {
  const segment = segments[segments.length - 1]!;
  const scan = await scanRecords(segment);
  const fh = await open(segment.path, "r+");
  try {
    if (scan.damage) await repair(fh, segment, scan, warn);
    let lastHash = scan.lastHash;
    if (lastHash === null) lastHash = segment.first === 0 ? ZERO_HASH : await lastHashBefore(segments, segment);
    return { fh, segment, bytes: scan.end, records: scan.records, size: segment.first + scan.records, lastHash, leaves: scan.leaves };
  } catch (e) {
    await fh.close();
    throw e;
  }
}

export interface Scan {
  records: number;
  end: number;
  size: number;
  lastHash: string | null;
  leaves: Uint8Array[];
  damage?: { kind: string; offset: number; message: string };
}

/** Scan a segment's frames, checking that CRC-valid records are consecutive and chained. */
async function scanRecords(segment: SegmentFile): Promise<Scan> {
  const scan: Scan = { records: 0, end: 0, size: 0, lastHash: null, leaves: [] };
  for await (const chunk of scanSegment(segment.path)) {
    for (const { offset, payload } of chunk.frames) {
      const want = segment.first + scan.records;
      let rec: { i?: unknown; prev?: unknown };
      try {
        rec = JSON.parse(payload.toString("utf8"));
      } catch {
        throw corrupt(segment, offset, `record ${want} has a valid CRC but is not JSON`);
      }
      if (rec.i !== want) throw corrupt(segment, offset, `record at offset ${offset} has index ${String(rec.i)}, expected ${want}`);
      if (scan.lastHash !== null && rec.prev !== scan.lastHash) throw corrupt(segment, offset, `record ${want} does not chain to record ${want - 1}`);
      const leaf = leafHash(payload);
      scan.leaves.push(leaf);
      scan.lastHash = Buffer.from(leaf).toString("hex");
      scan.records++;
    }
    scan.end = chunk.end;
    scan.size = chunk.size;
    if (chunk.damage) scan.damage = chunk.damage;
  }
  return scan;
}

/**
 * Make a file of frames (a segment, or the checkpoint file) end cleanly
 * after `scan` found damage: truncate a torn tail to the last good frame,
 * refuse (AUDIT_CORRUPT) if a valid frame follows the damage.
 */
export async function repair(fh: FileHandle, segment: SegmentFile, scan: Pick<Scan, "end" | "size" | "damage">, warn: Warn): Promise<void> {
  const damage = scan.damage!;
  if (damage.kind === "header") {
    // A segment shorter than its header whose bytes are a prefix of it is a
    // torn creation; anything else in the header is not ours to rewrite.
    const head = Buffer.alloc(FILE_HEADER_BYTES);
    const { bytesRead } = await fh.read(head, 0, FILE_HEADER_BYTES, 0);
    if (scan.size >= FILE_HEADER_BYTES || !encodeFileHeader().subarray(0, bytesRead).equals(head.subarray(0, bytesRead))) {
      throw corrupt(segment, 0, damage.message);
    }
    await fh.truncate(0);
    await fh.write(encodeFileHeader(), 0, FILE_HEADER_BYTES, 0);
    await fh.sync();
    scan.end = FILE_HEADER_BYTES;
    warn("audit log tail truncated", { segment: segment.name, offset: 0, bytes: scan.size, reason: damage.message });
    return;
  }
  const next = await findFrameAfter(segment.path, damage.offset + 1, scan.size);
  if (next >= 0) {
    throw corrupt(segment, damage.offset, `${damage.message}, and a valid frame follows at offset ${next}, so this is not a torn tail`);
  }
  await fh.truncate(scan.end);
  await fh.sync();
  warn("audit log tail truncated", { segment: segment.name, offset: scan.end, bytes: scan.size - scan.end, reason: damage.message });
}

/** The last record hash of the segment before `last` (which holds no record). */
async function lastHashBefore(segments: SegmentFile[], last: SegmentFile): Promise<string> {
  const prev = segments[segments.length - 2];
  if (!prev) throw corrupt(last, 0, `the log starts at record ${last.first}; segments before it are missing`);
  const scan = await scanRecords(prev);
  if (scan.damage) throw corrupt(prev, scan.damage.offset, scan.damage.message);
  if (scan.lastHash === null || prev.first + scan.records !== last.first) {
    throw corrupt(prev, scan.end, `segment holds records up to ${prev.first + scan.records - 1}, but the next segment starts at ${last.first}`);
  }
  return scan.lastHash;
}

function corrupt(segment: SegmentFile, offset: number, why: string): AgateError {
  return new AgateError(
    "AUDIT_CORRUPT",
    `Audit log segment ${segment.name} is damaged at offset ${offset} (${why}). Refusing to start rather than cut history: run \`agate verify\`, keep a copy, and repair by hand.`,
    { segment: segment.name, offset },
  );
}
