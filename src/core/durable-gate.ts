/**
 * The gate in front of a client: bytes for the client queue behind the
 * durability of the records of commands forwarded before their record was
 * durable (Guard.check with durable: "response"). Each hold() covers every
 * byte sent after it, in order, so nothing an early command produced (and
 * nothing after it) reaches the client before its record is durable; bytes
 * sent while nothing is held go straight through.
 *
 * A hold that fails (the log could not make the record durable) drops what
 * is queued and reports the failure: the protocol then closes the session
 * without answering, which rolls back whatever the command did inside a
 * transaction block.
 */

/** Queued bytes past which the gate asks its source to pause (a long result read while its record is not yet durable). */
const HIGH_WATER = 256 << 10;

export interface GateSink {
  /** Write to the client now. */
  write(bytes: Buffer): void;
  /** A hold failed: nothing queued was written, nothing more will be. */
  failed(error: Error): void;
  /** Queued bytes passed HIGH_WATER: stop reading what produces them… */
  pause(): void;
  /** …and go on once they were written. */
  resume(): void;
}

export class DurableGate {
  /** Holds issued, and how many of them (from the first, in order) have resolved. */
  private issued = 0;
  private released = 0;
  /** Holds resolved out of order, waiting for an earlier one. */
  private readonly early = new Set<number>();
  /** Queued bytes, each with the number of holds it waits for. */
  private readonly queue: { bytes: Buffer; after: number }[] = [];
  private queued = 0;
  private paused = false;
  private broken = false;
  private drained: (() => void) | undefined;

  constructor(private readonly sink: GateSink) {}

  /** Whether bytes sent now would wait. */
  get holding(): boolean {
    return this.released < this.issued;
  }

  /** Hold every byte sent from now on until `durable` (and every earlier hold) resolves. */
  hold(durable: Promise<unknown>): void {
    if (this.broken) return;
    const n = ++this.issued;
    durable.then(
      () => this.release(n),
      (e: unknown) => this.fail(e instanceof Error ? e : new Error(String(e))),
    );
  }

  /** Whether bytes sent now would go straight through (nothing held, nothing queued, not dropped). */
  get open(): boolean {
    return this.queue.length === 0 && !this.holding && !this.broken;
  }

  send(bytes: Buffer): void {
    if (this.broken) return;
    if (this.queue.length === 0 && !this.holding) {
      this.sink.write(bytes);
      return;
    }
    this.queue.push({ bytes, after: this.issued });
    this.queued += bytes.length;
    if (this.queued > HIGH_WATER) {
      // Every time: something else (the client draining) may have resumed the source meanwhile.
      this.paused = true;
      this.sink.pause();
    }
  }

  /** Call `done` once everything queued was written (at once when nothing is), or dropped by a failed hold. */
  whenDrained(done: () => void): void {
    if (this.queue.length === 0 || this.broken) done();
    else this.drained = done;
  }

  /** Drop what is queued and write nothing more (the session is closing with an error of its own). */
  drop(): void {
    this.broken = true;
    this.queue.length = 0;
    this.queued = 0;
    this.settleDrained();
  }

  private release(n: number): void {
    if (this.broken) return;
    if (n !== this.released + 1) {
      this.early.add(n);
      return;
    }
    this.released = n;
    while (this.early.delete(this.released + 1)) this.released++;
    let take = 0;
    while (take < this.queue.length && this.queue[take]!.after <= this.released) take++;
    if (take === 0) return;
    const out = this.queue.splice(0, take);
    for (const q of out) this.queued -= q.bytes.length;
    this.sink.write(out.length === 1 ? out[0]!.bytes : Buffer.concat(out.map((q) => q.bytes)));
    if (this.paused && this.queued <= HIGH_WATER) {
      this.paused = false;
      this.sink.resume();
    }
    if (this.queue.length === 0) this.settleDrained();
  }

  private fail(e: Error): void {
    if (this.broken) return;
    this.drop();
    this.sink.failed(e);
  }

  private settleDrained(): void {
    const d = this.drained;
    this.drained = undefined;
    d?.();
  }
}
