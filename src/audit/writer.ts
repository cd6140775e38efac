/**
 * The segment writer: assigns indexes, chains and frames records, and makes
 * them durable with group commit.
 *
 * One batch is in flight at a time. Appends that arrive meanwhile queue up;
 * when the batch's fdatasync returns, the whole queue goes out as the next
 * batch: one write and one fdatasync per batch (plus a few more when the
 * batch crosses into a new segment). Indexes, chain and order are fixed
 * synchronously in `append`, so they follow the order of the calls.
 *
 * The main thread's cost is what matters (the gateway's connections share
 * it), so the hot path allocates little and waits for the thread pool once
 * per batch: `append` encodes the record's canonical JSON straight into a
 * growing queue buffer, fills in the frame header and hashes the payload in
 * place; a batch is that buffer, written with one positioned write(2) (a
 * page-cache copy, a few microseconds, done synchronously) and made durable
 * with one fdatasync(2) on the thread pool (`fs.fdatasync` with a
 * callback). While that runs, the next appends fill the spare buffer.
 *
 * Any write, fdatasync or rotation error fails the log closed: every
 * waiting and later append rejects with AUDIT_WRITE_FAILED. The in-memory
 * state cannot be trusted after a failed fsync, so there is no retry; a
 * restart re-reads the files and truncates whatever tail was torn.
 */
import * as nodeFs from "node:fs";
import { open, type FileHandle } from "node:fs/promises";
import { join } from "node:path";
import { AgateError } from "../core/errors.ts";
import { FILE_HEADER_BYTES, FRAME_HEADER_BYTES, MAX_PAYLOAD_BYTES, encodeFileHeader, encodePayload, segmentName, tooLarge, writeFrameHeader, type RecordFields } from "./format.ts";
import type { MarkerFile } from "./marker.ts";
import type { Tail, Warn } from "./recover.ts";
import type { TreeFile } from "./tree.ts";

export type Durability = { mode: "strict" } | { mode: "interval"; interval_ms: number };

export interface AuditLog {
  /** Append; resolves with the record index once the record is durable per the durability mode. Rejects with AgateError code "AUDIT_WRITE_FAILED" if the write/fsync fails (the log then refuses all further appends: fail closed). */
  append(fields: Record<string, unknown>): Promise<number>;
  /** Append without waiting for durability (still ordered, still fsynced with the next group). Returns the index. For outcome records. Throws synchronously if the log is failed or closed. */
  appendLater(fields: RecordFields): number;
  /** Waits until everything appended so far is durable (forces an fdatasync in interval mode). */
  flush(): Promise<void>;
  /**
   * Resolves once the first `count` records are as durable as append() promises (strict: fdatasync'd; interval:
   * written): what one append() of the last of them would wait for, for records added with appendLater().
   */
  settled(count: number): Promise<void>;
  /** Flushes and closes. Later appends reject with AUDIT_CLOSED. Rejects with AUDIT_WRITE_FAILED if the log had failed. */
  close(): Promise<void>;
  /** Number of records, counting those appended but not yet durable. */
  readonly size: number;
  /** Number of records known durable (all of them after flush()). */
  readonly durableSize: number;
  /**
   * Close the current segment (once its records are durable) and start the
   * next, if it holds any record. Resolves with the index the open segment
   * now starts at: every record below it is in a sealed segment.
   */
  seal(): Promise<number>;
}

/**
 * The two file operations a batch needs. Tests replace them (option
 * `__faultFs`) to inject faults a test cannot cause for real, such as
 * ENOSPC or EIO, when running as root. Without a replacement the writer
 * uses fs.writeSync and fs.fdatasync on the handle's descriptor.
 */
export interface FaultFs {
  write(fh: FileHandle, data: Uint8Array, position: number): Promise<void>;
  datasync(fh: FileHandle): Promise<void>;
}

export interface WriterOptions {
  dir: string;
  durability: Durability;
  segmentBytes: number;
  warn: Warn;
  /** Replacements for the real file operations (tests only). */
  faults: Partial<FaultFs>;
  /** The Merkle tree's hash file; the writer feeds it each record's leaf hash. */
  tree: TreeFile;
  /** Told when a segment is sealed (a later segment now exists). */
  onSealed: (segment: string) => void;
  /** The writer's marker (marker.ts): a durable reservation of the records it may write, renewed ahead of need. */
  marker: MarkerFile;
}

/** Size of a fresh queue buffer; it grows for a larger batch. */
const QUEUE_BYTES = 256 * 1024;
/** Leaf hashes per slab: 2,048. */
const HASH_SLAB_BYTES = 64 * 1024;
/** A buffer grown past this is dropped after its batch instead of kept as the spare. */
const SPARE_MAX_BYTES = 4 * 1024 * 1024;

interface Waiter {
  /** Resolve once this many records are written (or durable). */
  count: number;
  resolve: (index: number) => void;
  reject: (e: Error) => void;
}

export class SegmentWriter implements AuditLog {
  readonly #o: WriterOptions;
  readonly #strict: boolean;
  #fh: FileHandle;
  #segment: string;
  #segBytes: number;
  #segRecords: number;
  #lastHash: string;

  #next: number; // index the next append gets
  #written: number; // records handed to the kernel
  #durable: number; // records covered by an fdatasync
  #dirty = false; // written but not yet synced
  // The queue: frames of records [#written + batch in flight, #next), back to back in #buf[0, #len).
  #buf: Buffer = Buffer.allocUnsafe(QUEUE_BYTES);
  #len = 0;
  #ends: number[] = []; // end offset in #buf of each queued frame
  #spare: Buffer | null = null; // the other buffer, while no batch holds it
  #tMs = NaN; // Date.now() that #t was made for
  #t = "";
  // Leaf hashes are written into slabs (fewer, larger allocations than one per hash).
  #slab: Buffer = Buffer.allocUnsafe(HASH_SLAB_BYTES);
  #slabAt = 0;
  #writtenWaiters: Waiter[] = [];
  #durableWaiters: Waiter[] = [];
  #sealWaiters: { resolve: (boundary: number) => void; reject: (e: Error) => void }[] = [];

  #busy = false;
  #scheduled = false;
  #syncWanted = false;
  #timer: ReturnType<typeof setTimeout> | null = null;
  #lastSyncAt = 0;
  #failure: AgateError | null = null;
  #closing: Promise<void> | null = null;

  constructor(tail: Tail, o: WriterOptions) {
    this.#o = o;
    this.#strict = o.durability.mode === "strict";
    this.#fh = tail.fh;
    this.#segment = tail.segment.name;
    this.#segBytes = tail.bytes;
    this.#segRecords = tail.records;
    this.#lastHash = tail.lastHash;
    this.#next = this.#written = this.#durable = tail.size;
  }

  get size(): number {
    return this.#next;
  }

  get durableSize(): number {
    return this.#durable;
  }

  seal(): Promise<number> {
    if (this.#failure) return Promise.reject(this.#failed());
    const p = new Promise<number>((resolve, reject) => this.#sealWaiters.push({ resolve, reject }));
    this.#kick();
    return p;
  }

  append(fields: Record<string, unknown>): Promise<number> {
    let index: number;
    try {
      index = this.#enqueue(fields);
    } catch (e) {
      return Promise.reject(e);
    }
    return new Promise((resolve, reject) => {
      (this.#strict ? this.#durableWaiters : this.#writtenWaiters).push({ count: index + 1, resolve, reject });
    });
  }

  appendLater(fields: RecordFields): number {
    return this.#enqueue(fields);
  }

  settled(count: number): Promise<void> {
    if (this.#failure) return Promise.reject(this.#failed());
    if ((this.#strict ? this.#durable : this.#written) >= count) return Promise.resolve();
    return new Promise((resolve, reject) => {
      (this.#strict ? this.#durableWaiters : this.#writtenWaiters).push({ count, resolve: () => resolve(), reject });
    });
  }

  flush(): Promise<void> {
    if (this.#failure) return Promise.reject(this.#failed());
    const count = this.#next;
    if (this.#durable >= count) return Promise.resolve();
    this.#syncWanted = true;
    const p = new Promise<void>((resolve, reject) => {
      this.#durableWaiters.push({ count, resolve: () => resolve(), reject });
    });
    this.#kick();
    return p;
  }

  close(): Promise<void> {
    this.#closing ??= (async () => {
      let clean = false;
      try {
        await this.flush();
        clean = true;
      } finally {
        if (this.#timer) clearTimeout(this.#timer);
        while (this.#busy) await new Promise((r) => setImmediate(r));
        try {
          await this.#fh.close();
          this.#o.tree.close();
        } finally {
          // Only a log closed with everything durable is marked clean.
          if (clean) await this.#o.marker.closeClean(this.#durable);
          else await this.#o.marker.close();
        }
      }
    })();
    return this.#closing;
  }

  #enqueue(fields: RecordFields): number {
    if (this.#failure) throw this.#failed();
    if (this.#closing) throw new AgateError("AUDIT_CLOSED", "The audit log is closed; nothing more can be appended.");
    const index = this.#next;
    const json = encodePayload(index, this.#lastHash, this.#now(), fields);
    // Encode straight into the queue buffer. A UTF-16 code unit takes at most
    // 3 bytes of UTF-8, so json.length * 3 bytes of room always suffice;
    // otherwise measure first (and refuse before growing for a huge record).
    const at = this.#len;
    const start = at + FRAME_HEADER_BYTES;
    let buf = this.#buf;
    let bytes: number;
    if (start + json.length * 3 <= buf.length) {
      bytes = buf.write(json, start);
    } else {
      bytes = Buffer.byteLength(json);
      if (bytes > MAX_PAYLOAD_BYTES) throw tooLarge(bytes);
      buf = this.#grow(start + bytes);
      buf.write(json, start);
    }
    if (bytes > MAX_PAYLOAD_BYTES) throw tooLarge(bytes);
    // The leaf hash is SHA-256(0x00 || payload): borrow the byte before the
    // payload (the frame header's last, written just after) for the 0x00.
    buf[start - 1] = 0;
    if (this.#slabAt === HASH_SLAB_BYTES) {
      this.#slab = Buffer.allocUnsafe(HASH_SLAB_BYTES);
      this.#slabAt = 0;
    }
    // A plain Uint8Array view (a Buffer's slice() would share memory, not copy).
    const leaf = new Uint8Array(this.#slab.buffer, this.#slab.byteOffset + this.#slabAt, 32);
    Bun.SHA256.hash(buf.subarray(start - 1, start + bytes), leaf);
    this.#lastHash = this.#slab.toString("hex", this.#slabAt, this.#slabAt + 32);
    this.#slabAt += 32;
    writeFrameHeader(buf, at, bytes);
    // The tree may run ahead of the segment: a restart cuts it back to the records.
    this.#o.tree.write(this.#o.tree.frontier.push(leaf));
    this.#len = start + bytes;
    this.#ends.push(this.#len);
    this.#next = index + 1;
    this.#kick();
    return index;
  }

  /** The record timestamp, RFC 3339 UTC with milliseconds (made once per millisecond). */
  #now(): string {
    const ms = Date.now();
    if (ms !== this.#tMs) {
      this.#tMs = ms;
      this.#t = new Date(ms).toISOString();
    }
    return this.#t;
  }

  /** Replace the queue buffer by one of at least `need` bytes holding the same queued frames. */
  #grow(need: number): Buffer {
    const bigger = Buffer.allocUnsafe(Math.max(need, this.#buf.length * 2));
    this.#buf.copy(bigger, 0, 0, this.#len);
    this.#buf = bigger;
    return bigger;
  }

  /** Run a cycle soon, after the current callbacks have had their chance to append. */
  #kick(): void {
    if (this.#busy || this.#scheduled || this.#failure) return;
    this.#scheduled = true;
    setImmediate(() => {
      this.#scheduled = false;
      this.#cycle();
    });
  }

  /**
   * Write everything queued, fdatasync if the mode asks for it, settle
   * waiters. Written with callbacks rather than async/await: it runs once
   * per batch, and the common path (synchronous write, one fdatasync) then
   * costs no promise of its own.
   */
  #cycle(): void {
    this.#busy = true;
    let batch: Buffer | null = null;
    let pending: Promise<void> | undefined;
    try {
      if (this.#ends.length > 0) {
        batch = this.#buf;
        const ends = this.#ends;
        this.#buf = this.#spare ?? Buffer.allocUnsafe(QUEUE_BYTES);
        this.#spare = null;
        this.#len = 0;
        this.#ends = [];
        pending = this.#writeBatch(batch, ends);
      }
      if (this.#sealWaiters.length > 0) {
        const waiters = this.#sealWaiters.splice(0);
        const sealed = (pending ?? Promise.resolve()).then(() => (this.#segRecords > 0 ? this.#rotate() : undefined));
        sealed.then(
          () => waiters.forEach((w) => w.resolve(this.#written - this.#segRecords)),
          (e: unknown) => waiters.forEach((w) => w.reject(e as Error)),
        );
        pending = sealed;
      }
    } catch (e) {
      return this.#endCycle(batch, { error: e });
    }
    if (!pending) return this.#afterWrite(batch);
    const b = batch;
    pending.then(
      () => this.#afterWrite(b),
      (e: unknown) => this.#endCycle(b, { error: e }),
    );
  }

  #afterWrite(batch: Buffer | null): void {
    settle(this.#writtenWaiters, this.#written);
    if (this.#dirty && (this.#strict || this.#syncWanted)) {
      this.#syncWanted = false;
      return this.#sync((failure) => {
        if (!failure) settle(this.#durableWaiters, this.#durable);
        this.#endCycle(batch, failure);
      });
    }
    if (this.#dirty) this.#scheduleSync();
    else this.#syncWanted = false;
    settle(this.#durableWaiters, this.#durable);
    this.#endCycle(batch, null);
  }

  #endCycle(batch: Buffer | null, failure: { error: unknown } | null): void {
    this.#busy = false;
    if (batch && batch.length <= SPARE_MAX_BYTES) this.#spare = batch;
    if (failure) this.#fail(failure.error);
    else if (this.#ends.length > 0 || this.#syncWanted || this.#sealWaiters.length > 0) this.#kick();
  }

  /**
   * Write the frames `b[0, ends[last])`, starting new segments where the
   * limit requires. Returns a promise only if it could not finish
   * synchronously (a rotation, or a test's replacement write).
   */
  #writeBatch(b: Buffer, ends: number[]): Promise<void> | undefined {
    const total = ends[ends.length - 1]!;
    if (this.#segBytes + total <= this.#o.segmentBytes) return this.#writeRun(b, 0, total, ends.length);
    return this.#writeBatchRotating(b, ends);
  }

  async #writeBatchRotating(b: Buffer, ends: number[]): Promise<void> {
    let from = 0; // first record of the current run
    let fromByte = 0;
    for (let k = 0; k < ends.length; k++) {
      const startK = k === 0 ? 0 : ends[k - 1]!;
      const n = ends[k]! - startK;
      const holdsRecords = this.#segRecords + (k - from) > 0;
      if (holdsRecords && this.#segBytes + (startK - fromByte) + n > this.#o.segmentBytes) {
        if (k > from) await this.#writeRun(b, fromByte, startK, k - from);
        await this.#rotate();
        from = k;
        fromByte = startK;
      }
    }
    await this.#writeRun(b, fromByte, ends[ends.length - 1]!, ends.length - from);
  }

  #writeRun(b: Buffer, fromByte: number, toByte: number, records: number): Promise<void> | undefined {
    // The marker's durable reservation first: after a crash it is never behind the records.
    this.#o.marker.reserve(this.#written + records);
    const pending = this.#writeAt(b.subarray(fromByte, toByte), this.#segBytes);
    const done = () => {
      this.#segBytes += toByte - fromByte;
      this.#segRecords += records;
      this.#written += records;
      this.#dirty = true;
    };
    if (pending) return pending.then(done);
    done();
    return undefined;
  }

  /** Write all of `data` at `position` of the current segment: synchronously, unless a test replaced write. */
  #writeAt(data: Uint8Array, position: number): Promise<void> | undefined {
    if (this.#o.faults.write) return this.#o.faults.write(this.#fh, data, position);
    const fd = this.#fh.fd;
    for (let done = 0; done < data.length; ) {
      const n = nodeFs.writeSync(fd, data, done, data.length - done, position + done);
      if (n <= 0) throw new Error(`write returned ${n}`);
      done += n;
    }
    return undefined;
  }

  /** Seal the current segment (durable first) and start the next one at record #written. */
  async #rotate(): Promise<void> {
    if (this.#dirty) {
      await new Promise<void>((resolve, reject) => this.#sync((failure) => (failure ? reject(failure.error) : resolve())));
    }
    await this.#fh.close();
    const sealed = this.#segment;
    this.#segment = segmentName(this.#written);
    this.#fh = await open(join(this.#o.dir, this.#segment), "wx", 0o600);
    await this.#writeAt(encodeFileHeader(), 0);
    this.#segBytes = FILE_HEADER_BYTES;
    this.#segRecords = 0;
    this.#dirty = true;
    await syncDir(this.#o.dir);
    this.#o.onSealed(sealed);
  }

  /**
   * fdatasync the current segment on the thread pool, then call `cb` (with
   * the failure, if any). On success, records up to #written at the call
   * are durable.
   */
  #sync(cb: (failure: { error: unknown } | null) => void): void {
    const covered = this.#written;
    const done = () => {
      this.#durable = covered;
      this.#dirty = false;
      this.#lastSyncAt = performance.now();
      cb(null);
    };
    if (this.#o.faults.datasync) {
      this.#o.faults.datasync(this.#fh).then(done, (error: unknown) => cb({ error }));
      return;
    }
    nodeFs.fdatasync(this.#fh.fd, (error) => (error ? cb({ error }) : done()));
  }

  /** Interval mode: fdatasync at most every interval_ms. */
  #scheduleSync(): void {
    if (this.#timer || this.#o.durability.mode !== "interval") return;
    const wait = Math.max(0, this.#lastSyncAt + this.#o.durability.interval_ms - performance.now());
    this.#timer = setTimeout(() => {
      this.#timer = null;
      this.#syncWanted = true;
      this.#kick();
    }, wait);
    this.#timer.unref?.();
  }

  #fail(e: unknown): void {
    const err = e as NodeJS.ErrnoException;
    this.#failure = new AgateError(
      "AUDIT_WRITE_FAILED",
      `The audit log could not write or fsync ${this.#segment} (${err?.message ?? String(e)}). It refuses every further append (fail closed); fix the disk and restart.`,
      { segment: this.#segment, errno: err?.code, cause: err?.message ?? String(e) },
    );
    this.#len = 0;
    this.#ends = [];
    if (this.#timer) clearTimeout(this.#timer);
    for (const w of this.#writtenWaiters.splice(0)) w.reject(this.#failure);
    for (const w of this.#durableWaiters.splice(0)) w.reject(this.#failure);
    for (const w of this.#sealWaiters.splice(0)) w.reject(this.#failure);
    this.#o.warn("audit log write failed", this.#failure.details);
  }

  #failed(): AgateError {
    const f = this.#failure!;
    return new AgateError("AUDIT_WRITE_FAILED", f.message, f.details);
  }
}

/** Resolve the waiters (in ascending `count`) that `done` records satisfy. */
function settle(waiters: Waiter[], done: number): void {
  let k = 0;
  while (k < waiters.length && waiters[k]!.count <= done) k++;
  if (k === 0) return;
  for (const w of waiters.splice(0, k)) w.resolve(w.count - 1);
}

/** fsync a directory so a file created in it survives a crash. */
export async function syncDir(dir: string): Promise<void> {
  const fh = await open(dir, "r");
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}
