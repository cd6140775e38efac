/**
 * Verification and replay: read every segment in order and check all of it
 * (headers, CRCs, consecutive indexes across segments, the prev chain, the
 * JSON), streaming in chunks so a large segment is never loaded whole.
 */
import { stat } from "node:fs/promises";
import { AgateError } from "../core/errors.ts";
import { FORMAT_VERSION, ZERO_HASH, hashPayload } from "./format.ts";
import { listSegments, scanSegment, type Damage, type SegmentFile } from "./segments.ts";

export type VerifyResult =
  | { ok: true; records: number; segments: number; lastHash: string }
  | { ok: false; records: number; error: { code: string; message: string; index?: number; segment?: string; offset?: number } };

export interface VerifyOptions {
  /** Called after each chunk (about 1 MiB) and at the end. */
  onProgress?: (recordsChecked: number, bytesChecked: number, totalBytes: number) => void;
}

/**
 * Check a whole log from its files alone. Never throws for a damaged log:
 * the first failure comes back as `{ ok: false }` with a stable code
 * (AUDIT_BAD_HEADER, AUDIT_BAD_CRC, AUDIT_TRUNCATED, AUDIT_BAD_JSON,
 * AUDIT_BAD_INDEX, AUDIT_BAD_CHAIN, AUDIT_NO_LOG), the record index where
 * it was expected, the segment file and the byte offset.
 */
export async function verifyLog(dir: string, opts: VerifyOptions = {}): Promise<VerifyResult> {
  const w: Walk = { records: 0, segments: 0, lastHash: ZERO_HASH };
  try {
    for await (const _ of walk(dir, w, opts.onProgress)) {
      // records are checked inside walk
    }
    return { ok: true, records: w.records, segments: w.segments, lastHash: w.lastHash };
  } catch (e) {
    if (!(e instanceof AgateError)) throw e;
    const { index, segment, offset } = e.details as { index?: number; segment?: string; offset?: number };
    return { ok: false, records: w.records, error: { code: e.code, message: e.message, index, segment, offset } };
  }
}

/**
 * Every record of the log, parsed, in order, each checked as verifyLog
 * checks it. Throws the AgateError verifyLog would report at the first
 * failure, after yielding the records before it.
 */
export async function* readRecords(dir: string): AsyncGenerator<Record<string, unknown>> {
  const w: Walk = { records: 0, segments: 0, lastHash: ZERO_HASH };
  for await (const batch of walk(dir, w)) yield* batch;
}

interface Walk {
  records: number;
  segments: number;
  lastHash: string;
}

const utf8 = new TextDecoder("utf-8", { fatal: true });

async function* walk(dir: string, w: Walk, onProgress?: VerifyOptions["onProgress"]): AsyncGenerator<Record<string, unknown>[]> {
  let segments: SegmentFile[];
  try {
    segments = await listSegments(dir);
  } catch (e) {
    if (e instanceof AgateError) throw e;
    throw new AgateError("AUDIT_NO_LOG", `Cannot read the audit log directory ${dir}: ${(e as Error).message}`, {});
  }
  const sizes = await Promise.all(segments.map((s) => stat(s.path).then((st) => st.size)));
  const total = sizes.reduce((a, b) => a + b, 0);
  let bytesBefore = 0;
  for (const [k, segment] of segments.entries()) {
    if (segment.first !== w.records) {
      const why = segment.first > w.records ? `records ${w.records}..${segment.first - 1} are missing` : `it overlaps the records before it`;
      throw fail("AUDIT_BAD_INDEX", `segment ${segment.name} starts at record ${segment.first} but ${w.records} records precede it: ${why}`, w.records, segment, 0);
    }
    for await (const chunk of scanSegment(segment.path)) {
      const records: Record<string, unknown>[] = [];
      for (const { offset, payload } of chunk.frames) {
        const i = w.records;
        let rec: Record<string, unknown>;
        try {
          rec = JSON.parse(utf8.decode(payload));
        } catch (e) {
          throw fail("AUDIT_BAD_JSON", `record ${i} is not valid UTF-8 JSON (${(e as Error).message})`, i, segment, offset);
        }
        if (typeof rec !== "object" || rec === null || Array.isArray(rec) || rec.v !== FORMAT_VERSION) {
          throw fail("AUDIT_BAD_JSON", `record ${i} is not a version ${FORMAT_VERSION} record object`, i, segment, offset);
        }
        if (rec.i !== i) throw fail("AUDIT_BAD_INDEX", `record at this position has index ${JSON.stringify(rec.i)}, expected ${i}: a record is missing, repeated or out of order`, i, segment, offset);
        if (rec.prev !== w.lastHash) {
          throw fail("AUDIT_BAD_CHAIN", `record ${i} has prev ${JSON.stringify(rec.prev)} but record ${i - 1} hashes to ${w.lastHash}: record ${i - 1} was changed or removed`, i, segment, offset);
        }
        w.lastHash = hashPayload(payload);
        w.records++;
        records.push(rec);
      }
      onProgress?.(w.records, bytesBefore + chunk.end, total);
      if (records.length > 0) yield records;
      if (chunk.damage) throw fromDamage(chunk.damage, w.records, segment);
    }
    bytesBefore += sizes[k]!;
    w.segments++;
  }
  onProgress?.(w.records, total, total);
}

function fromDamage(d: Damage, index: number, segment: SegmentFile): AgateError {
  const code = d.kind === "header" ? "AUDIT_BAD_HEADER" : d.kind === "short" ? "AUDIT_TRUNCATED" : "AUDIT_BAD_CRC";
  return fail(code, d.message, index, segment, d.offset);
}

function fail(code: string, why: string, index: number, segment: SegmentFile, offset: number): AgateError {
  return new AgateError(code, `Audit log check failed at record ${index} (${segment.name}, offset ${offset}): ${why}.`, { index, segment: segment.name, offset });
}
