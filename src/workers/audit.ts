/**
 * A worker thread's audit log: the main thread's one (one writer, one
 * ordered Merkle tree). Records go over in the order the guard appends
 * them, one message per event-loop turn, already in canonical JSON (in the
 * parts format.ts EncodedFields joins: the one writer only adds the index,
 * the previous hash and the time, and hashes; strings cross threads several
 * times cheaper than objects do); the main thread appends each batch
 * in order and answers once the batch is as durable as append() promises,
 * with the index of its first record. An append resolves with that
 * acknowledgement, never before.
 *
 * Bounded: at most `window` records are unacknowledged at once; past that
 * they wait in this thread, in order, and so do the commands whose record
 * they are (backpressure, never a drop). When the main thread's log fails,
 * every append waiting and every later one rejects with its error
 * (AUDIT_WRITE_FAILED), as the log itself does: the guard then refuses.
 */
import { AgateError } from "../core/errors.ts";
import type { AuditSink } from "../core/guard.ts";
import { EncodedFields, encodeFields } from "../audit/format.ts";
import type { AuditLog } from "../audit/writer.ts";
import { errorOf, type Peer } from "./peer.ts";

/** Records unacknowledged at once, per worker, before appends wait. */
export const DEFAULT_WINDOW = 4096;

/**
 * How long records nobody waits for (appendLater: outcomes, session ends) may
 * wait for an append to go over with, before they go alone: one message per
 * statement instead of two. The log's promise for them is order, and
 * durability with a later group.
 */
const LATER_MS = 2;

interface Pending {
  /** The record's five canonical parts (format.ts encodeFields). */
  parts: string[];
  resolve?: (index: number) => void;
  reject?: (e: Error) => void;
}

/** The answer to one batch: its records' indexes count up from `base`, skipping those refused (`errors`, by position). */
export interface BatchAck {
  base: number;
  errors?: Record<number, { code: string; message: string; details: Record<string, unknown> }>;
}

export class RemoteAuditSink implements AuditSink {
  #queue: Pending[] = [];
  #inflight = 0;
  #scheduled = false;
  #later: ReturnType<typeof setTimeout> | undefined;
  /** Whether a queued record is waited for (an append). */
  #waited = false;
  #failure: AgateError | null = null;
  #idle: (() => void)[] = [];

  constructor(
    private readonly peer: Peer,
    private readonly window = DEFAULT_WINDOW,
  ) {}

  append(fields: Record<string, unknown>): Promise<number> {
    if (this.#failure) return Promise.reject(this.#failure);
    let parts: string[];
    try {
      parts = encodeFields(fields);
    } catch (e) {
      return Promise.reject(e);
    }
    return new Promise((resolve, reject) => {
      this.#queue.push({ parts, resolve, reject });
      this.#waited = true;
      this.#schedule();
    });
  }

  /** Ordered with the appends; the index is not known here (-1): callers ignore it. */
  appendLater(fields: Record<string, unknown>): number {
    if (this.#failure) throw this.#failure;
    this.#queue.push({ parts: encodeFields(fields) });
    this.#schedule();
    return -1;
  }

  /** Resolves once every record handed over so far is acknowledged (or refused). */
  drain(): Promise<void> {
    if (this.#queue.length === 0 && this.#inflight === 0) return Promise.resolve();
    return new Promise((done) => this.#idle.push(done));
  }

  #schedule(): void {
    if (this.#scheduled || this.#queue.length === 0 || this.#inflight >= this.window) return;
    if (!this.#waited) {
      this.#later ??= setTimeout(() => {
        this.#later = undefined;
        this.#flush();
      }, LATER_MS);
      return;
    }
    clearTimeout(this.#later);
    this.#later = undefined;
    this.#scheduled = true;
    setImmediate(() => this.#flush());
  }

  #flush(): void {
    this.#scheduled = false;
    clearTimeout(this.#later);
    this.#later = undefined;
    const n = Math.min(this.#queue.length, this.window - this.#inflight);
    if (n <= 0) return;
    const batch = this.#queue.length === n ? this.#queue : this.#queue.slice(0, n);
    this.#queue = this.#queue.length === n ? [] : this.#queue.slice(n);
    this.#waited = this.#queue.some((p) => p.resolve !== undefined);
    this.#inflight += n;
    const flat: string[] = [];
    for (const p of batch) flat.push(...p.parts);
    this.peer.call<BatchAck>("audit", flat).then(
      (ack) => {
        this.#inflight -= n;
        let index = ack.base;
        for (let k = 0; k < batch.length; k++) {
          const err = ack.errors?.[k];
          if (err) {
            batch[k]!.reject?.(new AgateError(err.code, err.message, err.details));
            continue;
          }
          // Every record appended takes an index, whether someone waits for it or not.
          batch[k]!.resolve?.(index);
          index++;
        }
        this.#settled();
      },
      (e: Error) => {
        this.#inflight -= n;
        this.#failure ??= e instanceof AgateError ? e : new AgateError("AUDIT_WRITE_FAILED", e.message);
        for (const p of batch) p.reject?.(this.#failure);
        for (const p of this.#queue.splice(0)) p.reject?.(this.#failure);
        this.#settled();
      },
    );
  }

  #settled(): void {
    this.#schedule();
    if (this.#queue.length === 0 && this.#inflight === 0) for (const done of this.#idle.splice(0)) done();
  }
}

/**
 * The main thread's side: append a worker's batch (five parts per record) in
 * order and answer once it is durable. A record the log refuses (too large)
 * is refused alone; a log that fails fails the batch.
 */
export function appendBatch(log: AuditLog, parts: string[]): BatchAck | Promise<BatchAck> {
  let base = -1;
  let errors: BatchAck["errors"];
  for (let k = 0; k < parts.length / 5; k++) {
    try {
      const index = log.appendLater(new EncodedFields(parts, 5 * k));
      if (base < 0) base = index;
    } catch (e) {
      (errors ??= {})[k] = errorOf(e);
    }
  }
  const ack: BatchAck = { base: Math.max(base, 0), ...(errors ? { errors } : {}) };
  if (base < 0) return ack;
  return log.settled(log.size).then(() => ack);
}
