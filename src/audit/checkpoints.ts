/**
 * Checkpoints: signed tree heads, made every N records or T seconds (and on
 * demand), kept in `checkpoints.agl` and handed to whoever publishes them.
 *
 * The file has a segment's header and framing; each frame's payload is
 * canonical JSON `{"note": "<signed checkpoint note>"}`. A checkpoint is
 * written only once the records it covers are durable, and is durable
 * itself (fdatasync) before it is published.
 */
import * as fs from "node:fs";
import { open } from "node:fs/promises";
import { join } from "node:path";
import { AgateError } from "../core/errors.ts";
import { canonicalJson } from "./canonical.ts";
import { FILE_HEADER_BYTES, FRAME_HEADER_BYTES, encodeFileHeader, encodeFrame } from "./format.ts";
import { frontierAt, type HashReader } from "./merkle.ts";
import { parseCheckpoint, signCheckpoint, type Checkpoint, type Signer } from "./note.ts";
import { repair, type Warn } from "./recover.ts";
import { scanSegment } from "./segments.ts";
import { syncDir, type AuditLog } from "./writer.ts";

export const CHECKPOINT_FILE = "checkpoints.agl";

export interface StoredCheckpoint extends Checkpoint {
  /** The signed note. */
  note: string;
  /** Its position in the checkpoint file. */
  seq: number;
  /** Byte offset of its frame in the file. */
  offset: number;
  /** Byte offset just past its frame. */
  end: number;
}

/** Every checkpoint in a checkpoint file, in order; stops (with `damage`) at the first bad frame. */
export async function* readCheckpoints(path: string): AsyncGenerator<StoredCheckpoint | { damage: { kind: string; offset: number; message: string }; seq: number }> {
  let seq = 0;
  for await (const chunk of scanSegment(path)) {
    for (const { offset, payload } of chunk.frames) {
      let note: unknown;
      try {
        note = JSON.parse(payload.toString("utf8")).note;
      } catch {
        note = undefined;
      }
      if (typeof note !== "string") {
        yield { damage: { kind: "json", offset, message: `checkpoint ${seq} is not a {"note": …} object` }, seq };
        return;
      }
      const text = note.slice(0, note.lastIndexOf("\n\n") + 1);
      let c: Checkpoint;
      try {
        c = parseCheckpoint(text);
      } catch (e) {
        yield { damage: { kind: "json", offset, message: `checkpoint ${seq}: ${(e as Error).message}` }, seq };
        return;
      }
      yield { ...c, note, seq: seq++, offset, end: offset + FRAME_HEADER_BYTES + payload.length };
    }
    if (chunk.damage) yield { damage: chunk.damage, seq };
  }
}

/** Size signed by the last readable checkpoint in `dir`, null if there is none. */
export async function latestCheckpointSize(dir: string): Promise<number | null> {
  const path = join(dir, CHECKPOINT_FILE);
  if (!fs.existsSync(path)) return null;
  let size: number | null = null;
  for await (const c of readCheckpoints(path)) {
    if ("damage" in c) break;
    size = c.size;
  }
  return size;
}

export interface CheckpointerOptions {
  dir: string;
  signer: Signer;
  origin: string;
  /** Make a checkpoint once this many records were added since the last one. */
  everyRecords: number;
  /** …or once this many seconds passed since the last one, if any record was added. */
  everySeconds: number;
  warn: Warn;
  /** Told about each new checkpoint once it is durable. */
  onCheckpoint: (c: StoredCheckpoint) => void;
  /** Rehash the tree from the segments (the hash file disagreed with the latest checkpoint's root). */
  rebuildTree: () => Promise<void>;
}

/**
 * Writes checkpoints of `log` whose tree hashes `tree` holds. Open it after
 * the log; `start()` begins the schedule, `checkpoint()` makes one now.
 */
export class Checkpointer {
  readonly #o: CheckpointerOptions;
  readonly #log: AuditLog;
  readonly #tree: HashReader;
  readonly #fd: number;
  #end: number;
  #latest: StoredCheckpoint | null;
  #lastAt = 0;
  #timer: ReturnType<typeof setInterval> | null = null;
  #running: Promise<StoredCheckpoint | null> | null = null;

  private constructor(o: CheckpointerOptions, log: AuditLog, tree: HashReader, fd: number, end: number, latest: StoredCheckpoint | null) {
    this.#o = o;
    this.#log = log;
    this.#tree = tree;
    this.#fd = fd;
    this.#end = end;
    this.#latest = latest;
  }

  /**
   * Open (creating) the checkpoint file, truncate a torn tail, and check the
   * latest checkpoint against the log: a log shorter than its last
   * checkpoint, or with another root at that size, refuses to open
   * (AUDIT_ROLLED_BACK): signed history is missing or was rewritten.
   */
  static async open(o: CheckpointerOptions, log: AuditLog, tree: HashReader): Promise<Checkpointer> {
    const path = join(o.dir, CHECKPOINT_FILE);
    if (!fs.existsSync(path)) {
      const fh = await open(path, "wx", 0o600);
      await fh.write(encodeFileHeader(), 0, FILE_HEADER_BYTES, 0);
      await fh.datasync();
      await fh.close();
      await syncDir(o.dir);
    }
    let latest: StoredCheckpoint | null = null;
    let end = FILE_HEADER_BYTES;
    for await (const c of readCheckpoints(path)) {
      if ("damage" in c) {
        const fh = await open(path, "r+");
        try {
          const size = (await fh.stat()).size;
          await repair(fh, { name: CHECKPOINT_FILE, path, first: 0 }, { end, size, damage: c.damage }, o.warn);
        } finally {
          await fh.close();
        }
        break;
      }
      latest = c;
      end = c.end;
    }
    if (latest) {
      const size = log.durableSize;
      const rootDiffers = () => Buffer.compare(frontierAt(latest!.size, tree).root(), latest!.root) !== 0;
      if (latest.size <= size && rootDiffers()) {
        // The hash file is a cache, not evidence: rebuild it from the records before judging them.
        o.warn("audit hash file disagrees with the latest checkpoint; rebuilding it from the segments", { checkpoint: latest.seq, size: latest.size });
        await o.rebuildTree();
      }
      const why =
        latest.size > size
          ? `the log holds ${size} records but checkpoint ${latest.seq} signed ${latest.size}`
          : rootDiffers()
            ? `the records up to ${latest.size} do not hash to the root checkpoint ${latest.seq} signed`
            : null;
      if (why) {
        throw new AgateError("AUDIT_ROLLED_BACK", `Refusing to open the audit log in ${o.dir}: ${why}. Signed history is missing or was rewritten; run \`agate verify\`.`, {
          checkpoint: latest.seq,
          size: latest.size,
          records: size,
        });
      }
    }
    const fd = fs.openSync(path, "r+");
    return new Checkpointer(o, log, tree, fd, end, latest);
  }

  get latest(): StoredCheckpoint | null {
    return this.#latest;
  }

  start(): void {
    if (this.#timer) return;
    const tick = Math.min(1000, Math.max(50, (this.#o.everySeconds * 1000) / 4));
    this.#timer = setInterval(() => {
      const grown = this.#log.size - (this.#latest?.size ?? 0);
      if (grown <= 0 || this.#running) return;
      if (grown >= this.#o.everyRecords || performance.now() - this.#lastAt >= this.#o.everySeconds * 1000) {
        this.checkpoint().catch((e: Error) => this.#o.warn("audit checkpoint failed", { error: e.message }));
      }
    }, tick);
    this.#timer.unref?.();
  }

  /**
   * Sign the tree as it is now (everything appended so far, once durable),
   * or its first `at` records, unless the latest checkpoint already covers
   * that. Resolves with the checkpoint, null if there was nothing new.
   */
  checkpoint(at?: number): Promise<StoredCheckpoint | null> {
    const run = async (): Promise<StoredCheckpoint | null> => {
      const size = Math.min(at ?? Infinity, this.#log.size);
      if (this.#latest && size <= this.#latest.size) return null;
      await this.#log.flush();
      const c: Checkpoint = { origin: this.#o.origin, size, root: frontierAt(size, this.#tree).root() };
      const note = signCheckpoint(c, this.#o.signer);
      const frame = encodeFrame(Buffer.from(canonicalJson({ note })));
      for (let done = 0; done < frame.length; ) done += fs.writeSync(this.#fd, frame, done, frame.length - done, this.#end + done);
      await new Promise<void>((resolve, reject) => fs.fdatasync(this.#fd, (e) => (e ? reject(e) : resolve())));
      const stored: StoredCheckpoint = { ...c, note, seq: (this.#latest?.seq ?? -1) + 1, offset: this.#end, end: this.#end + frame.length };
      this.#end = stored.end;
      this.#latest = stored;
      this.#lastAt = performance.now();
      this.#o.onCheckpoint(stored);
      return stored;
    };
    // One at a time: a second call waits for the first, then checks again.
    const next = (this.#running ?? Promise.resolve(null)).catch(() => null).then(run);
    this.#running = next;
    next.finally(() => {
      if (this.#running === next) this.#running = null;
    }).catch(() => {});
    return next;
  }

  stop(): void {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = null;
  }

  close(): void {
    this.stop();
    fs.closeSync(this.#fd);
  }
}
