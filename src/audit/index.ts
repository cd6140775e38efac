/**
 * The append-only audit log: hash-chained canonical JSON records in framed
 * segment files, made durable with group commit. The format is specified in
 * format.ts.
 *
 * @example
 * const log = await openLog(".agate/audit");
 * const i = await log.append({ type: "command", session: s.id, text, decision });
 * log.appendLater({ type: "outcome", of: i, rows: 3 });
 * await log.close();
 * const result = await verifyLog(".agate/audit");
 */
import { mkdir, open } from "node:fs/promises";
import { join } from "node:path";
import { AgateError } from "../core/errors.ts";
import { DEFAULT_SEGMENT_BYTES, FILE_HEADER_BYTES, ZERO_HASH, encodeFileHeader, segmentName } from "./format.ts";
import { recoverTail, type Tail, type Warn } from "./recover.ts";
import { listSegments } from "./segments.ts";
import { SegmentWriter, syncDir, type AuditLog, type Durability, type FaultFs } from "./writer.ts";

export type { AuditLog, Durability } from "./writer.ts";
export { verifyLog, readRecords, type VerifyResult } from "./verify.ts";

export interface OpenOptions {
  /** Default strict: append resolves after the fdatasync that covers it. */
  durability?: Durability;
  /** Start a new segment before a record that would take the current one past this size. Default 64 MiB. */
  segmentBytes?: number;
  /** Told about repairs ("audit log tail truncated") and failures. Default: a JSON line on stderr. */
  onWarn?: (msg: string, facts: object) => void;
  /** @internal Tests only: replaces write/fdatasync to inject faults (ENOSPC, EIO) a test cannot cause for real. */
  __faultFs?: Partial<FaultFs>;
}

/**
 * Open (creating if needed, mode 0700) the log in `dir`. Truncates a torn
 * tail of the last segment and reports it through onWarn; refuses with
 * AUDIT_CORRUPT if the damage is followed by valid records.
 */
export async function openLog(dir: string, opts: OpenOptions = {}): Promise<AuditLog> {
  const durability = opts.durability ?? { mode: "strict" };
  const segmentBytes = opts.segmentBytes ?? DEFAULT_SEGMENT_BYTES;
  if (!Number.isSafeInteger(segmentBytes) || segmentBytes <= FILE_HEADER_BYTES) {
    throw new AgateError("AUDIT_BAD_OPTION", `segmentBytes must be an integer above ${FILE_HEADER_BYTES}; got ${segmentBytes}.`, { got: segmentBytes });
  }
  if (durability.mode === "interval" && !(durability.interval_ms >= 0)) {
    throw new AgateError("AUDIT_BAD_OPTION", `durability.interval_ms must be a number of milliseconds >= 0; got ${durability.interval_ms}.`, { got: durability.interval_ms });
  }
  const warn: Warn = opts.onWarn ?? ((msg, facts) => console.error(JSON.stringify({ level: "warn", msg, ...facts })));
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const segments = await listSegments(dir);
  const tail = segments.length > 0 ? await recoverTail(segments, warn) : await createFirstSegment(dir);
  return new SegmentWriter(tail, {
    dir,
    durability,
    segmentBytes,
    warn,
    faults: { ...opts.__faultFs },
  });
}

async function createFirstSegment(dir: string): Promise<Tail> {
  const name = segmentName(0);
  const path = join(dir, name);
  const fh = await open(path, "wx+", 0o600);
  await fh.write(encodeFileHeader(), 0, FILE_HEADER_BYTES, 0);
  await fh.datasync();
  await syncDir(dir);
  return { fh, segment: { name, path, first: 0 }, bytes: FILE_HEADER_BYTES, records: 0, size: 0, lastHash: ZERO_HASH };
}
