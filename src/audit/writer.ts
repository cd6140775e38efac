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
 * Any write, fdatasync or rotation error fails the log closed: every
 * waiting and later append rejects with AUDIT_WRITE_FAILED. The in-memory
 * state cannot be trusted after a failed fsync, so there is no retry; a
 * restart re-reads the files and truncates whatever tail was torn.
 */
import { open, type FileHandle } from "node:fs/promises";
import { join } from "node:path";
import { AgateError } from "../core/errors.ts";
import { FILE_HEADER_BYTES, encodeFileHeader, encodeFrame, encodeRecord, hashPayload, segmentName } from "./format.ts";
import type { Tail, Warn } from "./recover.ts";

export type Durability = { mode: "strict" } | { mode: "interval"; interval_ms: number };

export interface AuditLog {
  /** Append; resolves with the record index once the record is durable per the durability mode. Rejects with AgateError code "AUDIT_WRITE_FAILED" if the write/fsync fails (the log then refuses all further appends: fail closed). */
  append(fields: Record<string, unknown>): Promise<number>;
  /** Append without waiting for durability (still ordered, still fsynced with the next group). Returns the index. For outcome records. Throws synchronously if the log is failed or closed. */
  appendLater(fields: Record<string, unknown>): number;
  /** Waits until everything appended so far is durable (forces an fdatasync in interval mode). */
  flush(): Promise<void>;
  /** Flushes and closes. Later appends reject with AUDIT_CLOSED. Rejects with AUDIT_WRITE_FAILED if the log had failed. */
  close(): Promise<void>;
  /** Number of records, counting those appended but not yet durable. */
  readonly size: number;
}

/**
 * The two file operations a batch needs. Tests replace them (option
 * `__faultFs`) to inject faults a test cannot cause for real, such as
 * ENOSPC or EIO, when running as root.
 */
export interface FaultFs {
  write(fh: FileHandle, data: Uint8Array, position: number): Promise<void>;
  datasync(fh: FileHandle): Promise<void>;
}

export const realFs: FaultFs = {
  async write(fh, data, position) {
    for (let done = 0; done < data.length; ) {
      const { bytesWritten } = await fh.write(data, done, data.length - done, position + done);
      if (bytesWritten <= 0) throw new Error(`write returned ${bytesWritten}`);
      done += bytesWritten;
    }
  },
  datasync: (fh) => fh.datasync(),
};

export interface WriterOptions {
  dir: string;
  durability: Durability;
  segmentBytes: number;
  warn: Warn;
  fs: FaultFs;
}

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
  #queue: Buffer[] = []; // frames of records [#written, #next)
  #writtenWaiters: Waiter[] = [];
  #durableWaiters: Waiter[] = [];

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

  appendLater(fields: Record<string, unknown>): number {
    return this.#enqueue(fields);
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
      try {
        await this.flush();
      } finally {
        if (this.#timer) clearTimeout(this.#timer);
        while (this.#busy) await new Promise((r) => setImmediate(r));
        await this.#fh.close();
      }
    })();
    return this.#closing;
  }

  #enqueue(fields: Record<string, unknown>): number {
    if (this.#failure) throw this.#failed();
    if (this.#closing) throw new AgateError("AUDIT_CLOSED", "The audit log is closed; nothing more can be appended.");
    const index = this.#next;
    const payload = encodeRecord(index, this.#lastHash, new Date().toISOString(), fields);
    this.#lastHash = hashPayload(payload);
    this.#queue.push(encodeFrame(payload));
    this.#next = index + 1;
    this.#kick();
    return index;
  }

  /** Run a cycle soon, after the current callbacks have had their chance to append. */
  #kick(): void {
    if (this.#busy || this.#scheduled || this.#failure) return;
    this.#scheduled = true;
    setImmediate(() => {
      this.#scheduled = false;
      void this.#cycle();
    });
  }

  /** Write everything queued, fdatasync if the mode asks for it, settle waiters. */
  async #cycle(): Promise<void> {
    this.#busy = true;
    try {
      const batch = this.#queue;
      this.#queue = [];
      if (batch.length > 0) await this.#writeBatch(batch);
      settle(this.#writtenWaiters, this.#written);
      if (this.#dirty && (this.#strict || this.#syncWanted)) {
        this.#syncWanted = false;
        await this.#sync();
      } else if (this.#dirty) {
        this.#scheduleSync();
      } else {
        this.#syncWanted = false;
      }
      settle(this.#durableWaiters, this.#durable);
    } catch (e) {
      this.#fail(e);
    } finally {
      this.#busy = false;
    }
    if (this.#queue.length > 0 || this.#syncWanted) this.#kick();
  }

  async #writeBatch(batch: Buffer[]): Promise<void> {
    let from = 0;
    let bytes = 0;
    for (let k = 0; k < batch.length; k++) {
      const n = batch[k]!.length;
      const holdsRecords = this.#segRecords + (k - from) > 0;
      if (holdsRecords && this.#segBytes + bytes + n > this.#o.segmentBytes) {
        if (k > from) await this.#writeRun(batch, from, k, bytes);
        await this.#rotate();
        from = k;
        bytes = 0;
      }
      bytes += n;
    }
    await this.#writeRun(batch, from, batch.length, bytes);
  }

  async #writeRun(batch: Buffer[], from: number, to: number, bytes: number): Promise<void> {
    const data = to - from === 1 ? batch[from]! : Buffer.concat(batch.slice(from, to), bytes);
    await this.#o.fs.write(this.#fh, data, this.#segBytes);
    this.#segBytes += bytes;
    this.#segRecords += to - from;
    this.#written += to - from;
    this.#dirty = true;
  }

  /** Seal the current segment (durable first) and start the next one at record #written. */
  async #rotate(): Promise<void> {
    if (this.#dirty) await this.#sync();
    await this.#fh.close();
    this.#segment = segmentName(this.#written);
    this.#fh = await open(join(this.#o.dir, this.#segment), "wx", 0o600);
    await this.#o.fs.write(this.#fh, encodeFileHeader(), 0);
    this.#segBytes = FILE_HEADER_BYTES;
    this.#segRecords = 0;
    this.#dirty = true;
    await syncDir(this.#o.dir);
  }

  async #sync(): Promise<void> {
    const covered = this.#written;
    await this.#o.fs.datasync(this.#fh);
    this.#durable = covered;
    this.#dirty = false;
    this.#lastSyncAt = performance.now();
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
    this.#queue = [];
    if (this.#timer) clearTimeout(this.#timer);
    for (const w of this.#writtenWaiters.splice(0)) w.reject(this.#failure);
    for (const w of this.#durableWaiters.splice(0)) w.reject(this.#failure);
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
