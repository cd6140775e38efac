/**
 * Verification and replay: read every segment in order and check all of it
 * (headers, CRCs, consecutive indexes across segments, the prev chain, the
 * JSON, the Merkle tree against every checkpoint), streaming in chunks so a
 * large segment is never loaded whole.
 */
import { existsSync } from "node:fs";
import { stat } from "node:fs/promises";
import { join } from "node:path";
import { AgateError } from "../core/errors.ts";
import { CHECKPOINT_FILE, readCheckpoints, type StoredCheckpoint } from "./checkpoints.ts";
import { FORMAT_VERSION, ZERO_HASH } from "./format.ts";
import { Frontier, leafHash } from "./merkle.ts";
import { openCheckpoint, openNote, type Checkpoint, type Verifier } from "./note.ts";
import { listSegments, scanSegment, type Damage, type SegmentFile } from "./segments.ts";

export type VerifyResult =
  | {
      ok: true;
      records: number;
      segments: number;
      lastHash: string;
      /** Root hash of all records (hex). */
      root: string;
      /** Checkpoints checked, and the size the last one signed (-1: none). */
      checkpoints: number;
      checkpointSize: number;
      /** Whether signatures were checked (a verifier key was given). */
      signaturesChecked: boolean;
    }
  | { ok: false; records: number; error: { code: string; message: string; index?: number; segment?: string; offset?: number; checkpoint?: number } };

export interface VerifyOptions {
  /** Called after each chunk (about 1 MiB) and at the end. */
  onProgress?: (recordsChecked: number, bytesChecked: number, totalBytes: number) => void;
  /** Check every checkpoint's signature with this key. Without it signatures are not checked. */
  key?: Verifier;
  /**
   * Signed checkpoints the caller kept from earlier (from the admin API,
   * object storage, a witness): each must verify with `key` and the log
   * must reach and match it. This is what catches a log rolled back whole,
   * checkpoint file included.
   */
  trusted?: string[];
}

/**
 * Check a whole log from its files alone. Never throws for a damaged log:
 * the first failure comes back as `{ ok: false }` with a stable code
 * (AUDIT_BAD_HEADER, AUDIT_BAD_CRC, AUDIT_TRUNCATED, AUDIT_BAD_JSON,
 * AUDIT_BAD_INDEX, AUDIT_BAD_CHAIN, AUDIT_NO_LOG; for checkpoints
 * CHECKPOINT_BAD, CHECKPOINT_BAD_SIGNATURE, CHECKPOINT_BAD_ROOT,
 * CHECKPOINT_ORDER, AUDIT_ROLLED_BACK, AUDIT_UNSIGNED), the record index where it was
 * expected, the segment file and the byte offset (or the checkpoint).
 */
export async function verifyLog(dir: string, opts: VerifyOptions = {}): Promise<VerifyResult> {
  const w: Walk = { records: 0, segments: 0, lastHash: ZERO_HASH, frontier: new Frontier() };
  try {
    const checkpoints = await loadCheckpoints(dir, opts);
    let next = 0; // first checkpoint not yet compared
    const compare = () => {
      for (; next < checkpoints.length && checkpoints[next]!.size === w.records; next++) checkRoot(checkpoints[next]!, w);
    };
    compare();
    for await (const _ of walk(dir, w, opts.onProgress, compare)) {
      // records are checked inside walk
    }
    if (next < checkpoints.length) {
      const c = checkpoints[next]!;
      throw checkpointFail("AUDIT_ROLLED_BACK", c, `it signs ${c.size} records but the log holds ${w.records}: signed records were removed`);
    }
    const last = checkpoints.filter((c) => c.seq >= 0).at(-1);
    if (opts.key && w.records > 0 && checkpoints.length === 0) {
      // Nothing signed: the records could have been written by anyone (or the checkpoint file deleted).
      throw new AgateError("AUDIT_UNSIGNED", `Audit log check failed: the log holds ${w.records} records but no checkpoint signed by ${opts.key.name}, so nothing proves who wrote them (was ${CHECKPOINT_FILE} removed?).`, {});
    }
    return {
      ok: true,
      records: w.records,
      segments: w.segments,
      lastHash: w.lastHash,
      root: Buffer.from(w.frontier.root()).toString("hex"),
      checkpoints: checkpoints.length,
      checkpointSize: last?.size ?? -1,
      signaturesChecked: opts.key !== undefined,
    };
  } catch (e) {
    if (!(e instanceof AgateError)) throw e;
    const { index, segment, offset, checkpoint } = e.details as { index?: number; segment?: string; offset?: number; checkpoint?: number };
    return { ok: false, records: w.records, error: { code: e.code, message: e.message, index, segment, offset, checkpoint } };
  }
}

/** A checkpoint to compare; seq -1 for one the caller trusted. */
type Want = Checkpoint & { seq: number; offset: number };

/** The checkpoint file's checkpoints (signatures checked), then the trusted ones, in size order. */
async function loadCheckpoints(dir: string, opts: VerifyOptions): Promise<Want[]> {
  const out: Want[] = [];
  const path = join(dir, CHECKPOINT_FILE);
  if (existsSync(path)) {
    let prev: StoredCheckpoint | null = null;
    for await (const c of readCheckpoints(path)) {
      if ("damage" in c) {
        throw new AgateError("CHECKPOINT_BAD", `Audit log check failed at checkpoint ${c.seq} (${CHECKPOINT_FILE}, offset ${c.damage.offset}): ${c.damage.message}.`, {
          checkpoint: c.seq,
          segment: CHECKPOINT_FILE,
          offset: c.damage.offset,
        });
      }
      if (opts.key) {
        try {
          openNote(c.note, opts.key);
        } catch (e) {
          throw checkpointFail("CHECKPOINT_BAD_SIGNATURE", c, (e as Error).message);
        }
      }
      if (prev && c.origin !== prev.origin) throw checkpointFail("CHECKPOINT_ORDER", c, `its origin "${c.origin}" differs from the log's "${prev.origin}"`);
      if (prev && c.size < prev.size) throw checkpointFail("CHECKPOINT_ORDER", c, `it signs ${c.size} records, fewer than checkpoint ${prev.seq} (${prev.size}): checkpoints were reordered or the log was rolled back`);
      out.push(c);
      prev = c;
    }
  }
  for (const [k, note] of (opts.trusted ?? []).entries()) {
    if (!opts.key) throw new AgateError("USAGE", "A trusted checkpoint is checked against a verifier key: pass one.", {});
    let c: Checkpoint;
    try {
      c = openCheckpoint(note, opts.key);
    } catch (e) {
      throw new AgateError("CHECKPOINT_BAD_SIGNATURE", `The trusted checkpoint ${k + 1} does not verify: ${(e as Error).message}`, { checkpoint: -1 });
    }
    out.push({ ...c, seq: -1 - k, offset: -1 });
  }
  return out.sort((a, b) => a.size - b.size);
}

function checkRoot(c: Want, w: Walk): void {
  const root = w.frontier.root();
  if (Buffer.compare(root, c.root) !== 0) {
    throw checkpointFail("CHECKPOINT_BAD_ROOT", c, `it signs root ${Buffer.from(c.root).toString("base64")} for ${c.size} records, but records 0..${c.size - 1} hash to ${Buffer.from(root).toString("base64")}: history before it was rewritten`);
  }
}

function checkpointFail(code: string, c: Want, why: string): AgateError {
  const name = c.seq >= 0 ? `checkpoint ${c.seq} (${CHECKPOINT_FILE}, offset ${c.offset})` : `the trusted checkpoint of size ${c.size}`;
  return new AgateError(code, `Audit log check failed at ${name}: ${why}.`, c.seq >= 0 ? { checkpoint: c.seq, segment: CHECKPOINT_FILE, offset: c.offset } : { checkpoint: c.seq });
}

/**
 * Every record of the log, parsed, in order, each checked as verifyLog
 * checks it. Throws the AgateError verifyLog would report at the first
 * failure, after yielding the records before it.
 */
export async function* readRecords(dir: string): AsyncGenerator<Record<string, unknown>> {
  const w: Walk = { records: 0, segments: 0, lastHash: ZERO_HASH, frontier: new Frontier() };
  for await (const batch of walk(dir, w)) yield* batch;
}

interface Walk {
  records: number;
  segments: number;
  lastHash: string;
  frontier: Frontier;
}

const utf8 = new TextDecoder("utf-8", { fatal: true });

async function* walk(dir: string, w: Walk, onProgress?: VerifyOptions["onProgress"], afterRecord?: () => void): AsyncGenerator<Record<string, unknown>[]> {
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
      const why =
        segment.first > w.records
          ? `records ${w.records}..${segment.first - 1} are missing${k === 0 && existsSync(join(dir, "ship.json")) ? " (if audit.ship.keep_local_s deleted them after their upload, verify the shipped log with --from s3://…)" : ""}`
          : `it overlaps the records before it`;
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
        const leaf = leafHash(payload);
        w.frontier.push(leaf);
        w.lastHash = Buffer.from(leaf).toString("hex");
        w.records++;
        afterRecord?.();
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
