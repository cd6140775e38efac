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
import { Checkpointer, latestCheckpointSize, type StoredCheckpoint } from "./checkpoints.ts";
import { DEFAULT_SEGMENT_BYTES, FILE_HEADER_BYTES, ZERO_HASH, encodeFileHeader, segmentName, type RecordFields } from "./format.ts";
import { consistencyProof, frontierAt, inclusionProof, storedIndex } from "./merkle.ts";
import { MarkerFile, checkTail, readMarker } from "./marker.ts";
import type { Signer } from "./note.ts";
import { recoverTail, type Tail, type Warn } from "./recover.ts";
import { listSegments, scanSegment, type SegmentFile } from "./segments.ts";
import { TreeFile } from "./tree.ts";
import { SegmentWriter, syncDir, type AuditLog, type Durability, type FaultFs } from "./writer.ts";

export type { AuditLog, Durability } from "./writer.ts";
export type { StoredCheckpoint } from "./checkpoints.ts";
export { verifyLog, readRecords, type VerifyResult } from "./verify.ts";

export interface OpenOptions {
  /** Default strict: append resolves after the fdatasync that covers it. */
  durability?: Durability;
  /** Start a new segment before a record that would take the current one past this size. Default 64 MiB. */
  segmentBytes?: number;
  /** Told about repairs ("audit log tail truncated") and failures. Default: a JSON line on stderr. */
  onWarn?: (msg: string, facts: object) => void;
  /** Sign checkpoints with this key; without one the log makes no checkpoints. */
  signer?: Signer;
  /** The checkpoints' origin line. Default: the signer's key name. */
  origin?: string;
  /** Checkpoint once this many records were added (default 10,000)… */
  checkpointEveryRecords?: number;
  /** …or this many seconds passed with records added (default 10). */
  checkpointEverySeconds?: number;
  /** Told about each durable checkpoint. */
  onCheckpoint?: (c: StoredCheckpoint) => void;
  /** Told when a segment is sealed: it will not change again. */
  onSealed?: (segment: string) => void;
  /** @internal Tests only: replaces write/fdatasync to inject faults (ENOSPC, EIO) a test cannot cause for real. */
  __faultFs?: Partial<FaultFs>;
}

/** The audit log: append records, and prove what it holds. */
export interface TransparencyLog extends AuditLog {
  readonly dir: string;
  /** The latest durable checkpoint, if the log signs them. */
  readonly latestCheckpoint: StoredCheckpoint | null;
  /** Make a checkpoint of everything appended so far, or of the first `size` records (null if nothing new, or no signer). */
  checkpoint(size?: number): Promise<StoredCheckpoint | null>;
  /** Root hash of the tree of the first `size` records (size <= durableSize). */
  rootAt(size: number): Uint8Array;
  /** Leaf hash of record `index` (< durableSize). */
  leafHash(index: number): Uint8Array;
  /** RFC 9162 inclusion proof of record `index` in the tree of `size` records. */
  inclusionProof(index: number, size: number): Uint8Array[];
  /** RFC 9162 consistency proof between the trees of `from` and `to` records. */
  consistencyProof(from: number, to: number): Uint8Array[];
  /** The payload (canonical JSON bytes) of record `index` (< durableSize). */
  readRecord(index: number): Promise<Buffer>;
}

/**
 * Open (creating if needed, mode 0700) the log in `dir`. Truncates a torn
 * tail of the last segment and reports it through onWarn; refuses with
 * AUDIT_CORRUPT if the damage is followed by valid records, and with
 * AUDIT_ROLLED_BACK if the records no longer reach or match the latest
 * checkpoint.
 */
export async function openLog(dir: string, opts: OpenOptions = {}): Promise<TransparencyLog> {
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
  let segments = await listSegments(dir);
  const tail = segments.length > 0 ? await recoverTail(segments, warn) : await createFirstSegment(dir);
  if (segments.length === 0) segments = [tail.segment];
  const last = { first: tail.segment.first, leaves: tail.leaves };
  let tree: TreeFile;
  let marker: MarkerFile;
  try {
    // Records past what the writer made are refused before anything else touches the log.
    const previous = readMarker(dir);
    checkTail(dir, previous, previous || !opts.signer ? null : await latestCheckpointSize(dir), tail.size);
    tree = await TreeFile.open(dir, segments, tail.size, last, warn);
    marker = MarkerFile.open(dir, tail.size);
    if (!previous) await syncDir(dir);
  } catch (e) {
    await tail.fh.close();
    throw e;
  }
  const writer = new SegmentWriter(tail, {
    dir,
    durability,
    segmentBytes,
    warn,
    faults: { ...opts.__faultFs },
    tree,
    onSealed: opts.onSealed ?? (() => {}),
    marker,
  });
  let checkpointer: Checkpointer | null = null;
  if (opts.signer) {
    try {
      checkpointer = await Checkpointer.open(
        {
          dir,
          signer: opts.signer,
          origin: opts.origin ?? opts.signer.name,
          everyRecords: opts.checkpointEveryRecords ?? 10_000,
          everySeconds: opts.checkpointEverySeconds ?? 10,
          warn,
          onCheckpoint: opts.onCheckpoint ?? (() => {}),
          rebuildTree: () => tree.rebuild(segments, tail.size, last),
        },
        writer,
        tree,
      );
    } catch (e) {
      await writer.close();
      throw e;
    }
    checkpointer.start();
  }
  return new Log(dir, writer, tree, checkpointer);
}

class Log implements TransparencyLog {
  readonly dir: string;
  readonly #w: SegmentWriter;
  readonly #tree: TreeFile;
  readonly #cp: Checkpointer | null;
  #closing: Promise<void> | null = null;

  constructor(dir: string, w: SegmentWriter, tree: TreeFile, cp: Checkpointer | null) {
    this.dir = dir;
    this.#w = w;
    this.#tree = tree;
    this.#cp = cp;
  }

  append(fields: Record<string, unknown>): Promise<number> {
    return this.#w.append(fields);
  }
  appendLater(fields: RecordFields): number {
    return this.#w.appendLater(fields);
  }
  flush(): Promise<void> {
    return this.#w.flush();
  }
  settled(count: number): Promise<void> {
    return this.#w.settled(count);
  }
  seal(): Promise<number> {
    return this.#w.seal();
  }
  get size(): number {
    return this.#w.size;
  }
  get durableSize(): number {
    return this.#w.durableSize;
  }
  get latestCheckpoint(): StoredCheckpoint | null {
    return this.#cp?.latest ?? null;
  }
  async checkpoint(size?: number): Promise<StoredCheckpoint | null> {
    return this.#cp ? this.#cp.checkpoint(size) : null;
  }

  /**
   * Flush, write a final checkpoint and close. A failed log still closes
   * its files and rejects with the failure. (To ship everything, seal()
   * before closing.)
   */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      this.#cp?.stop();
      try {
        if (this.#cp) await this.#cp.checkpoint();
      } finally {
        this.#cp?.close();
        await this.#w.close();
      }
    })();
    return this.#closing;
  }

  #within(n: number, what: string): void {
    if (!Number.isSafeInteger(n) || n < 0 || n > this.#w.durableSize) {
      throw new AgateError("AUDIT_NO_SUCH_SIZE", `${what} must be a whole number from 0 to the durable log size, ${this.#w.durableSize}; got ${n}.`, { got: n, size: this.#w.durableSize });
    }
  }

  /** A record index below the durable size (a negative one would pass #within(index + 1)). */
  #record(index: number): void {
    if (!Number.isSafeInteger(index) || index < 0 || index >= this.#w.durableSize) {
      throw new AgateError("AUDIT_NO_SUCH_RECORD", `The record index must be a whole number below the durable log size, ${this.#w.durableSize}; got ${index}.`, { index, size: this.#w.durableSize });
    }
  }

  rootAt(size: number): Uint8Array {
    this.#within(size, "size");
    return frontierAt(size, this.#tree).root();
  }
  leafHash(index: number): Uint8Array {
    this.#record(index);
    return this.#tree.read([storedIndex(0, index)])[0]!;
  }
  inclusionProof(index: number, size: number): Uint8Array[] {
    this.#within(size, "size");
    if (!Number.isSafeInteger(index) || index < 0 || index >= size) {
      throw new AgateError("AUDIT_NO_SUCH_RECORD", `index must be a whole number below size (${size}); got ${index}.`, { index, size });
    }
    return inclusionProof(index, size, this.#tree);
  }
  consistencyProof(from: number, to: number): Uint8Array[] {
    this.#within(to, "to");
    this.#within(from, "from");
    if (from > to) throw new AgateError("AUDIT_BAD_RANGE", `from (${from}) must not exceed to (${to}).`, { from, to });
    return consistencyProof(from, to, this.#tree);
  }
  async readRecord(index: number): Promise<Buffer> {
    this.#record(index);
    return readRecordFromFiles(this.dir, index);
  }
}

/** Record `index`'s payload, read from its segment. */
export async function readRecordFromFiles(dir: string, index: number): Promise<Buffer> {
  const segments = await listSegments(dir);
  let seg: SegmentFile | undefined;
  for (const s of segments) if (s.first <= index) seg = s;
  if (seg) {
    let i = seg.first;
    for await (const chunk of scanSegment(seg.path)) {
      for (const { payload } of chunk.frames) if (i++ === index) return Buffer.from(payload);
      if (chunk.damage) break;
    }
  }
  throw new AgateError("AUDIT_NO_SUCH_RECORD", `Record ${index} is not in the log's files.`, { index });
}

async function createFirstSegment(dir: string): Promise<Tail> {
  const name = segmentName(0);
  const path = join(dir, name);
  const fh = await open(path, "wx+", 0o600);
  await fh.write(encodeFileHeader(), 0, FILE_HEADER_BYTES, 0);
  await fh.datasync();
  await syncDir(dir);
  return { fh, segment: { name, path, first: 0 }, bytes: FILE_HEADER_BYTES, records: 0, size: 0, lastHash: ZERO_HASH, leaves: [] };
}
